"""R2 limits and error reporting: sizes, nesting, lengths that lie, and the stream contract."""

from __future__ import annotations

import pytest

from hp2p.wire import r2
from hp2p.wire.errors import FrameError, HeaderError, LimitExceeded, WireError
from hp2p.wire.r2.framing import MAX_HEADER


def frame(header: bytes, payload: bytes = b"") -> bytes:
    return b"\x01\x01" + len(header).to_bytes(2, "big") + header + payload


def broadcast_header(length: int, ext_len: int = 0) -> bytes:
    return (
        b'{"req-code":6,"req-params":{"operation":{"ack":false,"candidate-path":false},'
        b'"peer":{"peer-id":"a","sequence":1},"payload":{"length":%d,'
        b'"payload-type":"text/plain"},"ext-header-len":%d}}' % (length, ext_len)
    )


# --- framing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", "prefix"),
        (b"\x01\x01\x00", "prefix"),
        (b'\x02\x01\x00\x0e{"req-code":8}', "version"),
        (b'\x01\x02\x00\x0e{"req-code":8}', "type"),
        (b"\x01\x01\x00\x00", "header-length"),
        (b"\x01\x01\xff\xff{}", "header-length"),  # L beyond the buffer: never read past it
        (b'\x01\x01\x00\x0e{"req-code":8}extra', "payload"),
        (frame(broadcast_header(5, 2), b"{}abc"), "payload"),  # 2 bytes short
        (frame(broadcast_header(1, 2), b"{}abc"), "payload"),  # 2 bytes over
    ],
)
def test_framing_errors_name_the_element(data: bytes, field: str) -> None:
    with pytest.raises(FrameError) as info:
        r2.decode(data)
    assert info.value.field == field
    assert str(info.value)


def test_header_errors_carry_the_json_path() -> None:
    bad = (
        b'{"req-code":6,"req-params":{"operation":{},"peer":{"peer-id":"a","sequence":-1},'
        b'"payload":{"length":0},"ext-header-len":0}}'
    )
    with pytest.raises(HeaderError) as info:
        r2.decode(frame(bad))
    assert info.value.field == "$.req-params.peer.sequence"


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (b'{"rsp-code":1202,"req-code":1}', "req-code"),
        (b'{"req-params":{},"rsp-code":8200,"req-code":8}', "header"),
        (b'{"req-params":{}}', "header"),
        (b'{"req-code":13}', "$.req-code"),
        (b'{"rsp-code":1404}', "$.rsp-code"),
        (b'{"req-code":"8"}', "$.req-code"),
        (b"[8]", "header"),
        (b'{"req-code":8', "header"),
        (b'{"req-code":11,"overlay-id":"o","source-id":"","sequence":1}', "$.source-id"),
        (
            b'{"req-code":11,"overlay-id":"o","source-id":"s","sequence":9223372036854775808}',
            "$.sequence",
        ),
        (b'{"req-code":1,"req-params":{"operation":{"overlay-id":"\xff"}}}', "header"),
        (
            b'{"req-code":3,"req-params":{"operation":{"ntp-time":"' + b"x" * 256 + b'"}}}',
            "$.req-params.operation.ntp-time",
        ),
        (b'{"req-code":8,"req-params":{"hp2p":[1]}}', "$.req-params.hp2p"),
    ],
)
def test_bad_headers_raise_header_error(header: bytes, field: str) -> None:
    with pytest.raises(HeaderError) as info:
        r2.decode(frame(header))
    assert info.value.field == field


# --- nesting -----------------------------------------------------------------------------------
def test_deep_unknown_value_inside_hp2p_is_skipped_like_any_unknown_key() -> None:
    """The hp2p object is typed: only an unknown key can nest, and it is skipped, not built."""
    deep = b'{"a":' * 40 + b"1" + b"}" * 40
    header = b'{"req-code":8,"req-params":{"hp2p":{"x":' + deep + b',"depth":1}}}'
    assert r2.decode(frame(header)) == r2.Heartbeat(hp2p=r2.HeartbeatExt(depth=1))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """The extension header (free-form JSON) is depth-checked before parsing, strings aside."""
    text = '"' + "[{" * 100 + '\\"' + "]" * 3 + '"'
    msg = r2.BroadcastData(source="a", sequence=1, data=b"", ext_header={"s": text})
    assert r2.decode(r2.encode(msg)) == msg


def test_deep_unknown_key_cannot_blow_the_stack() -> None:
    depth = (MAX_HEADER - 40) // 2
    header = b'{"req-code":8,"x":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(LimitExceeded) as info:
        r2.decode(frame(header))
    assert info.value.field == "header"


def test_deep_extension_header_is_refused() -> None:
    ext = b'{"a":' * 40 + b"1" + b"}" * 40
    with pytest.raises(LimitExceeded) as info:
        r2.decode(frame(broadcast_header(0, len(ext)), ext))
    assert info.value.field == "ext-header"


