"""msgspec Structs that mirror the R2 JSON headers exactly as the reference peer writes them.

The flat message types in ``messages.py`` are what the peer core reasons about; these are what
travels. Decoding straight into typed nested Structs lets msgspec check every type, bound and
required key in C in one pass, and gives a JSON path for the error when one is wrong. The field
order of each Struct is the canonical key order hp2p writes (docs/wire-r2.md).

Requests are a tagged union on ``req-code`` and responses one on ``rsp-code``, one class per
code, so the code alone picks the shape. Where Go may write ``null`` for an empty slice
(``via``, ``path``, ``Sequence``, ``buffermap``) ``null`` is accepted and read as empty.

hp2p's own fields travel in an ``"hp2p"`` object inside ``req-params``/``rsp-params``. They are
typed and bounded here like every other field (one Struct per message that carries any), so a
peer that sends a wrong or oversized value is refused at decode with the JSON path of the field,
and the peer core reads plain attributes. The same Structs are the ``hp2p`` attribute of the flat
messages: they are already flat.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType, field

MAX_ID: Final = 256
"""Overlay ids, peer ids: the HOMS stores 50 characters; 256 leaves room for ``name;instance``."""
MAX_TEXT: Final = 1024
"""Addresses (a URL) and other free text fields."""
MAX_SHORT: Final = 255
"""payload-type (a MIME type), ntp-time, a string cseq, a ticket written as a string."""
MAX_ITEMS: Final = 65535
"""No list in a header of at most 65535 bytes can be longer; stated for the reader."""

UInt = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
Short = Annotated[str, Meta(max_length=MAX_SHORT)]
Via = Annotated[
    list[Annotated[list[Text], Meta(min_length=2, max_length=2)]], Meta(max_length=MAX_ITEMS)
]
Path = Annotated[
    list[Annotated[list[Text], Meta(min_length=3, max_length=3)]], Meta(max_length=MAX_ITEMS)
]


# --- hp2p extensions (the "hp2p" object; docs/wire-r2.md has the table) -----------------------
MAX_DEPTH: Final = 999_999
"""A tree depth or a free-slot depth; deeper than any tree a HOMS can hand out."""
MAX_HOPS: Final = 63
"""Levels a HELLO climbs (``up``) or descends (``down``)."""
MAX_HEADS: Final = 256
"""Sources in one heartbeat's ``heads``; a peer sends at most 64 (the rest next time)."""
MAX_SINCE: Final = 1e9
"""Seconds of outage in ``since``; also keeps it finite."""

Depth = Annotated[int, Meta(ge=0, le=MAX_DEPTH)]
Hops = Annotated[int, Meta(ge=0, le=MAX_HOPS)]
Flag = Annotated[int, Meta(ge=0, le=1)]
"""A flag that hp2p peers have always written as ``1`` (SubMesh ``mesh``, ``standby``)."""
Heads = Annotated[dict[Id, UInt], Meta(max_length=MAX_HEADS)]
MAX_CREDENTIAL: Final = 2048
"""A membership credential token (hp2p.trust.credential.MAX_TOKEN); a real one is ~300."""
MAX_MERKLE: Final = 16
"""Sibling hashes on a source signature's batch path (hp2p.trust.origin.MAX_BATCH_DEPTH)."""
Token = Annotated[str, Meta(min_length=1, max_length=MAX_CREDENTIAL)]
Signature = Annotated[bytes, Meta(min_length=64, max_length=64)]
Nonce = Annotated[bytes, Meta(min_length=16, max_length=16)]
MerklePath = Annotated[
    list[Annotated[bytes, Meta(min_length=32, max_length=32)]], Meta(max_length=MAX_MERKLE)
]


