"""HOMP (reference point R1, Q.4103) message models in the HOMS-2023 dialect.

Both ends of R1 use these types: the HOMS decodes requests and encodes
responses, the peer's HOMS client does the opposite.  Keeping one set of
models means the two cannot drift apart, and the conformance recordings in
``shared/conformance`` pin the JSON names (the dialect mixes ``overlay-id``,
``admin_key`` and ``mN_Cache``; see ``docs/wire-homp.md``).

Design rules:

* Every decoder raises :class:`~hp2p.wire.errors.WireError` and nothing else,
  with the JSON path of the offending field, so that the HOMS can answer 400
  with a useful message instead of the reference's 500s.
* Requests are validated strictly (ranges, lengths, enums) because they come
  from untrusted peers; the reference validates none of this (its §9.3).
* Responses are validated structurally but with loose numeric bounds, because a
  peer talking to the reference HOMS must accept whatever it stored.
* Absent optional fields are omitted on encode (``omit_defaults``), which is
  how the reference answers (``app-id`` only when set, and so on).
* Semantic checks that need no server state are offered as
  ``validate_semantics()`` helpers; checks that need state (wrong key, unknown
  overlay) belong to the HOMS.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from hp2p.wire.errors import HeaderError, LimitExceeded, WireError

__all__ = [
    "MAX_BODY_BYTES",
    "AdminRemovalRequest",
    "AdminRemovalResponse",
    "CostMap",
    "CostMapData",
    "CostMapLink",
    "CostMapNode",
    "CrPolicy",
    "CreateAuth",
    "CreateOverlay",
    "CreateRequest",
    "CreateResponse",
    "CreateResponseOverlay",
    "InitDataResponse",
    "JoinOverlay",
    "JoinPeer",
    "JoinRequest",
    "JoinResponse",
    "JoinResponseOverlay",
    "JoinResponsePeer",
    "JoinStatus",
    "LeavePeer",
    "LeaveRequest",
    "ModifyAuth",
    "ModifyOverlay",
    "ModifyRequest",
    "ModifyResponse",
    "ModifyResponseAuth",
    "ModifyResponseOverlay",
    "OverlayAccess",
    "OverlayAccessAuth",
    "OverlayRef",
    "OverlayRefResponse",
    "Ownership",
    "PeerAuth",
    "PeerInfo",
    "QueryAuth",
    "QueryItem",
    "QueryOverlay",
    "QueryParams",
    "QueryStatus",
    "RefreshPeer",
    "RefreshRequest",
    "RefreshResponse",
    "RefreshResponseOverlay",
    "RefreshResponsePeer",
    "RemoveAuth",
    "RemoveOverlay",
    "RemoveRequest",
    "ReportCostmap",
    "ReportPeer",
    "ReportRequest",
    "ReportStatus",
    "WireError",
    "decode",
    "decode_admin_removal_request",
    "decode_create_request",
    "decode_join_request",
    "decode_leave_request",
    "decode_modify_request",
    "decode_query_response",
    "decode_refresh_request",
    "decode_remove_request",
    "decode_report_request",
    "encode",
    "nul_path",
    "peer_id_problem",
    "reject_nul",
]

# --------------------------------------------------------------------------
# Limits.  Named so that the HOMS, the docs and the tests agree on them.
# --------------------------------------------------------------------------

#: Largest HOMP body accepted by the decoders; larger bodies are refused
#: before parsing so a hostile client cannot make the HOMS parse megabytes.
MAX_BODY_BYTES: Final = 256 * 1024
MAX_ID_LEN: Final = 256
MAX_TITLE_LEN: Final = 256
MAX_DESCRIPTION_LEN: Final = 1024
MAX_KEY_LEN: Final = 256
MAX_ADDRESS_LEN: Final = 1024
MAX_HEARTBEAT_S: Final = 86_400
MAX_EXPIRES_S: Final = 31 * 86_400
MAX_PEERLIST: Final = 4096
MAX_COSTMAP_ENTRIES: Final = 1024
MAX_CACHE_ITEMS: Final = 10_000_000
MAX_CACHE_MINUTES: Final = 525_600  # one year
MAX_TICKET: Final = 2**53  # exact in JSON doubles, so every client reads the same number
#: The free-form ``capabilities`` object on join is stored by the HOMS, so
#: it is bounded both in encoded size and in nesting depth.
MAX_CAPABILITIES_BYTES: Final = 4096
MAX_CAPABILITIES_DEPTH: Final = 8

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)]


def peer_id_problem(peer_id: str) -> str | None:
    """Why ``peer_id`` cannot name a peer (None: it can); the HOMS and ``hp2p peer`` both ask.

    1 to :data:`MAX_ID_LEN` characters of UTF-8 text with no control character: a peer-id
    appears in logs, status pages and events, where a newline or an escape sequence would
    forge lines or rewrite a terminal.
    """
    if not 0 < len(peer_id) <= MAX_ID_LEN:
        return f"a peer-id must be 1 to {MAX_ID_LEN} characters, got {len(peer_id)}"
    try:
        peer_id.encode("utf-8")
    except UnicodeEncodeError:
        return f"a peer-id must be UTF-8 text, got {peer_id!r}"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in peer_id):
        return f"a peer-id may not contain control characters, got {peer_id!r}"
    return None


Title = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE_LEN)]
Description = Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_LEN)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LEN)]
Keyword = Annotated[str, msgspec.Meta(max_length=MAX_KEY_LEN)]
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ADDRESS_LEN)]
StatusText = Annotated[str, msgspec.Meta(max_length=MAX_ID_LEN)]
HeartbeatSeconds = Annotated[int, msgspec.Meta(ge=1, le=MAX_HEARTBEAT_S)]
ExpiresSeconds = Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPIRES_S)]
TicketId = Annotated[int, msgspec.Meta(ge=1, le=MAX_TICKET)]
#: ``ticket-id`` as a joiner sends it: the reference Go peer sends ``-1`` on every normal join
#: (it has no ticket yet), so any bounded integer decodes; only a recovery join must name a
#: real ticket (:meth:`JoinRequest.validate_recovery`).
JoinTicket = Annotated[int, msgspec.Meta(ge=-MAX_TICKET, le=MAX_TICKET)]
#: Responses come from a HOMS we may not control (the reference stores
#: whatever it was given), so numbers in responses are only required to be
#: non-negative.
Count = Annotated[int, msgspec.Meta(ge=0)]
CacheItems = Annotated[int, msgspec.Meta(ge=0, le=MAX_CACHE_ITEMS)]
CacheMinutes = Annotated[int, msgspec.Meta(ge=0, le=MAX_CACHE_MINUTES)]
PeerList = Annotated[list[Id], msgspec.Meta(max_length=MAX_PEERLIST)]
#: A SubMesh source's Ed25519 public key (hp2p extension ``source-key``): strict in requests,
#: so the HOMS stores only keys a peer can use; responses only bound its length.
SourceKey = Annotated[
    # the exact length keeps out the trailing newline `$` would let through
    str,
    msgspec.Meta(pattern=r"^ed25519:[0-9a-f]{64}$", min_length=72, max_length=72),
]
SourceKeyText = Annotated[str, msgspec.Meta(max_length=MAX_KEY_LEN)]
CostmapIds = Annotated[list[Id], msgspec.Meta(max_length=MAX_COSTMAP_ENTRIES)]

OverlayType = Literal["core", "sub"]
SubType = Literal["tree", "mesh"]
AuthType = Literal["open", "closed"]
AppId = Literal["IoT", "Streaming", "Blockchain"]
RecoveryBy = Literal["push", "pull"]
#: An overlay's security profile (hp2p extension ``security``, docs/security.md):
#: ``credentials`` (members need a HOMS-signed credential) or ``reference-compat`` (peers
#: without a key are admitted, as the reference peers need).
Security = Literal["credentials", "reference-compat"]
#: A membership credential token (:mod:`hp2p.trust.credential`); bounded like a ticket token.
CredentialToken = Annotated[str, msgspec.Meta(max_length=4096)]
#: The HOMS verification keys an overlay trusts: key id → ``ed25519:<hex>``.
HomsKeys = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], SourceKeyText], msgspec.Meta(max_length=16)
]


class _Model(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base for every HOMP object.

    Unknown keys are ignored rather than rejected: reference peers send
    fields from other amendments (``instance-id``) and hp2p peers send
    extensions that an older HOMS must be able to skip.
    """


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------


