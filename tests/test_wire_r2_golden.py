"""Golden R2 frames written by hand from etri-2023-protocol.md §3.2-3.4, not by the encoder.

Each vector is the 4-byte prefix (0x01, 0x01, header length as u16 big-endian) followed by
the JSON header exactly as the reference peer shapes it, in hp2p's canonical key order
(docs/wire-r2.md), and for BROADCAST_DATA / GET_DATA 11200 the extension header and the data.
"""

from __future__ import annotations

import msgspec
import pytest

from hp2p.wire import r2

HELLO = (
    b"\x01\x01\x00\xae"
    b'{"req-code":1,"req-params":{"operation":{"overlay-id":"ov-1","conn_num":3,"ttl":3},'
    b'"peer":{"peer-id":"carol;1700000000000001","address":"ws://127.0.0.1:8082","ticket-id":7}}}'
)
HELLO_VERTICAL = (
    b"\x01\x01\x00\xaf"
    b'{"req-code":1,"req-params":{"operation":{"overlay-id":"ov-1","conn_num":3,"ttl":1,'
    b'"vertical-candidate":true},"peer":{"peer-id":"carol","address":"ws://h:8082","ticket-id":7}}}'
)
ESTAB = (
    b"\x01\x01\x00\x7f"
    b'{"req-code":2,"req-params":{"operation":{"overlay-id":"ov-1"},"allow-primary-req":true,'
    b'"peer":{"peer-id":"bob","ticket-id":2}}}'
)
SET_PRIMARY_4200 = (
    b"\x01\x01\x00\x62"
    b'{"rsp-code":4200,"rsp-params":{"parent-peer":{"peer-id":"alice",'
    b'"address":"ws://127.0.0.1:8082"}}}'
)
BROADCAST = (
    b"\x01\x01\x00\xbd"
    b'{"req-code":6,"req-params":{"operation":{"ack":false,"candidate-path":false},'
    b'"peer":{"peer-id":"alice","sequence":5},"payload":{"length":5,"payload-type":"text/plain"},'
    b'"ext-header-len":17}}'
    b'{"app-id":"chat"}'
    b"hello"
)
BUFFERMAP_10200 = (
    b"\x01\x01\x00\x94"
    b'{"rsp-code":10200,"rsp-params":{"overlay-id":"ov-1","buffermap":['
    b'{"SourcePeerId":"alice","Sequence":[1,2,3]},{"SourcePeerId":"bob","Sequence":[]}]}}'
)
GET_DATA = b'\x01\x01\x00\x45{"req-code":11,"overlay-id":"ov-1","source-id":"alice","sequence":42}'
GET_DATA_11200 = (
    b"\x01\x01\x00\x9f"
    b'{"rsp-code":11200,"rsp-params":{"peer":{"peer-id":"alice"},"sequence":42,'
    b'"payload":{"length":3,"payload-type":"application/octet-stream"},"ext-header-len":18}}'
    b'{"app-id":"media"}'
    b"\x00\xff\x10"
)
HEARTBEAT = b'\x01\x01\x00\x0e{"req-code":8}'
HEARTBEAT_8200 = b'\x01\x01\x00\x11{"rsp-code":8200}'
SET_CANDIDATE = b'\x01\x01\x00\x0e{"req-code":5}'

GOLDEN: list[tuple[str, bytes, r2.Message]] = [
    (
        "hello",
        HELLO,
        r2.Hello(
            overlay_id="ov-1",
            peer_id="carol;1700000000000001",
            address="ws://127.0.0.1:8082",
            ticket_id=7,
        ),
    ),
    (
        "hello-vertical",
        HELLO_VERTICAL,
        r2.Hello(
            overlay_id="ov-1",
            peer_id="carol",
            address="ws://h:8082",
            ticket_id=7,
            ttl=1,
            vertical_candidate=True,
        ),
    ),
    ("estab", ESTAB, r2.Estab(overlay_id="ov-1", peer_id="bob", ticket_id=2)),
    (
        "set-primary-4200",
        SET_PRIMARY_4200,
        r2.SetPrimaryResponse(
            code=4200, parent_peer=r2.PeerAddress("alice", "ws://127.0.0.1:8082")
        ),
    ),
    (
        "broadcast",
        BROADCAST,
        r2.BroadcastData(source="alice", sequence=5, data=b"hello", ext_header={"app-id": "chat"}),
    ),
    (
        "buffermap-10200",
        BUFFERMAP_10200,
        r2.BuffermapResponse(
            overlay_id="ov-1",
            buffermap=[r2.BuffermapEntry("alice", [1, 2, 3]), r2.BuffermapEntry("bob", [])],
        ),
    ),
    ("get-data", GET_DATA, r2.GetData(overlay_id="ov-1", source_id="alice", sequence=42)),
    (
        "get-data-11200",
        GET_DATA_11200,
        r2.GetDataResponse(
            source="alice",
            sequence=42,
            data=b"\x00\xff\x10",
            ext_header={"app-id": "media"},
            payload_type="application/octet-stream",
        ),
    ),
    ("heartbeat", HEARTBEAT, r2.Heartbeat()),
    ("heartbeat-8200", HEARTBEAT_8200, r2.HeartbeatResponse()),
    ("set-candidate", SET_CANDIDATE, r2.SetCandidate()),
]


