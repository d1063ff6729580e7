"""msgspec Structs that mirror the R2 JSON headers exactly as the reference peer writes them.

The flat message types in ``messages.py`` are what the peer core reasons about; these are what
travels. Decoding straight into typed nested Structs lets msgspec check every type, bound and
required key in C in one pass, and gives a JSON path for the error when one is wrong. The field
order of each Struct is the canonical key order hp2p writes (docs/wire-r2.md).

Requests are a tagged union on ``req-code`` and responses one on ``rsp-code``, one class per
code, so the code alone picks the shape. Where Go may write ``null`` for an empty slice
(``via``, ``path``, ``Sequence``, ``buffermap``) ``null`` is accepted and read as empty.
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
Extra = dict[str, Any]
Via = Annotated[
    list[Annotated[list[Text], Meta(min_length=2, max_length=2)]], Meta(max_length=MAX_ITEMS)
]
Path = Annotated[
    list[Annotated[list[Text], Meta(min_length=3, max_length=3)]], Meta(max_length=MAX_ITEMS)
]


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
    hp2p: Raw | UnsetType = UNSET


class OverlayRef(_Wire):
    overlay_id: Id


class EstabPeer(_Wire):
    peer_id: Id
    ticket_id: UInt


class EstabParams(_Wire, kw_only=True):
    operation: OverlayRef
    allow_primary_req: bool = True
    peer: EstabPeer
    hp2p: Raw | UnsetType = UNSET


class NtpOperation(_Wire):
    ntp_time: Short


class ProbeParams(_Wire):
    operation: NtpOperation
    hp2p: Raw | UnsetType = UNSET


class ProbeRspParams(_Wire):
    operation: NtpOperation


class SetPrimaryParams(_Wire):
    buffermap: Buffermap | UnsetType | None = UNSET
    hp2p: Raw | UnsetType = UNSET


class SetPrimaryRspParams(_Wire):
    buffermap: Buffermap | UnsetType | None = UNSET
    parent_peer: PeerRef | UnsetType | None = UNSET
    hp2p: Raw | UnsetType = UNSET


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
    hp2p: Raw | UnsetType = UNSET


class AckOperation(_Wire):
    ack: bool = False


class ReleaseParams(_Wire):
    operation: AckOperation | UnsetType = UNSET
    hp2p: Raw | UnsetType = UNSET


class Hp2pOnlyParams(_Wire):
    hp2p: Raw | UnsetType = UNSET


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
    hp2p: Raw | UnsetType = UNSET


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
    req_params: Hp2pOnlyParams | UnsetType | None = UNSET


class ScanTreeReq(Req, tag=9):
    req_params: ScanParams


class BuffermapReq(Req, tag=10):
    req_params: BuffermapParams


class GetDataReq(Req, tag=11):
    """The one flat request: its fields sit next to ``req-code``, no ``req-params``."""

    overlay_id: Id
    source_id: Id
    sequence: UInt


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
HP2P_DECODER: Final = msgspec.json.Decoder(dict[str, Any] | None)
ENCODER: Final = msgspec.json.Encoder()