class CrPolicy(_Model):
    """``cr-policy``: cache and recovery policy of an overlay (Q.4103 Amd.1)."""

    mN_Cache: CacheItems  # noqa: N815 - wire name
    mD_Cache: CacheMinutes  # noqa: N815 - wire name
    recovery_by: RecoveryBy = msgspec.field(name="recovery-by")


class PeerAuth(_Model):
    """``peer.auth``: the peer's bearer secret chosen at join."""

    password: Key


class OverlayAccessAuth(_Model):
    """``overlay.auth`` on peer operations: the access key of a closed overlay."""

    access_key: Key | None = None


class OverlayAccess(_Model):
    """``overlay`` on refresh and leave: the id plus, for closed overlays, the key."""

    overlay_id: Id = msgspec.field(name="overlay-id")
    auth: OverlayAccessAuth | None = None


class OverlayRef(_Model):
    """``{"overlay-id": …}``, the smallest overlay object."""

    overlay_id: Id = msgspec.field(name="overlay-id")


class OverlayRefResponse(_Model):
    """``{"overlay":{"overlay-id"}}``: the answer to remove, leave and report.

    Also the body of the 407 the HOMS sends when a closed overlay refuses a
    join or refresh.
    """

    overlay: OverlayRef


# --------------------------------------------------------------------------
# HybridOverlayCreation: POST /homs
# --------------------------------------------------------------------------