@pytest.mark.parametrize(("name", "frame", "message"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_prefix_is_consistent(name: str, frame: bytes, message: r2.Message) -> None:
    """Guards the hand-written vectors themselves: the length field covers the JSON header."""
    header_len = int.from_bytes(frame[2:4], "big")
    header = msgspec.json.decode(frame[4 : 4 + header_len])
    assert ("req-code" in header) != ("rsp-code" in header)


@pytest.mark.parametrize(("name", "frame", "message"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_decodes_to_the_expected_message(
    name: str, frame: bytes, message: r2.Message
) -> None:
    assert r2.decode(frame) == message


@pytest.mark.parametrize(("name", "frame", "message"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_encode_writes_the_golden_bytes(name: str, frame: bytes, message: r2.Message) -> None:
    assert r2.encode(message) == frame


@pytest.mark.parametrize(("name", "frame", "message"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_stream_decoder_reads_golden_frames_byte_by_byte(
    name: str, frame: bytes, message: r2.Message
) -> None:
    decoder = r2.StreamDecoder()
    out: list[r2.Message] = []
    for i in range(len(frame)):
        out += decoder.feed(frame[i : i + 1])
    assert out == [message]
    assert decoder.buffered == 0
    decoder.eof()


def test_go_key_order_and_nulls_decode_like_the_canonical_order() -> None:
    """The reference is free to order keys and to write ``null`` for empty Go slices."""
    header = (
        b'{"req-params":{"peer":{"sequence":5,"peer-id":"alice"},"ext-header-len":17,'
        b'"payload":{"payload-type":"text/plain","length":5},'
        b'"operation":{"candidate-path":false,"ack":false}},"req-code":6}'
    )
    frame = b"\x01\x01\x00\xbd" + header + b'{"app-id":"chat"}hello'
    assert r2.decode(frame) == r2.decode(BROADCAST)
    scan = (
        b'{"rsp-code":9200,"rsp-params":{"cseq":123456789,"overlay":{"overlay-id":"ov-1",'
        b'"via":null,"path":null},"peer":{"peer-id":"p","address":"a","ticket-id":3}}}'
    )
    decoded = r2.decode(b"\x01\x01" + len(scan).to_bytes(2, "big") + scan)
    assert decoded == r2.ScanTreeResponse(
        code=9200, cseq=123456789, overlay_id="ov-1", peer_id="p", address="a", ticket_id=3
    )


def test_unknown_keys_are_ignored_and_hp2p_travels_inside_req_params() -> None:
    header = (
        b'{"req-code":8,"x-future":{"deep":[[1],{"a":null}]},'
        b'"req-params":{"hp2p":{"depth":2},"other":true}}'
    )
    frame = b"\x01\x01" + len(header).to_bytes(2, "big") + header
    assert r2.decode(frame) == r2.Heartbeat(hp2p=r2.HeartbeatExt(depth=2))
    assert r2.encode(r2.Heartbeat(hp2p=r2.HeartbeatExt(depth=2))) == (
        b'\x01\x01\x00\x30{"req-code":8,"req-params":{"hp2p":{"depth":2}}}'
    )


def test_scan_tree_cseq_may_be_a_string_as_in_the_2020_peer() -> None:
    header = (
        b'{"req-code":9,"req-params":{"cseq":"17","overlay":{"overlay-id":"o",'
        b'"via":[["a","ws://a"]],"path":[]},"peer":{"peer-id":"a","address":"ws://a",'
        b'"ticket-id":1}}}'
    )
    msg = r2.decode(b"\x01\x01" + len(header).to_bytes(2, "big") + header)
    assert isinstance(msg, r2.ScanTree)
    assert msg.cseq == "17"
    assert msg.via == [["a", "ws://a"]]
