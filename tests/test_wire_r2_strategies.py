"""Hypothesis strategies for every R2 message, and a check that they only make valid ones.

The other R2 test modules import from here. Values reach the limits the codec declares
(256-character ids, 2**63 - 1 sequences) so that the boundaries are round-tripped too. The hp2p
extension objects are derived from their Structs' own declared types and bounds
(``wire_strategies.for_struct``), so a new extension field is round-tripped without a change
here.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hp2p.wire import r2
from hp2p.wire.r2.schema import MAX_ID, MAX_SHORT
from wire_strategies import for_struct

U63 = st.integers(0, 2**63 - 1) | st.sampled_from([0, 1, 2**63 - 1])
I64 = st.integers(-(2**63), 2**63 - 1)
ids = st.text(min_size=1, max_size=12) | st.text(min_size=MAX_ID, max_size=MAX_ID)
texts = st.text(max_size=24)
shorts = st.text(max_size=16) | st.text(min_size=MAX_SHORT, max_size=MAX_SHORT)
opt_bool = st.none() | st.booleans()

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def ext(cls: type[r2.Extension]) -> st.SearchStrategy[Any]:
    """An hp2p extension object: often empty (the reference's bytes), else any valid one."""
    return st.just(cls()) | for_struct(cls)


ext_headers = st.fixed_dictionaries(
    {"app-id": st.sampled_from(r2.APP_IDS) | texts}
) | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
payloads = st.binary(max_size=64)
entries = st.builds(r2.BuffermapEntry, ids, st.lists(U63, max_size=5))
buffermaps = st.lists(entries, max_size=4)
via = st.lists(st.lists(texts, min_size=2, max_size=2), max_size=3)
path = st.lists(st.lists(texts, min_size=3, max_size=3), max_size=3)
cseqs = I64 | shorts


def _scan(cls: Any, **codes: Any) -> st.SearchStrategy[Any]:
    return st.builds(
        cls,
        cseq=cseqs,
        overlay_id=ids,
        peer_id=ids,
        address=texts,
        ticket_id=U63,
        via=via,
        path=path,
        **codes,
    )


requests: st.SearchStrategy[Any] = st.one_of(
    st.builds(
        r2.Hello,
        overlay_id=ids,
        peer_id=ids,
        address=texts,
        ticket_id=U63,
        conn_num=I64,
        ttl=I64,
        recovery=opt_bool,
        vertical_candidate=opt_bool,
        hp2p=ext(r2.HelloExt),
    ),
    st.builds(
        r2.Estab,
        overlay_id=ids,
        peer_id=ids,
        ticket_id=U63,
        allow_primary_req=st.booleans(),
        hp2p=ext(r2.EstabExt),
    ),
    st.builds(r2.Probe, ntp_time=shorts),
    st.builds(r2.SetPrimary, buffermap=st.none() | buffermaps, hp2p=ext(r2.SetPrimaryExt)),
    st.just(r2.SetCandidate()),
    st.builds(
        r2.BroadcastData,
        source=ids,
        sequence=U63,
        data=payloads,
        ext_header=ext_headers,
        payload_type=shorts | st.sampled_from(["text/plain", "application/octet-stream"]),
        ack=st.booleans(),
        candidate_path=st.booleans(),
        hp2p=ext(r2.BroadcastExt),
    ),
    st.builds(r2.Release, ack=st.booleans(), hp2p=ext(r2.ReleaseExt)),
    st.builds(r2.Heartbeat, hp2p=ext(r2.HeartbeatExt)),
    _scan(r2.ScanTree),
    st.builds(r2.Buffermap, overlay_id=ids),
    st.builds(r2.GetData, overlay_id=ids, source_id=ids, sequence=U63),
    st.builds(
        r2.Auth,
        credential=st.none() | st.text(min_size=1, max_size=300),
        nonce=st.none() | st.binary(min_size=16, max_size=16),
        proof=st.none() | st.binary(min_size=64, max_size=64),
    ),
)

responses: st.SearchStrategy[Any] = st.one_of(
    st.just(r2.HelloResponse()),
    st.builds(r2.EstabResponse, code=st.sampled_from([r2.ESTAB_YES, r2.ESTAB_NO])),
    st.builds(r2.ProbeResponse, ntp_time=shorts),
    st.builds(
        r2.SetPrimaryResponse,
        code=st.sampled_from([r2.PRIMARY_YES, r2.PRIMARY_NO]),
        buffermap=st.none() | buffermaps,
        parent_peer=st.none() | st.builds(r2.PeerAddress, ids, texts),
        hp2p=ext(r2.SetPrimaryResponseExt),
    ),
    st.just(r2.SetCandidateResponse()),
    st.just(r2.BroadcastDataResponse()),
    st.just(r2.ReleaseResponse()),
    st.just(r2.HeartbeatResponse()),
    _scan(r2.ScanTreeResponse, code=st.sampled_from([r2.SCAN_TREE_NON_LEAF, r2.SCAN_TREE_LEAF])),
    st.builds(r2.BuffermapResponse, overlay_id=ids, buffermap=buffermaps),
    st.builds(
        r2.GetDataResponse,
        source=ids,
        sequence=U63,
        data=payloads,
        ext_header=ext_headers,
        payload_type=shorts,
        code=st.sampled_from([r2.GET_DATA_OK, r2.GET_DATA_MISSING]),
        hp2p=ext(r2.OriginExt),
    ),
    st.builds(
        r2.AuthResponse,
        code=st.sampled_from([r2.AUTH_OK, r2.AUTH_REFUSED]),
        credential=st.none() | st.text(min_size=1, max_size=300),
        nonce=st.none() | st.binary(min_size=16, max_size=16),
        proof=st.none() | st.binary(min_size=64, max_size=64),
        reason=st.none() | texts,
    ),
)

messages: st.SearchStrategy[Any] = requests | responses


@settings(max_examples=100)
@given(messages)
def test_strategies_only_make_messages_the_codec_accepts(msg: Any) -> None:
    frame = r2.encode(msg)
    assert frame[:2] == b"\x01\x01"
    assert int.from_bytes(frame[2:4], "big") <= len(frame) - 4