class CreateAuth(_Model):
    """``overlay.auth`` at creation, echoed unchanged in the create response."""

    type: AuthType
    admin_key: Key
    access_key: Key | None = None
    peerlist: PeerList | None = None
    keyword: Keyword | None = None
    #: hp2p extension: the admin key of the CoreTree a sub-overlay hangs off, the owner's
    #: consent to feed it (without it anyone could attach a SubTree/SubMesh to any CoreTree
    #: and pose as part of it). Optional so that reference bodies parse; never echoed.
    parent_admin_key: Key | None = msgspec.field(default=None, name="parent-admin-key")


class CreateOverlay(_Model):
    """The overlay being created.

    ``parent-overlay-id``, ``source-peer-id``, ``source-key`` and
    ``delete-when-empty`` are hp2p extensions (reference HOMSs ignore them): a
    sub-overlay (SubTree or SubMesh, Q.4100) hangs off a parent overlay and has
    a single source peer, whose Ed25519 public key (``source-key``) SubMesh
    peers verify manifests with.
    """

    title: Title
    type: OverlayType
    sub_type: SubType = msgspec.field(name="sub-type")
    owner_id: Id = msgspec.field(name="owner-id")
    description: Description
    heartbeat_interval: HeartbeatSeconds = msgspec.field(name="heartbeat-interval")
    heartbeat_timeout: HeartbeatSeconds = msgspec.field(name="heartbeat-timeout")
    auth: CreateAuth
    overlay_id: Id | None = msgspec.field(default=None, name="overlay-id")
    app_id: AppId | None = msgspec.field(default=None, name="app-id")
    cr_policy: CrPolicy | None = msgspec.field(default=None, name="cr-policy")
    parent_overlay_id: Id | None = msgspec.field(default=None, name="parent-overlay-id")
    source_peer_id: Id | None = msgspec.field(default=None, name="source-peer-id")
    delete_when_empty: bool = msgspec.field(default=False, name="delete-when-empty")
    source_key: SourceKey | None = msgspec.field(default=None, name="source-key")
    #: hp2p extension: absent means the HOMS's ``--default-security``.
    security: Security | None = None


class CreateRequest(_Model):
    """``POST /homs`` body."""

    overlay: CreateOverlay

    def validate_semantics(self) -> None:
        """Checks that span several fields; raise :class:`HeaderError`.

        Kept out of decoding so that a HOMS can choose to be as lenient as the
        reference (which accepts ``timeout <= interval``, for example).
        """
        o = self.overlay
        if o.auth.type == "closed" and not (o.auth.access_key or o.auth.peerlist):
            raise HeaderError(
                "a closed overlay needs an `access_key` or a non-empty `peerlist`",
                "$.overlay.auth",
            )
        if o.type == "core" and o.sub_type != "tree":
            raise HeaderError("a core overlay must have sub-type `tree`", "$.overlay.sub-type")
        if o.type == "core" and (o.parent_overlay_id or o.source_peer_id or o.source_key):
            raise HeaderError(
                "`parent-overlay-id`/`source-peer-id`/`source-key` are only for sub-overlays",
                "$.overlay.type",
            )
        if o.type == "sub" and o.parent_overlay_id is None:
            raise HeaderError(
                "a sub-overlay needs `parent-overlay-id`", "$.overlay.parent-overlay-id"
            )
        if o.type == "sub" and o.source_peer_id is None:
            raise HeaderError("a sub-overlay needs `source-peer-id`", "$.overlay.source-peer-id")
        if o.heartbeat_timeout <= o.heartbeat_interval:
            raise HeaderError(
                "`heartbeat-timeout` must be greater than `heartbeat-interval`",
                "$.overlay.heartbeat-timeout",
            )


