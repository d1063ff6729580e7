"""The HOMS WebSocket channel (etri-2023-protocol.md §2.8): signalling and monitoring.

One socket type carries two roles, and the reference tells them apart by the
keys present, not by a message type.  :func:`decode_client_message` applies
the same rules, in the same order, so that an hp2p HOMS classifies every
message exactly as a reference peer or the ETRI web UI expects:

1. a ``server`` key: a monitor (web UI) request, ``hello`` or ``get``;
2. a ``peer-id`` key: a peer ``hello``, ``prove`` (hp2p: the answer to the
   HOMS's credential challenge) or ``bye`` (anything else is refused, and in
   particular never relayed);
3. a ``toid`` key: a relayed SDP/ICE message, forwarded re-serialised but
   otherwise untouched (unknown keys included);
4. anything else: :class:`~hp2p.wire.errors.WireError`.

The pushed monitor events have fixed shapes that the ETRI UI keys on; they are
modelled as structs whose constant ``type``/``action`` fields are always
encoded.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from hp2p.wire.errors import HeaderError, LimitExceeded, WireError
from hp2p.wire.homp import (
    MAX_ID_LEN,
    MAX_KEY_LEN,
    CostMap,
    CostMapData,
    CostMapLink,
    CostMapNode,
    json_depth_within,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_RELAY_DEPTH",
    "AddPeerEvent",
    "ClientMessage",
    "CostMap",
    "CostMapData",
    "CostMapLink",
    "CostMapNode",
    "DeletePeerEvent",
    "LogEvent",
    "MonitorEvent",
    "MonitorGet",
    "MonitorHello",
    "NodeInfo",
    "OverlayEvent",
    "PeerBye",
    "PeerHello",
    "PeerProve",
    "Relay",
    "SessionDescription",
    "UpdateConnectionEvent",
    "WireError",
    "decode_client_message",
    "decode_event",
    "encode_client_message",
    "encode_event",
]

#: Largest WebSocket text message accepted.  An SDP offer is a few KiB; 64 KiB
#: leaves room while keeping a hostile sender from making the HOMS buffer
#: megabytes per relay.
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Relayed messages are kept as free JSON; this bounds their nesting so that
#: re-serialising them can never recurse deeply.
MAX_RELAY_DEPTH: Final = 16
MAX_TOKEN_LEN: Final = 4096
MAX_LOG_LEN: Final = 16 * 1024

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LEN)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LEN)]
ServerName = Annotated[str, msgspec.Meta(max_length=MAX_ID_LEN)]


# --------------------------------------------------------------------------
# Client -> HOMS
# --------------------------------------------------------------------------


class PeerHello(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="action", tag="hello"):
    """``{"action":"hello","peer-id":…}``: register this socket under the peer id.

    ``overlay-id`` and ``password``/``token`` are hp2p extensions a HOMS can
    use to authenticate the socket (the peer's HOMP password, or a signed
    token); reference peers send neither and the HOMS profile decides whether
    to accept that.
    """

    peer_id: Id = msgspec.field(name="peer-id")
    overlay_id: Id | None = msgspec.field(default=None, name="overlay-id")
    password: Key | None = None
    token: Token | None = None
    #: hp2p extension: the peer's membership credential for ``overlay-id``; the HOMS answers
    #: ``{"action":"challenge","peer-id","nonce"}`` and the peer signs it (:class:`PeerProve`).
    credential: Token | None = None


class PeerProve(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="action", tag="prove"):
    """``{"action":"prove","peer-id":…,"proof":hex}``: the signed challenge (hp2p extension).

    ``proof`` is the Ed25519 signature (128 hex digits) of :func:`hp2p.trust.hello.transcript`
    by the credential's key.
    """

    peer_id: Id = msgspec.field(name="peer-id")
    proof: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{128}$", min_length=128, max_length=128)]


class PeerBye(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="action", tag="bye"):
    """``{"action":"bye","peer-id":…}``: unregister the peer id."""

    peer_id: Id = msgspec.field(name="peer-id")


class MonitorHello(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="action", tag="hello"
):
    """``{"server":…,"action":"hello"}``: subscribe to the monitor broadcast.

    ``token`` (the HOMS's operator token: every overlay) or ``overlay_id`` + ``admin_key``
    (that overlay only) are hp2p extensions: a ``secure`` HOMS requires one of them (monitors
    see every peer's address and links); the reference web UI sends neither.
    """

    server: ServerName
    token: Token | None = None
    overlay_id: Id | None = None
    admin_key: Key | None = None


class MonitorGet(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="action", tag="get"):
    """``{"server":…,"action":"get","overlay_id":…}``: ask for the current cost map.

    The same optional credentials as :class:`MonitorHello` (a socket that already presented
    them in its hello need not repeat them).
    """

    server: ServerName
    overlay_id: Id
    token: Token | None = None
    admin_key: Key | None = None


class SessionDescription(msgspec.Struct, kw_only=True):
    """The inner ``sdp`` object of an offer/answer relay (the WebRTC shape)."""

    type: Literal["offer", "answer", "pranswer", "rollback"]
    sdp: Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_BYTES)]


class Relay(msgspec.Struct, kw_only=True, frozen=True):
    """A peer-to-peer message the HOMS forwards to the socket registered as ``toid``.

    ``message`` is the decoded JSON object exactly as received, so unknown keys
    survive the relay; ``toid``/``fromid``/``kind`` are typed views of it.
    """

    toid: str
    fromid: str | None
    kind: str | None
    message: dict[str, Any]

    def to_bytes(self) -> bytes:
        """The forwarded form: the received object, re-serialised."""
        return msgspec.json.encode(self.message)

    def session_description(self) -> SessionDescription | None:
        """The ``sdp`` object of an offer/answer, or ``None`` if there is none.

        Raises :class:`WireError` when an ``sdp`` key is present but malformed.
        """
        raw = self.message.get("sdp")
        if raw is None:
            return None
        try:
            return msgspec.convert(raw, type=SessionDescription)
        except msgspec.ValidationError as exc:
            raise _validation_error(exc, "$.sdp") from None

    @classmethod
    def sdp(
        cls,
        *,
        fromid: str,
        toid: str,
        description: SessionDescription,
        fromticketid: str = "",
    ) -> Relay:
        """An offer/answer in the GO-2023 shape (``fromticketid`` is always ``""`` there)."""
        message: dict[str, Any] = {
            "fromid": fromid,
            "toid": toid,
            "fromticketid": fromticketid,
            "type": description.type,
            "sdp": {"type": description.type, "sdp": description.sdp},
        }
        return cls(toid=toid, fromid=fromid, kind=description.type, message=message)

    @classmethod
    def candidate(cls, *, fromid: str, toid: str, candidate: str) -> Relay:
        """A trickled ICE candidate in the GO-2023 shape (the string only, no mid)."""
        message: dict[str, Any] = {
            "fromid": fromid,
            "toid": toid,
            "type": "candidate",
            "candidate": candidate,
        }
        return cls(toid=toid, fromid=fromid, kind="candidate", message=message)


ClientMessage = PeerHello | PeerProve | PeerBye | Relay | MonitorHello | MonitorGet

_PEER_TYPES: Final = {"hello": PeerHello, "prove": PeerProve, "bye": PeerBye}
_MONITOR_TYPES: Final = {"hello": MonitorHello, "get": MonitorGet}
_OBJECT_DECODER: Final = msgspec.json.Decoder(dict[str, Any])
_ENCODER: Final = msgspec.json.Encoder()


def _validation_error(exc: msgspec.ValidationError, root: str = "$") -> HeaderError:
    text = str(exc)
    reason, sep, where = text.rpartition(" - at `")
    if sep:
        path = root + where.rstrip("`")[1:]
    else:
        reason, path = text, root
    prefix = "Object missing required field `"
    if reason.startswith(prefix):
        return HeaderError("missing required field", f"{path}.{reason[len(prefix) :].rstrip('`')}")
    return HeaderError(reason[:1].lower() + reason[1:], path)


def _decode_object(raw: bytes | str) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise LimitExceeded(f"message larger than {MAX_MESSAGE_BYTES} bytes", "message")
    try:
        obj: dict[str, Any] = _OBJECT_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise HeaderError(f"invalid JSON: {exc}", "message") from None
    except RecursionError:
        raise LimitExceeded("JSON nested too deeply", "message") from None
    except UnicodeDecodeError as exc:  # msgspec decodes object keys lazily
        raise HeaderError(f"invalid UTF-8: {exc.reason}", "message") from None
    return obj


def _convert(obj: dict[str, Any], type_: type[Any]) -> Any:
    try:
        return msgspec.convert(obj, type=type_)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc) from None


def decode_client_message(raw: bytes | str) -> ClientMessage:
    """Classify and validate one message a client sent on the HOMS WebSocket.

    Raises :class:`WireError` (and nothing else) for anything the reference
    would ignore: non-JSON, non-objects, unknown actions, a ``peer-id``
    message that is neither hello nor bye, a message with no routing key.
    """
    obj = _decode_object(raw)
    action = obj.get("action")
    if "server" in obj:
        monitor_type = _MONITOR_TYPES.get(action) if isinstance(action, str) else None
        if monitor_type is None:
            raise HeaderError(f"unknown monitor action {action!r}", "$.action")
        result: ClientMessage = _convert(obj, monitor_type)
        return result
    if "peer-id" in obj:
        peer_type = _PEER_TYPES.get(action) if isinstance(action, str) else None
        if peer_type is None:
            raise HeaderError(
                f"a message with `peer-id` must be action hello, prove or bye, not {action!r}",
                "$.action",
            )
        result = _convert(obj, peer_type)
        return result
    if "toid" in obj:
        return _relay(obj)
    raise HeaderError("no `server`, `peer-id` or `toid` key: cannot route the message", "$")


def _relay(obj: dict[str, Any]) -> Relay:
    toid, fromid, kind = obj["toid"], obj.get("fromid"), obj.get("type")
    if not isinstance(toid, str) or not 0 < len(toid) <= MAX_ID_LEN:
        raise HeaderError(f"`toid` must be a string of 1..{MAX_ID_LEN} characters", "$.toid")
    if fromid is not None and not (isinstance(fromid, str) and len(fromid) <= MAX_ID_LEN):
        raise HeaderError(
            f"`fromid` must be a string of at most {MAX_ID_LEN} characters", "$.fromid"
        )
    if kind is not None and not (isinstance(kind, str) and len(kind) <= MAX_ID_LEN):
        raise HeaderError(f"`type` must be a string of at most {MAX_ID_LEN} characters", "$.type")
    if not json_depth_within(obj, MAX_RELAY_DEPTH):
        raise LimitExceeded(f"relayed message nests deeper than {MAX_RELAY_DEPTH}", "$")
    return Relay(toid=toid, fromid=fromid, kind=kind, message=obj)


def encode_client_message(msg: ClientMessage) -> bytes:
    """Serialise a client message (what a peer or a monitor UI sends)."""
    if isinstance(msg, Relay):
        return msg.to_bytes()
    return _ENCODER.encode(msg)


# --------------------------------------------------------------------------
# HOMS -> monitor (pushed events)
# --------------------------------------------------------------------------


class NodeInfo(msgspec.Struct, kw_only=True):
    """``node`` of ``add_peer``: the peer and its ticket."""

    id: Id
    ticket_id: Annotated[int, msgspec.Meta(ge=0)]


class OverlayEvent(msgspec.Struct, kw_only=True):
    """``{overlay_id, type:"overlay", action:"create"|"remove"}``."""

    overlay_id: Id
    type: Literal["overlay"] = "overlay"
    action: Literal["create", "remove"]


class AddPeerEvent(msgspec.Struct, kw_only=True):
    """``add_peer``: a peer joined and got a ticket."""

    overlay_id: Id
    type: Literal["peer"] = "peer"
    action: Literal["add_peer"] = "add_peer"
    node: NodeInfo


class DeletePeerEvent(msgspec.Struct, kw_only=True):
    """``delete_peer``: a peer left or expired."""

    overlay_id: Id
    peer_id: Id
    type: Literal["peer"] = "peer"
    action: Literal["delete_peer"] = "delete_peer"


class UpdateConnectionEvent(msgspec.Struct, kw_only=True):
    """``update_connection``: a peer reported a changed connection table."""

    overlay_id: Id
    peer_id: Id
    type: Literal["peer"] = "peer"
    action: Literal["update_connection"] = "update_connection"
    links: list[CostMapLink]


class LogEvent(msgspec.Struct, kw_only=True):
    """``type:"log"``: a human-readable line for the monitor UI (no ``action``)."""

    overlay_id: Id
    peer_id: Id
    type: Literal["log"] = "log"
    message: Annotated[str, msgspec.Meta(max_length=MAX_LOG_LEN)]


MonitorEvent = (
    OverlayEvent | AddPeerEvent | DeletePeerEvent | UpdateConnectionEvent | LogEvent | CostMap
)

_EVENT_TYPES: Final[dict[tuple[Any, Any], type[Any]]] = {
    ("overlay", "create"): OverlayEvent,
    ("overlay", "remove"): OverlayEvent,
    ("peer", "add_peer"): AddPeerEvent,
    ("peer", "delete_peer"): DeletePeerEvent,
    ("peer", "update_connection"): UpdateConnectionEvent,
    ("peer", "current_cost_map"): CostMap,
    ("log", None): LogEvent,
}


def encode_event(event: MonitorEvent) -> bytes:
    """Serialise a pushed event exactly as the ETRI monitor UI expects it."""
    return _ENCODER.encode(event)


def decode_event(raw: bytes | str) -> MonitorEvent:
    """Decode a pushed event (for monitor clients and tests); :class:`WireError` only."""
    obj = _decode_object(raw)
    key = (obj.get("type"), obj.get("action"))
    event_type = (
        _EVENT_TYPES.get(key) if all(k is None or isinstance(k, str) for k in key) else None
    )
    if event_type is None:
        raise HeaderError(f"unknown event type/action {key!r}", "$.type")
    result: MonitorEvent = _convert(obj, event_type)
    return result