class Extension(Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """Base of the ``hp2p`` objects. Every field is optional with a default that is not written.

    A reference peer sends no ``hp2p`` object, and a message with nothing set writes none, so
    plain messages keep the reference's exact bytes. Unknown keys inside ``hp2p`` are ignored
    (skipped by the parser, like unknown keys anywhere in a header) and are therefore not
    forwarded when a peer relays a HELLO: a newer peer's field reaches only peers that know it.
    Frozen: one instance (the default) is shared by every message that carries nothing. The
    field order is the key order hp2p has always written (tests/test_wire_r2_extensions.py).
    """


class HelloExt(Extension, frozen=True):
    """HELLO: the climb/descent of a join request and the SubMesh link flags."""

    up: Hops | None = None
    """Levels still to climb towards the root; present (even 0) on a climbing-aware HELLO."""
    attempt: UInt | Short | None = None
    """The joiner's attempt id: a peer answers one copy per (peer, ticket, attempt)."""
    displace: bool = False
    """An orphan with no legal free slot: a full older peer may displace its youngest child."""
    cpm: bool = False
    """A candidate refill (CPM FE): the parent also passes it to the climber's siblings."""
    down: Hops | None = None
    """Levels still to descend towards the shallowest free slot (from a parent only)."""
    mesh: Flag = 0
    """1: open a SubMesh link (a SubMesh peer refuses a HELLO without it)."""
    standby: Flag = 0
    """1: a standby watching the source; it gets one of the spare neighbour slots."""
    cred: Token | None = None
    """The joiner's membership credential: relays and volunteers check it (issue #11)."""


class EstabExt(Extension, frozen=True):
    """ESTAB: what the joiner needs to rank the volunteer (R2's ESTAB has no address)."""

    address: Text | None = None
    """The volunteer's listening address (the joiner only sees the ephemeral end)."""
    depth: Depth | None = None
    """The volunteer's tree depth."""
    displace: bool = False
    """The volunteer must displace a child to take the joiner: rank it after free slots."""


class SetPrimaryExt(Extension, frozen=True):
    """SET_PRIMARY: an orphan asking for a slot, and the outage for push recovery."""

    recovery: bool = False
    """The asker is an orphan (it may use the spare recovery slot)."""
    displace: bool = False
    """The orphan may take the slot of the parent's youngest child (with ``recovery``)."""
    since: Annotated[float, Meta(ge=0, le=MAX_SINCE)] | None = None
    """Seconds of outage plus detection: how far back the parent pushes what the orphan lacks."""


class SetPrimaryResponseExt(Extension, frozen=True):
    """4200: the new parent's depth, so the child knows its own at once."""

    depth: Depth | None = None


class OriginExt(Extension, frozen=True):
    """The source's signature on a message (hp2p.trust.origin), on BROADCAST_DATA and 11200."""

    sig: Signature | None = None
    """Ed25519 over the message's leaf digest, or over the root of its batch."""
    idx: Annotated[int, Meta(ge=0, le=2**MAX_MERKLE - 1)] = 0
    """The message's index in its signed batch (0 alone)."""
    path: MerklePath = []
    """Sibling hashes from the message's leaf to the signed root (empty alone)."""
    cred: Token | None = None
    """The source's membership credential, sent once per link (the receiver keeps it)."""


class BroadcastExt(OriginExt, frozen=True):
    """BROADCAST_DATA: the source signature, and a cached message pushed after a repair."""

    recovered: bool = False


class HeartbeatExt(Extension, frozen=True):
    """HEARTBEAT: depth and free-slot hints for HELLO descent, and heads for tail losses."""

    depth: Depth | None = None
    """The sender's tree depth (a child follows its parent's)."""
    slot: Depth | None = None
    """The depth of the shallowest free child slot in the sender's subtree, if known."""
    heads: Heads = {}
    """The newest sequence per source that moved since the sender's previous heartbeat."""


class ReleaseExt(Extension, frozen=True):
    """RELEASE: why a SubMesh peer refused or dropped the link (for the log)."""

    reason: Text | None = None


class _Wire(Struct, rename="kebab", gc=False):
    """Base of every wire Struct: hyphenated keys, unknown keys ignored, not GC-tracked."""


# --- nested objects ------------------------------------------------------------------------
class PeerRef(_Wire):
    peer_id: Id
    address: Text


class BuffermapItem(Struct, gc=False):
    """The one place the reference writes Go field names (CamelCase)."""

    source_peer_id: Id = field(name="SourcePeerId")
    sequence: list[UInt] | None = field(name="Sequence", default=None)


Buffermap = Annotated[list[BuffermapItem], Meta(max_length=MAX_ITEMS)]


class HelloOperation(_Wire):
    overlay_id: Id
    conn_num: Int = field(name="conn_num", default=3)
    ttl: Int = 3
    recovery: bool | UnsetType | None = UNSET
    vertical_candidate: bool | UnsetType | None = UNSET


class HelloPeer(_Wire):
    peer_id: Id
    address: Text
    ticket_id: UInt


class HelloParams(_Wire):
    operation: HelloOperation
    peer: HelloPeer
    hp2p: HelloExt | UnsetType | None = UNSET


class OverlayRef(_Wire):
    overlay_id: Id


class EstabPeer(_Wire):
    peer_id: Id
    ticket_id: UInt


class EstabParams(_Wire, kw_only=True):
    operation: OverlayRef
    allow_primary_req: bool = True
    peer: EstabPeer
    hp2p: EstabExt | UnsetType | None = UNSET


class NtpOperation(_Wire):
    ntp_time: Short


class ProbeParams(_Wire):
    operation: NtpOperation


class ProbeRspParams(_Wire):
    operation: NtpOperation


class SetPrimaryParams(_Wire):
    buffermap: Buffermap | UnsetType | None = UNSET
    hp2p: SetPrimaryExt | UnsetType | None = UNSET


class SetPrimaryRspParams(_Wire):
    buffermap: Buffermap | UnsetType | None = UNSET
    parent_peer: PeerRef | UnsetType | None = UNSET
    hp2p: SetPrimaryResponseExt | UnsetType | None = UNSET


class BroadcastOperation(_Wire):
    ack: bool = False
    candidate_path: bool = False


class BroadcastPeer(_Wire):
    peer_id: Id
    sequence: UInt


class PayloadInfo(_Wire):
    length: UInt
    payload_type: Short = "text/plain"


class BroadcastParams(_Wire):
    operation: BroadcastOperation
    peer: BroadcastPeer
    payload: PayloadInfo
    ext_header_len: UInt = 0
    hp2p: BroadcastExt | UnsetType | None = UNSET


class AckOperation(_Wire):
    ack: bool = False


class ReleaseParams(_Wire):
    operation: AckOperation | UnsetType = UNSET
    hp2p: ReleaseExt | UnsetType | None = UNSET


class HeartbeatParams(_Wire):
    hp2p: HeartbeatExt | UnsetType | None = UNSET


class ScanOverlay(_Wire):
    overlay_id: Id
    via: Via | None = None
    path: Path | None = None


class ScanParams(_Wire):
    cseq: Int | Short
    overlay: ScanOverlay
    peer: HelloPeer


class BuffermapParams(_Wire):
    overlay_id: Id


class BuffermapRspParams(_Wire):
    overlay_id: Id
    buffermap: Buffermap | None = None


class SourcePeer(_Wire):
    peer_id: Id


class GetDataRspParams(_Wire):
    peer: SourcePeer
    sequence: UInt
    payload: PayloadInfo
    ext_header_len: UInt = 0
    hp2p: OriginExt | UnsetType | None = UNSET


class AuthParams(_Wire):
    """AUTH (hp2p): step 1 carries credential and nonce, step 2 the dialer's proof."""

    credential: Token | UnsetType = UNSET
    nonce: Nonce | UnsetType = UNSET
    proof: Signature | UnsetType = UNSET


class AuthRspParams(_Wire):
    credential: Token | UnsetType = UNSET
    nonce: Nonce | UnsetType = UNSET
    proof: Signature | UnsetType = UNSET
    reason: Text | UnsetType = UNSET


# --- requests: tagged on req-code ------------------------------------------------------------
class Req(_Wire, tag_field="req-code", kw_only=True):
    """A request header. ``rsp-code`` must be absent: a header with both is ambiguous."""

    rsp_code: Raw | UnsetType = UNSET


class HelloReq(Req, tag=1):
    req_params: HelloParams


class EstabReq(Req, tag=2):
    req_params: EstabParams


class ProbeReq(Req, tag=3):
    req_params: ProbeParams


class SetPrimaryReq(Req, tag=4):
    req_params: SetPrimaryParams | UnsetType | None = UNSET


class SetCandidateReq(Req, tag=5):
    pass


class BroadcastReq(Req, tag=6):
    req_params: BroadcastParams


class ReleaseReq(Req, tag=7):
    req_params: ReleaseParams | UnsetType | None = UNSET


class HeartbeatReq(Req, tag=8):
    req_params: HeartbeatParams | UnsetType | None = UNSET


class ScanTreeReq(Req, tag=9):
    req_params: ScanParams


class BuffermapReq(Req, tag=10):
    req_params: BuffermapParams


class GetDataReq(Req, tag=11):
    """The one flat request: its fields sit next to ``req-code``, no ``req-params``."""

    overlay_id: Id
    source_id: Id
    sequence: UInt


class AuthReq(Req, tag=12):
    """hp2p: link admission (docs/wire-r2.md); reference peers never see one."""

    req_params: AuthParams


AnyReq = (
    HelloReq
    | EstabReq
    | ProbeReq
    | SetPrimaryReq
    | SetCandidateReq
    | BroadcastReq
    | ReleaseReq
    | HeartbeatReq
    | ScanTreeReq
    | BuffermapReq
    | GetDataReq
    | AuthReq
)


# --- responses: tagged on rsp-code, one class per code ---------------------------------------
class Rsp(_Wire, tag_field="rsp-code", kw_only=True):
    """A response header. ``req-code`` must be absent."""

    req_code: Raw | UnsetType = UNSET


class HelloRsp(Rsp, tag=1202):
    pass


class EstabYesRsp(Rsp, tag=2200):
    pass


class EstabNoRsp(Rsp, tag=2603):
    pass


class ProbeRsp(Rsp, tag=3200):
    rsp_params: ProbeRspParams


class PrimaryYesRsp(Rsp, tag=4200):
    rsp_params: SetPrimaryRspParams | UnsetType | None = UNSET


class PrimaryNoRsp(Rsp, tag=4603):
    rsp_params: SetPrimaryRspParams | UnsetType | None = UNSET


class CandidateRsp(Rsp, tag=5200):
    pass


class BroadcastRsp(Rsp, tag=6200):
    pass


class ReleaseRsp(Rsp, tag=7200):
    pass


class HeartbeatRsp(Rsp, tag=8200):
    pass


class ScanNonLeafRsp(Rsp, tag=9100):
    rsp_params: ScanParams


class ScanLeafRsp(Rsp, tag=9200):
    rsp_params: ScanParams


class BuffermapRsp(Rsp, tag=10200):
    rsp_params: BuffermapRspParams


class GetDataOkRsp(Rsp, tag=11200):
    rsp_params: GetDataRspParams


class GetDataMissingRsp(Rsp, tag=11404):
    rsp_params: GetDataRspParams


class AuthOkRsp(Rsp, tag=12200):
    rsp_params: AuthRspParams | UnsetType = UNSET


class AuthRefusedRsp(Rsp, tag=12401):
    rsp_params: AuthRspParams | UnsetType = UNSET


AnyRsp = (
    HelloRsp
    | EstabYesRsp
    | EstabNoRsp
    | ProbeRsp
    | PrimaryYesRsp
    | PrimaryNoRsp
    | CandidateRsp
    | BroadcastRsp
    | ReleaseRsp
    | HeartbeatRsp
    | ScanNonLeafRsp
    | ScanLeafRsp
    | BuffermapRsp
    | GetDataOkRsp
    | GetDataMissingRsp
    | AuthOkRsp
    | AuthRefusedRsp
)


class BroadcastOnly(_Wire, kw_only=True):
    """BROADCAST_DATA alone, untagged: the decoder's fast path skips the union dispatch."""

    req_code: int
    rsp_code: Raw | UnsetType = UNSET
    req_params: BroadcastParams


class Envelope(Struct, gc=False):
    """Just enough of a header to tell a request from a response when the code is not first."""

    req_code: Raw | UnsetType = field(name="req-code", default=UNSET)
    rsp_code: Raw | UnsetType = field(name="rsp-code", default=UNSET)


REQUEST_DECODER: Final = msgspec.json.Decoder(AnyReq)
RESPONSE_DECODER: Final = msgspec.json.Decoder(AnyRsp)
BROADCAST_DECODER: Final = msgspec.json.Decoder(BroadcastOnly)
ENVELOPE_DECODER: Final = msgspec.json.Decoder(Envelope)
EXTENSION_DECODER: Final = msgspec.json.Decoder(dict[str, Any])
ENCODER: Final = msgspec.json.Encoder()