class CreateResponseOverlay(_Model):
    """The created overlay as the reference echoes it (no title, no description)."""

    overlay_id: Id = msgspec.field(name="overlay-id")
    type: OverlayType
    sub_type: SubType = msgspec.field(name="sub-type")
    owner_id: Id = msgspec.field(name="owner-id")
    heartbeat_interval: Count = msgspec.field(name="heartbeat-interval")
    heartbeat_timeout: Count = msgspec.field(name="heartbeat-timeout")
    auth: CreateAuth
    app_id: AppId | None = msgspec.field(default=None, name="app-id")
    cr_policy: CrPolicy | None = msgspec.field(default=None, name="cr-policy")
    parent_overlay_id: Id | None = msgspec.field(default=None, name="parent-overlay-id")
    source_peer_id: Id | None = msgspec.field(default=None, name="source-peer-id")
    delete_when_empty: bool = msgspec.field(default=False, name="delete-when-empty")
    source_key: SourceKeyText | None = msgspec.field(default=None, name="source-key")
    security: Security | None = None


class CreateResponse(_Model):
    """``POST /homs`` 200 body."""

    overlay: CreateResponseOverlay


# --------------------------------------------------------------------------
# HybridOverlayQuery: GET /homs
# --------------------------------------------------------------------------


class QueryParams(_Model):
    """``GET /homs`` query parameters.

    Only one filter applies, in the precedence ``overlay-id`` > ``title`` >
    ``description``; ``app-id`` + ``peer-id`` is accepted and ignored, as in the
    reference.
    """

    overlay_id: Id | None = msgspec.field(default=None, name="overlay-id")
    title: Title | None = None
    description: Description | None = None
    app_id: AppId | None = msgspec.field(default=None, name="app-id")
    peer_id: Id | None = msgspec.field(default=None, name="peer-id")

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> QueryParams:
        """Validate a parsed query string; unknown parameters are ignored."""
        for name, value in query.items():
            if "\x00" in value or "\x00" in name:
                raise HeaderError(
                    "text may not contain the NUL character (\\u0000)",
                    f"?{name.replace(chr(0), '?')}",
                )
        try:
            return msgspec.convert(dict(query), type=cls, str_keys=True)
        except msgspec.ValidationError as exc:
            raise _validation_error(exc) from None

    def active_filter(self) -> tuple[Literal["overlay-id", "title", "description"], str] | None:
        """The single filter the HOMS applies, or ``None`` for "all overlays"."""
        if self.overlay_id is not None:
            return ("overlay-id", self.overlay_id)
        if self.title is not None:
            return ("title", self.title)
        if self.description is not None:
            return ("description", self.description)
        return None


class QueryStatus(_Model):
    """``overlay.status`` in query results."""

    num_peers: Count
    status: StatusText


class QueryAuth(_Model):
    """``overlay.auth`` in query results: only the type, never a key."""

    type: AuthType


class QueryOverlay(_Model):
    """One overlay in a query result."""

    overlay_id: Id = msgspec.field(name="overlay-id")
    title: Title
    type: OverlayType
    sub_type: SubType = msgspec.field(name="sub-type")
    owner_id: Id = msgspec.field(name="owner-id")
    status: QueryStatus
    description: Description
    auth: QueryAuth
    app_id: AppId | None = msgspec.field(default=None, name="app-id")
    cr_policy: CrPolicy | None = msgspec.field(default=None, name="cr-policy")
    parent_overlay_id: Id | None = msgspec.field(default=None, name="parent-overlay-id")
    source_peer_id: Id | None = msgspec.field(default=None, name="source-peer-id")
    source_key: SourceKeyText | None = msgspec.field(default=None, name="source-key")
    security: Security | None = None


class QueryItem(_Model):
    """One element of the ``GET /homs`` JSON array."""

    overlay: QueryOverlay


# --------------------------------------------------------------------------
# HybridOverlayModification: PUT /homs
# --------------------------------------------------------------------------