def test_extension_header_must_be_a_json_object() -> None:
    with pytest.raises(HeaderError) as info:
        r2.decode(frame(broadcast_header(1, 2), b"[]x"))
    assert info.value.field == "ext-header"


# --- payload size ------------------------------------------------------------------------------
def test_decode_refuses_a_payload_over_the_limit() -> None:
    with pytest.raises(LimitExceeded) as info:
        r2.decode(frame(broadcast_header(11, 0), b"x" * 11), max_payload=10)
    assert info.value.field == "$.req-params.payload.length"
    assert r2.decode(frame(broadcast_header(10, 0), b"x" * 10), max_payload=10)


def test_stream_refuses_a_huge_announced_payload_at_once() -> None:
    decoder = r2.StreamDecoder(max_payload=1 << 20)
    with pytest.raises(LimitExceeded):
        decoder.feed(frame(broadcast_header(2**62, 17)))  # the header alone, no payload yet
    assert decoder.buffered == 0


def test_lengths_beyond_int64_are_header_errors() -> None:
    with pytest.raises(HeaderError):
        r2.decode(frame(broadcast_header(2**63, 0)))


# --- the stream contract ------------------------------------------------------------------------
def test_a_failed_stream_keeps_failing() -> None:
    decoder = r2.StreamDecoder()
    with pytest.raises(FrameError):
        decoder.feed(b'\x02\x01\x00\x0e{"req-code":8}')
    with pytest.raises(FrameError) as info:
        decoder.feed(r2.encode(r2.Heartbeat()))
    assert "already failed" in info.value.reason
    with pytest.raises(FrameError):
        decoder.eof()


def test_messages_before_a_bad_frame_are_reported_as_dropped() -> None:
    good = r2.encode(r2.Heartbeat())
    decoder = r2.StreamDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(good + good + b"\x09\x01\x00\x01x")
    assert "2 whole message(s)" in info.value.reason
    assert info.value.field == "version"


def test_eof_inside_a_frame_is_an_error_not_a_silent_drop() -> None:
    decoder = r2.StreamDecoder()
    whole = r2.encode(r2.BroadcastData(source="a", sequence=1, data=b"0123456789"))
    assert decoder.feed(whole + whole[:-3]) == [r2.decode(whole)]
    assert decoder.buffered == len(whole) - 3
    with pytest.raises(FrameError) as info:
        decoder.eof()
    assert info.value.field == "payload"


def test_eof_at_a_frame_boundary_is_clean() -> None:
    decoder = r2.StreamDecoder()
    decoder.feed(r2.encode(r2.Heartbeat()))
    decoder.eof()


def test_stream_rejects_non_bytes_chunks() -> None:
    decoder = r2.StreamDecoder()
    with pytest.raises(FrameError):
        decoder.feed("text")  # type: ignore[arg-type]


# --- encode refuses what no receiver would accept ------------------------------------------------
@pytest.mark.parametrize(
    ("message", "error"),
    [
        (r2.BroadcastData(source="a", sequence=-1, data=b""), HeaderError),
        (r2.BroadcastData(source="a", sequence=2**63, data=b""), HeaderError),
        (r2.BroadcastData(source="", sequence=1, data=b""), HeaderError),
        (
            r2.BroadcastData(source="a", sequence=1, data=b"", ext_header={"a": object()}),
            HeaderError,
        ),
        (r2.GetData(overlay_id="o", source_id="s" * 257, sequence=1), HeaderError),
        (r2.EstabResponse(code=1202), HeaderError),
        (
            r2.ScanTreeResponse(
                code=9300, cseq=1, overlay_id="o", peer_id="p", address="", ticket_id=1
            ),
            HeaderError,
        ),
        (
            r2.ScanTree(
                cseq=1, overlay_id="o", peer_id="p", address="a", ticket_id=1, via=[["only-one"]]
            ),
            HeaderError,
        ),
        (  # 256 heads (the most allowed) of 256-character ids: more than 64 KiB of header
            r2.Heartbeat(hp2p=r2.HeartbeatExt(heads={f"{i:0256d}": i for i in range(256)})),
            LimitExceeded,
        ),
    ],
)
def test_encode_refuses_invalid_messages(message: r2.Message, error: type[WireError]) -> None:
    with pytest.raises(error):
        r2.encode(message)


def test_encode_refuses_a_payload_over_the_limit() -> None:
    with pytest.raises(LimitExceeded):
        r2.encode(r2.BroadcastData(source="a", sequence=1, data=b"x" * 100), max_payload=50)


def test_encode_refuses_objects_that_are_not_r2_messages() -> None:
    with pytest.raises(HeaderError):
        r2.encode(object())  # type: ignore[arg-type]
