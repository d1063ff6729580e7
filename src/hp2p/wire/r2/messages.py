"""The R2 peer-protocol messages (Q.4102, ETRI GO-2023 dialect) as typed objects.

These are the objects the peer core reasons about. They are *flat* on purpose: the core asks
``msg.sequence``, not ``msg.req_params.peer.sequence``; the codec in ``hp2p.wire.r2.codec``
maps them to and from the nested JSON header of etri-2023-protocol.md §3.4, with the field
names exactly as the reference writes them.

Every request carries its request code (``REQ_CODE``); every response carries a ``code`` that is
one of the 3/4-digit response codes of §3.3 (request code followed by an HTTP-like status).

hp2p's own optional fields (``hp2p`` on several messages) travel as an extra ``"hp2p"`` object in
``req-params``/``rsp-params``; reference peers ignore unknown keys, so they cost nothing in
interop. They carry, e.g., the sender's tree depth or the heads of its sources. Each message's
``hp2p`` is a typed, bounded extension Struct from ``schema.py`` (validated when the frame is
decoded), never a free-form dict: a message that carries none holds the shared empty default.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from hp2p.wire.r2.schema import BroadcastExt as BroadcastExt
from hp2p.wire.r2.schema import EstabExt as EstabExt
from hp2p.wire.r2.schema import Extension as Extension
from hp2p.wire.r2.schema import HeartbeatExt as HeartbeatExt
from hp2p.wire.r2.schema import HelloExt as HelloExt
from hp2p.wire.r2.schema import OriginExt as OriginExt
from hp2p.wire.r2.schema import ReleaseExt as ReleaseExt
from hp2p.wire.r2.schema import SetPrimaryExt as SetPrimaryExt
from hp2p.wire.r2.schema import SetPrimaryResponseExt as SetPrimaryResponseExt

# --- response codes (etri-2023-protocol.md §3.3) ---------------------------------------------
HELLO_ACCEPTED = 1202
ESTAB_YES = 2200
ESTAB_NO = 2603
PROBE_OK = 3200
PRIMARY_YES = 4200
PRIMARY_NO = 4603
CANDIDATE_OK = 5200
BROADCAST_OK = 6200
RELEASE_OK = 7200
HEARTBEAT_OK = 8200
SCAN_TREE_NON_LEAF = 9100
SCAN_TREE_LEAF = 9200
BUFFERMAP_OK = 10200
GET_DATA_OK = 11200
GET_DATA_MISSING = 11404  # hp2p: the peer does not hold that sequence (reference: no answer)
AUTH_OK = 12200  # hp2p: link admission (issue #11)
AUTH_REFUSED = 12401

# Extension header app-ids the reference peer knows (§3.4); any string is allowed on the wire.
APP_IDS = ("chat", "etri_data", "iot", "blockchain", "media")

LIVE: Final = BroadcastExt()
"""A live broadcast's extension (nothing set), the default: shared, so the codec's fast paths
recognise a plain BROADCAST_DATA by identity."""


class PeerAddress(msgspec.Struct, frozen=True):
    """A peer as named in SET_PRIMARY's ``parent-peer`` and SCAN_TREE's ``via`` lists."""

    peer_id: str
    address: str


class BuffermapEntry(msgspec.Struct):
    """Which sequences of one source a peer holds in its cache (CM FE).

    On the wire: ``{"SourcePeerId": id, "Sequence": [ints]}`` (Go field names, CamelCase).
    """

    source_peer_id: str
    sequences: list[int]


# --- requests ----------------------------------------------------------------------------------
class Hello(msgspec.Struct):
    """HELLO_PEER (1): a joiner asks an entry peer (and, relayed, its subtree) for volunteers."""

    REQ_CODE: ClassVar[int] = 1
    overlay_id: str
    peer_id: str
    address: str
    ticket_id: int
    conn_num: int = 3
    ttl: int = 3
    recovery: bool | None = None
    vertical_candidate: bool | None = None
    hp2p: HelloExt = HelloExt()


class Estab(msgspec.Struct):
    """ESTAB_PEER (2): a volunteer (an older peer) offers itself as a path to the joiner."""

    REQ_CODE: ClassVar[int] = 2
    overlay_id: str
    peer_id: str
    ticket_id: int
    allow_primary_req: bool = True
    hp2p: EstabExt = EstabExt()


class Probe(msgspec.Struct):
    """PROBE_PEER (3): RTT measurement. ``ntp_time`` is echoed verbatim by the responder."""

    REQ_CODE: ClassVar[int] = 3
    ntp_time: str


class SetPrimary(msgspec.Struct):
    """SET_PRIMARY (4): a child asks the chosen parent to make the path primary."""

    REQ_CODE: ClassVar[int] = 4
    buffermap: list[BuffermapEntry] | None = None
    hp2p: SetPrimaryExt = SetPrimaryExt()


class SetCandidate(msgspec.Struct):
    """SET_CANDIDATE (5): the path stays a candidate path (backup parent)."""

    REQ_CODE: ClassVar[int] = 5


class BroadcastData(msgspec.Struct):
    """BROADCAST_DATA (6): application data pushed along primary paths.

    ``source``/``sequence`` identify the message (``req-params.peer``); ``ext_header`` is the
    JSON extension header placed in front of ``data`` in the payload (``{"app-id": …}``).
    """

    REQ_CODE: ClassVar[int] = 6
    source: str
    sequence: int
    data: bytes
    ext_header: dict[str, Any] = msgspec.field(default_factory=lambda: {"app-id": "etri_data"})
    payload_type: str = "text/plain"
    ack: bool = False
    candidate_path: bool = False
    hp2p: BroadcastExt = LIVE

    @property
    def app_id(self) -> str | None:
        value = self.ext_header.get("app-id")
        return value if isinstance(value, str) else None


class Release(msgspec.Struct):
    """RELEASE_PEER (7): either side closes a path."""

    REQ_CODE: ClassVar[int] = 7
    ack: bool = False
    hp2p: ReleaseExt = ReleaseExt()


class Heartbeat(msgspec.Struct):
    """HEARTBEAT (8): keeps a path alive (PSP FE)."""

    REQ_CODE: ClassVar[int] = 8
    hp2p: HeartbeatExt = HeartbeatExt()


class ScanTree(msgspec.Struct):
    """SCAN_TREE (9): topology discovery along primary paths (§4.8).

    ``via`` is the reverse route ``[[peer-id, address], …]``; ``path`` the leaf-to-here list
    ``[[peer-id, ticket-as-string, address], …]``.
    """

    REQ_CODE: ClassVar[int] = 9
    cseq: int | str
    overlay_id: str
    peer_id: str
    address: str
    ticket_id: int
    via: list[list[str]] = msgspec.field(default_factory=list)
    path: list[list[str]] = msgspec.field(default_factory=list)


class Buffermap(msgspec.Struct):
    """BUFFERMAP (10): ask a peer which sequences it caches (DR FE)."""

    REQ_CODE: ClassVar[int] = 10
    overlay_id: str


class GetData(msgspec.Struct):
    """GET_DATA (11): pull one cached message. Flat on the wire, no ``req-params``."""

    REQ_CODE: ClassVar[int] = 11
    overlay_id: str
    source_id: str
    sequence: int


# --- responses ---------------------------------------------------------------------------------
class HelloResponse(msgspec.Struct):
    code: int = HELLO_ACCEPTED


class EstabResponse(msgspec.Struct):
    code: int = ESTAB_YES


class ProbeResponse(msgspec.Struct):
    ntp_time: str
    code: int = PROBE_OK


class SetPrimaryResponse(msgspec.Struct):
    code: int = PRIMARY_YES
    buffermap: list[BuffermapEntry] | None = None
    parent_peer: PeerAddress | None = None
    hp2p: SetPrimaryResponseExt = SetPrimaryResponseExt()


class SetCandidateResponse(msgspec.Struct):
    code: int = CANDIDATE_OK


class BroadcastDataResponse(msgspec.Struct):
    code: int = BROADCAST_OK


class ReleaseResponse(msgspec.Struct):
    code: int = RELEASE_OK


class HeartbeatResponse(msgspec.Struct):
    code: int = HEARTBEAT_OK


class ScanTreeResponse(msgspec.Struct):
    """9100 (non-leaf, relayed on) or 9200 (leaf: ``path`` is complete from the leaf)."""

    code: int
    cseq: int | str
    overlay_id: str
    peer_id: str
    address: str
    ticket_id: int
    via: list[list[str]] = msgspec.field(default_factory=list)
    path: list[list[str]] = msgspec.field(default_factory=list)


class BuffermapResponse(msgspec.Struct):
    overlay_id: str
    buffermap: list[BuffermapEntry]
    code: int = BUFFERMAP_OK


class GetDataResponse(msgspec.Struct):
    """11200 with the cached message as payload (extension header + data)."""

    source: str
    sequence: int
    data: bytes
    ext_header: dict[str, Any] = msgspec.field(default_factory=lambda: {"app-id": "etri_data"})
    payload_type: str = "text/plain"
    code: int = GET_DATA_OK
    hp2p: OriginExt = OriginExt()


class Auth(msgspec.Struct):
    """AUTH (hp2p, 12): admit a link on a membership credential and proof of key possession.

    The dialer sends step 1 (``credential``, ``nonce``); the responder answers 12200 with its
    own credential, nonce and proof; the dialer sends step 2 (``proof`` only), answered 12200.
    A refusal is 12401 with a ``reason``, and the connection is closed (docs/security.md).
    """

    REQ_CODE: ClassVar[int] = 12
    credential: str | None = None
    nonce: bytes | None = None
    proof: bytes | None = None


class AuthResponse(msgspec.Struct):
    code: int = AUTH_OK
    credential: str | None = None
    nonce: bytes | None = None
    proof: bytes | None = None
    reason: str | None = None


Request = (
    Auth
    | Hello
    | Estab
    | Probe
    | SetPrimary
    | SetCandidate
    | BroadcastData
    | Release
    | Heartbeat
    | ScanTree
    | Buffermap
    | GetData
)
Response = (
    AuthResponse
    | HelloResponse
    | EstabResponse
    | ProbeResponse
    | SetPrimaryResponse
    | SetCandidateResponse
    | BroadcastDataResponse
    | ReleaseResponse
    | HeartbeatResponse
    | ScanTreeResponse
    | BuffermapResponse
    | GetDataResponse
)
Message = Request | Response