class ModifyAuth(_Model):
    """``overlay.auth`` on modify: the admin key, and optionally new admission data."""

    admin_key: Key
    access_key: Key | None = None
    peerlist: PeerList | None = None


class ModifyOverlay(_Model):
    """The overlay being modified; ``title``/``description`` only when changed.

    ``source-key`` (hp2p extension) lets the owner set or replace a sub-overlay's source key,
    e.g. after the source lost its key file.
    """

    overlay_id: Id = msgspec.field(name="overlay-id")
    owner_id: Id = msgspec.field(name="owner-id")
    auth: ModifyAuth
    title: Title | None = None
    description: Description | None = None
    source_key: SourceKey | None = msgspec.field(default=None, name="source-key")


class Ownership(_Model):
    """``ownership``: transfer the overlay and/or rotate the admin key.

    Note the hyphenated ``admin-key`` here versus ``admin_key`` in ``auth``:
    that is how the reference spells it.
    """

    owner_id: Id | None = msgspec.field(default=None, name="owner-id")
    admin_key: Key | None = msgspec.field(default=None, name="admin-key")

    def __post_init__(self) -> None:
        # An empty object is an error in the reference (400) and would be a
        # silent no-op otherwise.
        if self.owner_id is None and self.admin_key is None:
            raise ValueError("`ownership` must carry `owner-id` or `admin-key`")


class ModifyRequest(_Model):
    """``PUT /homs`` body."""

    overlay: ModifyOverlay
    ownership: Ownership | None = None


class ModifyResponseAuth(_Model):
    """``auth`` in the modify response: only the admission data that was replaced."""

    access_key: Key | None = None
    peerlist: PeerList | None = None


class ModifyResponseOverlay(_Model, kw_only=True):
    """``overlay`` in the modify response: ``owner-id`` is the new one after a transfer."""

    overlay_id: Id = msgspec.field(name="overlay-id")
    title: Title | None = None
    owner_id: Id = msgspec.field(name="owner-id")
    description: Description | None = None
    auth: ModifyResponseAuth | None = None
    source_key: SourceKeyText | None = msgspec.field(default=None, name="source-key")


class ModifyResponse(_Model):
    """``PUT /homs`` 200 body."""

    overlay: ModifyResponseOverlay


# --------------------------------------------------------------------------
# HybridOverlayRemoval: DELETE /homs, and the admin POST /api/HybridOverlayRemoval
# --------------------------------------------------------------------------


class RemoveAuth(_Model):
    """``overlay.auth`` on remove."""

    admin_key: Key


class RemoveOverlay(_Model):
    """The overlay being removed, with the owner's credentials."""

    overlay_id: Id = msgspec.field(name="overlay-id")
    owner_id: Id = msgspec.field(name="owner-id")
    auth: RemoveAuth


class RemoveRequest(_Model):
    """``DELETE /homs`` body; the answer is an :class:`OverlayRefResponse`."""

    overlay: RemoveOverlay


class AdminRemovalRequest(_Model):
    """``POST /api/HybridOverlayRemoval`` body (flat, no credentials in the reference)."""

    overlay_id: Id = msgspec.field(name="overlay-id")


class AdminRemovalResponse(_Model):
    """``POST /api/HybridOverlayRemoval`` 200 body."""

    overlay_id: Id = msgspec.field(name="overlay-id")


# --------------------------------------------------------------------------
# HybridOverlayJoin: POST /peer[?recovery=true]
# --------------------------------------------------------------------------


class JoinOverlay(_Model):
    """``overlay`` on join.

    ``source-key`` (hp2p extension) is sent only by a sub-overlay's source peer: its public
    key, which the HOMS records if none is recorded yet (and refuses the join if another is).
    """

    overlay_id: Id = msgspec.field(name="overlay-id")
    type: OverlayType
    sub_type: SubType = msgspec.field(name="sub-type")
    auth: OverlayAccessAuth | None = None
    source_key: SourceKey | None = msgspec.field(default=None, name="source-key")


