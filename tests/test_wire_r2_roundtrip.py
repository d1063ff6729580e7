"""Round trips of every R2 message, and the stream decoder under arbitrary chunking."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from hp2p.wire import r2
from hp2p.wire.r2 import codec
from test_wire_r2_strategies import messages, requests, responses


@settings(max_examples=400)
@given(requests)
def test_every_request_round_trips(msg: Any) -> None:
    assert r2.decode(r2.encode(msg)) == msg


@settings(max_examples=400)
@given(responses)
def test_every_response_round_trips(msg: Any) -> None:
    assert r2.decode(r2.encode(msg)) == msg


def test_the_strategies_cover_every_message_type() -> None:
    """A type missing from the strategies would silently escape the round trips above."""
    seen: set[type] = set()

    @settings(max_examples=250, database=None, derandomize=True)
    @given(messages)
    def collect(msg: Any) -> None:
        seen.add(type(msg))

    collect()
    assert seen == set(codec._TO_WIRE)


@settings(max_examples=300)
@given(
    source=st.text(min_size=1, max_size=30),
    sequence=st.integers(0, 2**63 - 1),
    data=st.binary(max_size=40),
    app=st.text(max_size=10),
    payload_type=st.text(max_size=20),
    ack=st.booleans(),
    candidate_path=st.booleans(),
)
def test_broadcast_template_writes_the_same_bytes_as_the_struct_path(
    source: str,
    sequence: int,
    data: bytes,
    app: str,
    payload_type: str,
    ack: bool,
    candidate_path: bool,
) -> None:
    msg = r2.BroadcastData(
        source=source,
        sequence=sequence,
        data=data,
        ext_header={"app-id": app},
        payload_type=payload_type,
        ack=ack,
        candidate_path=candidate_path,
    )
    ext = msgspec.json.encode(msg.ext_header)
    header = msgspec.json.encode(codec._TO_WIRE[r2.BroadcastData](msg))
    expected = len(header).to_bytes(2, "big").rjust(4, b"\x01") + header + ext + data
    assert r2.encode(msg) == expected  # first call: the checked path fills the caches
    assert r2.encode(msg) == expected  # second call: the cached template


@settings(max_examples=200)
@given(
    st.lists(messages, min_size=1, max_size=6),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_stream_decoder_yields_the_same_messages_whatever_the_split(
    msgs: list[Any], cuts: list[int]
) -> None:
    blob = b"".join(r2.encode(m) for m in msgs)
    points = sorted({c % (len(blob) + 1) for c in cuts} | {0, len(blob)})
    decoder = r2.StreamDecoder()
    out: list[r2.Message] = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(blob[start:end])
    decoder.eof()
    assert out == [r2.decode(r2.encode(m)) for m in msgs] == msgs
    assert decoder.buffered == 0


@settings(max_examples=50)
@given(st.lists(messages, min_size=1, max_size=4))
def test_stream_decoder_takes_bytearray_and_memoryview_chunks(msgs: list[Any]) -> None:
    blob = b"".join(r2.encode(m) for m in msgs)
    decoder = r2.StreamDecoder()
    half = len(blob) // 2
    out = decoder.feed(bytearray(blob[:half])) + decoder.feed(memoryview(blob)[half:])
    assert out == msgs


def test_decode_accepts_bytearray_and_memoryview_frames() -> None:
    msg = r2.BroadcastData(source="a", sequence=1, data=b"xyz")
    frame = r2.encode(msg)
    assert r2.decode(bytearray(frame)) == msg  # type: ignore[arg-type]
    assert r2.decode(memoryview(frame)) == msg  # type: ignore[arg-type]


def test_decoded_extension_headers_are_independent_copies() -> None:
    """The decoder caches common extension headers; a caller mutating one must not leak."""
    frame = r2.encode(
        r2.BroadcastData(source="a", sequence=1, data=b"", ext_header={"app-id": "iot"})
    )
    first = r2.decode(frame)
    assert isinstance(first, r2.BroadcastData)
    first.ext_header["app-id"] = "changed"
    second = r2.decode(frame)
    assert isinstance(second, r2.BroadcastData)
    assert second.ext_header == {"app-id": "iot"}