def json_depth_within(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` (bounded walk)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


class JoinPeer(_Model):
    """``peer`` on join.

    ``ticket-id`` is only meaningful for a recovery join (a normal join's, such as the
    reference Go peer's ``-1``, is ignored: the HOMS issues the ticket).  ``capabilities`` is
    an hp2p extension: a small free JSON object (e.g. bandwidth, NAT type,
    preferred parents) that the HOMS keeps in its peer information registry.
    """

    peer_id: Id = msgspec.field(name="peer-id")
    address: Address
    auth: PeerAuth
    expires: ExpiresSeconds | None = None
    ticket_id: JoinTicket | None = msgspec.field(default=None, name="ticket-id")
    capabilities: dict[str, Any] | None = None
    #: hp2p extension: the key the membership credential binds (docs/security.md).
    public_key: SourceKey | None = msgspec.field(default=None, name="public-key")

    def __post_init__(self) -> None:
        problem = peer_id_problem(self.peer_id)
        if problem is not None:
            raise _field_problem("peer-id", problem)
        caps = self.capabilities
        if caps is None:
            return
        if not json_depth_within(caps, MAX_CAPABILITIES_DEPTH):
            raise ValueError(f"`capabilities` nests deeper than {MAX_CAPABILITIES_DEPTH} levels")
        if len(msgspec.json.encode(caps)) > MAX_CAPABILITIES_BYTES:
            raise ValueError(f"`capabilities` is larger than {MAX_CAPABILITIES_BYTES} bytes")


class JoinRequest(_Model):
    """``POST /peer`` body (normal and recovery join)."""

    overlay: JoinOverlay
    peer: JoinPeer

    def validate_semantics(self) -> None:
        """A core overlay is always a CoreTree, so a core ``mesh`` join is refused.

        The reference answers it with a 500 *and* leaves a ghost peer behind.
        """
        if self.overlay.type == "core" and self.overlay.sub_type != "tree":
            raise HeaderError("a core overlay has sub-type `tree`", "$.overlay.sub-type")

    def validate_recovery(self) -> None:
        """A recovery join (``?recovery=true``) must name the ticket it recovers (≥ 1)."""
        ticket = self.peer.ticket_id
        if ticket is None:
            raise HeaderError("a recovery join needs `ticket-id`", "$.peer.ticket-id")
        if ticket < 1:
            raise HeaderError(
                f"a recovery join needs the ticket it recovers (≥ 1), not {ticket}",
                "$.peer.ticket-id",
            )


class PeerInfo(_Model):
    """One entry of ``peer_info_list``: a peer to contact first (an entry point)."""

    peer_id: Id = msgspec.field(name="peer-id")
    address: Address


class JoinStatus(_Model):
    """``overlay.status`` in the join response."""

    peer_info_list: list[PeerInfo]


class JoinResponseOverlay(_Model):
    """``overlay`` in the join response."""

    overlay_id: Id = msgspec.field(name="overlay-id")
    type: OverlayType
    sub_type: SubType = msgspec.field(name="sub-type")
    status: JoinStatus
    heartbeat_interval: Count = msgspec.field(name="heartbeat-interval")
    heartbeat_timeout: Count = msgspec.field(name="heartbeat-timeout")
    app_id: AppId | None = msgspec.field(default=None, name="app-id")
    cr_policy: CrPolicy | None = msgspec.field(default=None, name="cr-policy")
    parent_overlay_id: Id | None = msgspec.field(default=None, name="parent-overlay-id")
    source_peer_id: Id | None = msgspec.field(default=None, name="source-peer-id")
    source_key: SourceKeyText | None = msgspec.field(default=None, name="source-key")
    #: hp2p extension: the HOMS keys that sign this overlay's credentials (with the credential).
    homs_keys: HomsKeys | None = msgspec.field(default=None, name="homs-keys")


class JoinResponsePeer(_Model):
    """``peer`` in the join response.

    ``ticket-token`` is reserved for an hp2p signed ticket that lets other
    peers check the ticket-id without asking the HOMS; absent by default.
    """

    peer_id: Id = msgspec.field(name="peer-id")
    ticket_id: Count = msgspec.field(name="ticket-id")
    expires: Count
    ticket_token: Annotated[str, msgspec.Meta(max_length=4096)] | None = msgspec.field(
        default=None, name="ticket-token"
    )
    #: hp2p extension: the membership credential issued for ``public-key``.
    credential: CredentialToken | None = None


class JoinResponse(_Model):
    """``POST /peer`` 202 (tree) / 200 body."""

    overlay: JoinResponseOverlay
    peer: JoinResponsePeer


# --------------------------------------------------------------------------
# HybridOverlayRefresh: PUT /peer
# --------------------------------------------------------------------------


class RefreshPeer(_Model):
    """``peer`` on refresh; ``expires`` defaults to the stored value."""

    peer_id: Id = msgspec.field(name="peer-id")
    address: Address
    auth: PeerAuth
    expires: ExpiresSeconds | None = None


class RefreshRequest(_Model):
    """``PUT /peer`` body."""

    overlay: OverlayAccess
    peer: RefreshPeer


class RefreshResponsePeer(_Model):
    """``peer`` in the refresh response; ``credential``: the renewed one (hp2p extension)."""

    peer_id: Id = msgspec.field(name="peer-id")
    expires: Count
    credential: CredentialToken | None = None


class RefreshResponseOverlay(_Model):
    """``overlay`` in the refresh response: the id, and the HOMS keys with a credential."""

    overlay_id: Id = msgspec.field(name="overlay-id")
    homs_keys: HomsKeys | None = msgspec.field(default=None, name="homs-keys")


class RefreshResponse(_Model):
    """``PUT /peer`` 200 body."""

    overlay: RefreshResponseOverlay
    peer: RefreshResponsePeer


# --------------------------------------------------------------------------
# HybridOverlayLeave: DELETE /peer
# --------------------------------------------------------------------------


class LeavePeer(_Model):
    """``peer`` on leave and report."""

    peer_id: Id = msgspec.field(name="peer-id")
    auth: PeerAuth


class LeaveRequest(_Model):
    """``DELETE /peer`` body; the answer is an :class:`OverlayRefResponse`."""

    overlay: OverlayAccess
    peer: LeavePeer


# --------------------------------------------------------------------------
# HybridOverlayReport: POST /peer/report
# --------------------------------------------------------------------------

ReportPeer = LeavePeer


class ReportCostmap(_Model):
    """The peer's connection table: primary paths and candidate paths."""

    primary: CostmapIds
    outgoing_candidate: CostmapIds
    incoming_candidate: CostmapIds


class ReportStatus(_Model):
    """``status``: connection counts plus the cost map."""

    num_primary: Count
    num_out_candidate: Count
    num_in_candidate: Count
    costmap: ReportCostmap


class ReportRequest(_Model):
    """``POST /peer/report`` body; the answer is an :class:`OverlayRefResponse`."""

    overlay: OverlayRef
    peer: ReportPeer
    status: ReportStatus


# --------------------------------------------------------------------------
# Web-UI endpoints: GET /api/InitData, GET /api/OverlayCostMap
# --------------------------------------------------------------------------


class InitDataResponse(_Model):
    """``GET /api/InitData``: where the monitor UI finds the WebSocket."""

    WEB_SOCKET_PORT: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class CostMapNode(_Model):
    """A peer in the cost-map graph; ``seeder`` marks ticket 1 (omitted when false)."""

    id: Id
    ticket_id: Count
    seeder: bool = False


class CostMapLink(_Model):
    """An edge of the cost-map graph: a primary path or a candidate path."""

    source: Id
    target: Id
    primary: bool


class CostMapData(_Model):
    """The node-link graph layout the ETRI monitor UI draws."""

    graph: list[Any]
    nodes: list[CostMapNode]
    links: list[CostMapLink]
    directed: bool
    multigraph: bool


class CostMap(_Model, kw_only=True, omit_defaults=False):
    """``GET /api/OverlayCostMap`` body, also pushed as WebSocket ``current_cost_map``.

    ``type`` and ``action`` are constants that the monitor UI keys on; they
    default for convenience and, unlike other defaults, are always encoded.
    """

    overlay_id: Id
    type: Literal["peer"] = "peer"
    action: Literal["current_cost_map"] = "current_cost_map"
    data: CostMapData


# --------------------------------------------------------------------------
# Encoding and decoding
# --------------------------------------------------------------------------

T = TypeVar("T")

_ENCODER: Final = msgspec.json.Encoder()
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def encode(obj: msgspec.Struct | list[Any]) -> bytes:
    """Serialise a model (or a list of models, for query results) to JSON bytes."""
    return _ENCODER.encode(obj)


#: ``__post_init__`` checks name the field they refuse as "`name`: reason", so that the error
#: points at the field (``$.peer.peer-id``) rather than at the object holding it.
_FIELD_SEP = ": "


def _field_problem(name: str, reason: str) -> ValueError:
    return ValueError(f"`{name}`{_FIELD_SEP}{reason}")


def _validation_error(exc: msgspec.ValidationError) -> HeaderError:
    """Turn msgspec's ``"<reason> - at `$.path`"`` into a :class:`HeaderError`."""
    text = str(exc)
    reason, sep, where = text.rpartition(" - at `")
    if sep:
        path = where.rstrip("`")
    else:  # msgspec omits the location for errors at the root
        reason, path = text, "$"
    prefix = "Object missing required field `"
    if reason.startswith(prefix):
        name = reason[len(prefix) :].rstrip("`")
        return HeaderError("missing required field", f"{path}.{name}")
    field, sep, rest = reason.partition(_FIELD_SEP)
    if sep and field.startswith("`") and field.endswith("`"):  # a struct's check of one field
        return HeaderError(_tidy(rest), f"{path}.{field.strip('`')}")
    return HeaderError(_tidy(reason), path)


def _tidy(reason: str) -> str:
    """Lower-case msgspec's leading capital unless it starts an acronym (``JSON``)."""
    if not reason:
        return "invalid value"
    if len(reason) > 1 and reason[1].isupper():
        return reason
    return reason[0].lower() + reason[1:]


def decode(body: bytes | str, type_: type[T]) -> T:
    """Decode a HOMP JSON body into ``type_``; raise :class:`WireError` only.

    The HTTP layer should pass the raw body; an empty body is an error (the
    reference answers 500 to it, hp2p answers 400).
    """
    if len(body) > MAX_BODY_BYTES:
        raise LimitExceeded(f"body larger than {MAX_BODY_BYTES} bytes", "body")
    if not body:
        raise HeaderError("empty body, a JSON object is required", "body")
    decoder = _DECODERS.get(type_)
    if decoder is None:
        decoder = _DECODERS.setdefault(type_, msgspec.json.Decoder(type_))
    try:
        result: T = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise HeaderError(f"invalid JSON: {_tidy(str(exc))}", "body") from None
    except RecursionError:
        raise LimitExceeded("JSON nested too deeply", "body") from None
    except (UnicodeDecodeError, ValueError, TypeError) as exc:  # defensive: never leak
        raise HeaderError(f"invalid body: {exc}", "body") from None
    # JSON can only carry NUL escaped, so bodies without ``\u0000`` skip the walk.
    escaped = b"\\u0000" in body if isinstance(body, bytes) else "\\u0000" in body
    if escaped:
        reject_nul(result)
    return result


def nul_path(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first string (value or key) holding a NUL character, else None.

    PostgreSQL cannot store NUL in text (the reference and an unchecked HOMS answer 500);
    SQLite stores it but C clients cut the string there. So no HOMP text may hold one.
    """
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, msgspec.Struct):
        for info in msgspec.structs.fields(value):
            found = nul_path(getattr(value, info.name), f"{path}.{info.encode_name}")
            if found is not None:
                return found
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{path}.{key.replace(chr(0), '?')}"
            found = nul_path(item, f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def reject_nul(value: Any) -> None:
    """Raise :class:`HeaderError` naming the field if any text in ``value`` holds NUL."""
    where = nul_path(value)
    if where is not None:
        raise HeaderError("text may not contain the NUL character (\\u0000)", where)


def decode_create_request(body: bytes | str) -> CreateRequest:
    """``POST /homs``."""
    return decode(body, CreateRequest)


def decode_modify_request(body: bytes | str) -> ModifyRequest:
    """``PUT /homs``."""
    return decode(body, ModifyRequest)


def decode_remove_request(body: bytes | str) -> RemoveRequest:
    """``DELETE /homs``."""
    return decode(body, RemoveRequest)


def decode_admin_removal_request(body: bytes | str) -> AdminRemovalRequest:
    """``POST /api/HybridOverlayRemoval``."""
    return decode(body, AdminRemovalRequest)


def decode_join_request(body: bytes | str) -> JoinRequest:
    """``POST /peer`` (call :meth:`JoinRequest.validate_recovery` for ``?recovery=true``)."""
    return decode(body, JoinRequest)


def decode_refresh_request(body: bytes | str) -> RefreshRequest:
    """``PUT /peer``."""
    return decode(body, RefreshRequest)


def decode_leave_request(body: bytes | str) -> LeaveRequest:
    """``DELETE /peer``."""
    return decode(body, LeaveRequest)


def decode_report_request(body: bytes | str) -> ReportRequest:
    """``POST /peer/report``."""
    return decode(body, ReportRequest)


def decode_query_response(body: bytes | str) -> list[QueryItem]:
    """``GET /homs`` answer, for the peer's HOMS client."""
    return decode(body, list[QueryItem])
