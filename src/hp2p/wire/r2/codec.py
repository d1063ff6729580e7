"""R2 frames to flat messages and back (Q.4102 as the ETRI GO-2023 peer speaks it).

``encode`` and ``decode`` are the message-oriented pair: one frame per message, as on a WebRTC
data channel, where the payload runs to the end of the frame and must agree with the lengths
in the header. ``hp2p.wire.r2.stream.StreamDecoder`` reuses the pieces here for TCP.

Both directions go through the typed wire Structs of ``schema.py`` except the hot one:
BROADCAST_DATA is written from a byte template, which is several times cheaper than building
four nested Structs, and is proved equal to the Struct path by the tests. Everything else is
validated on the way out by parsing the header it has just written, so ``encode`` cannot emit a
frame that ``decode`` would refuse.

hp2p's ``hp2p`` objects are typed Structs inside the wire Structs, so they are validated in the
same pass as the rest of the header. The flat messages always hold one (the shared empty default
when the frame had none), and ``encode`` leaves out an empty one: a message with nothing set has
exactly the bytes a reference peer writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import msgspec
from msgspec import UNSET

from hp2p.wire.errors import FrameError, HeaderError, LimitExceeded, WireError
from hp2p.wire.r2 import schema as w
from hp2p.wire.r2.framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_PAYLOAD,
    MAX_HEADER,
    MAX_INT,
    PREFIX,
    PREFIX_SIZE,
    check_depth,
    check_prefix,
)
from hp2p.wire.r2.messages import (
    AUTH_OK,
    LIVE,
    Auth,
    AuthResponse,
    BroadcastData,
    BroadcastDataResponse,
    Buffermap,
    BuffermapEntry,
    BuffermapResponse,
    Estab,
    EstabResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    HeartbeatResponse,
    Hello,
    HelloResponse,
    Message,
    PeerAddress,
    Probe,
    ProbeResponse,
    Release,
    ReleaseResponse,
    ScanTree,
    ScanTreeResponse,
    SetCandidate,
    SetCandidateResponse,
    SetPrimary,
    SetPrimaryResponse,
)
from hp2p.wire.r2.schema import (
    EstabExt,
    Extension,
    HeartbeatExt,
    HelloExt,
    OriginExt,
    ReleaseExt,
    SetPrimaryExt,
    SetPrimaryResponseExt,
)

__all__ = ["RESPONSE_CODES", "decode", "encode", "parse_header"]

Header = w.Req | w.Rsp

_REQ_PREFIX: Final = b'{"req-code":'
_RSP_PREFIX: Final = b'{"rsp-code":'

RESPONSE_CODES: Final[dict[type[Any], tuple[int, ...]]] = {
    HelloResponse: (1202,),
    EstabResponse: (2200, 2603),
    ProbeResponse: (3200,),
    SetPrimaryResponse: (4200, 4603),
    SetCandidateResponse: (5200,),
    BroadcastDataResponse: (6200,),
    ReleaseResponse: (7200,),
    HeartbeatResponse: (8200,),
    ScanTreeResponse: (9100, 9200),
    BuffermapResponse: (10200,),
    GetDataResponse: (11200, 11404),
    AuthResponse: (12200, 12401),
}
"""The response codes each response type may carry (etri §3.3, plus hp2p's 11404)."""


# --- errors ----------------------------------------------------------------------------------
def _json_error(exc: Exception, where: str) -> WireError:
    """Turn a msgspec/UTF-8/recursion failure into a HeaderError naming the JSON path."""
    if isinstance(exc, RecursionError):
        return LimitExceeded("JSON nested too deeply to parse", where)
    if isinstance(exc, UnicodeError):
        return HeaderError(f"{where} is not valid UTF-8 ({exc})", where)
    text = str(exc)
    reason, sep, path = text.partition(" - at `")
    if sep:
        path = path.rstrip("`")
        key, in_map, container = path.partition("` in `")
        if in_map:  # a bad key of a map, e.g. of hp2p.heads: "at `key` in `$.…`"
            path, reason = container, f"{reason} (a {key} of this object)"
        if path in ("$.req-code", "$.rsp-code") and reason.startswith("Invalid value"):
            reason = f"unknown {path[2:]}{reason[len('Invalid value') :]} (see etri §3.3)"
        return HeaderError(reason, path if where == "header" else f"{where}:{path}")
    return HeaderError(text, where)


# --- header ----------------------------------------------------------------------------------
def parse_header(header: bytes | bytearray, max_depth: int = DEFAULT_MAX_DEPTH) -> Header:
    """Parse one JSON header into its typed wire Struct, classified by req-code vs rsp-code.

    hp2p and the reference write the code first, so the tagged union can be tried directly;
    any other key order costs one extra shallow pass to find which code is present.
    """
    parsed: Header
    try:
        if header.startswith(_REQ_PREFIX):
            parsed = w.REQUEST_DECODER.decode(header)
        elif header.startswith(_RSP_PREFIX):
            parsed = w.RESPONSE_DECODER.decode(header)
        else:
            envelope = w.ENVELOPE_DECODER.decode(header)
            has_req = envelope.req_code is not UNSET
            has_rsp = envelope.rsp_code is not UNSET
            if has_req == has_rsp:
                which = "both req-code and" if has_req else "neither req-code nor"
                raise HeaderError(
                    f"header has {which} rsp-code; exactly one says what the message is",
                    "header",
                )
            decoder = w.REQUEST_DECODER if has_req else w.RESPONSE_DECODER
            parsed = decoder.decode(header)
    except WireError:
        raise
    except (ValueError, RecursionError) as exc:  # msgspec errors are ValueErrors
        raise _json_error(exc, "header") from None
    if isinstance(parsed, w.Req):
        if parsed.rsp_code is not UNSET:
            raise HeaderError("header has both req-code and rsp-code", "rsp-code")
    elif parsed.req_code is not UNSET:
        raise HeaderError("header has both req-code and rsp-code", "req-code")
    return parsed


def payload_length(header: Header, max_payload: int) -> int:
    """Bytes of payload the header announces (ext-header-len + payload.length), or 0."""
    if isinstance(header, w.BroadcastReq):
        params: w.BroadcastParams | w.GetDataRspParams = header.req_params
        where = "$.req-params"
    elif isinstance(header, w.GetDataOkRsp | w.GetDataMissingRsp):
        params = header.rsp_params
        where = "$.rsp-params"
    else:
        return 0
    total = params.ext_header_len + params.payload.length
    if total > max_payload:
        raise LimitExceeded(
            f"payload of {total} bytes (ext-header-len {params.ext_header_len} + "
            f"payload.length {params.payload.length}) exceeds the limit of {max_payload}",
            f"{where}.payload.length",
        )
    return total


def build_message(
    header: Header, buf: bytes | bytearray, start: int, end: int, max_depth: int
) -> Message:
    """The flat message for a parsed header whose payload is ``buf[start:end]``."""
    kind = type(header)
    if kind is w.BroadcastReq or kind is w.GetDataOkRsp or kind is w.GetDataMissingRsp:
        if type(buf) is not bytes:
            with memoryview(buf) as view:
                buf = bytes(view[start:end])
            end -= start
            start = 0
        if isinstance(header, w.BroadcastReq):
            p = header.req_params
            ext_end = start + p.ext_header_len
            return BroadcastData(
                source=p.peer.peer_id,
                sequence=p.peer.sequence,
                data=buf[ext_end:end],
                ext_header=_extension(buf[start:ext_end], max_depth),
                payload_type=p.payload.payload_type,
                ack=p.operation.ack,
                candidate_path=p.operation.candidate_path,
                hp2p=_ext(p.hp2p, LIVE),
            )
        if isinstance(header, w.GetDataOkRsp | w.GetDataMissingRsp):
            g = header.rsp_params
            ext_end = start + g.ext_header_len
            return GetDataResponse(
                source=g.peer.peer_id,
                sequence=g.sequence,
                data=buf[ext_end:end],
                ext_header=_extension(buf[start:ext_end], max_depth),
                payload_type=g.payload.payload_type,
                code=_code(header),
                hp2p=_ext(g.hp2p, _NO_ORIGIN),
            )
    return _FROM_WIRE[kind](header)


_EXT_CACHE: dict[bytes, dict[str, Any]] = {}
_EXT_CACHE_MAX: Final = 256
_SCALARS: Final = (str, int, float, bool, type(None))


def _extension(raw: bytes, max_depth: int) -> dict[str, Any]:
    """Decode the extension header; the few distinct ones are cached (a fresh dict each call)."""
    cached = _EXT_CACHE.get(raw)
    if cached is not None:
        return cached.copy()
    if not raw:
        return {}
    check_depth(raw, max_depth, "ext-header")
    try:
        ext = w.EXTENSION_DECODER.decode(raw)
    except (ValueError, RecursionError) as exc:
        raise _json_error(exc, "ext-header") from None
    if len(_EXT_CACHE) < _EXT_CACHE_MAX and all(type(v) in _SCALARS for v in ext.values()):
        _EXT_CACHE[raw] = ext.copy()
    return ext


E = TypeVar("E", bound=Extension)

# The extension a message holds when its frame had none (or ``"hp2p":null``): shared, frozen.
_NO_HELLO: Final = HelloExt()
_NO_ESTAB: Final = EstabExt()
_NO_SET_PRIMARY: Final = SetPrimaryExt()
_NO_PRIMARY_RESPONSE: Final = SetPrimaryResponseExt()
_NO_RELEASE: Final = ReleaseExt()
_NO_HEARTBEAT: Final = HeartbeatExt()
_NO_ORIGIN: Final = OriginExt()


def _ext(value: E | msgspec.UnsetType | None, empty: E) -> E:
    """The decoded ``hp2p`` object, already typed and bounded by the header's Struct."""
    return empty if value is UNSET or value is None else value


# --- wire -> flat ------------------------------------------------------------------------------
def _code(header: Header) -> int:
    """The req-code/rsp-code: the tag of the header's class."""
    return cast(int, type(header).__struct_config__.tag)


def _entries(items: list[w.BuffermapItem] | msgspec.UnsetType | None) -> list[BuffermapEntry]:
    if items is None or items is UNSET:
        return []
    return [BuffermapEntry(i.source_peer_id, i.sequence or []) for i in items]


def _opt_entries(
    items: list[w.BuffermapItem] | msgspec.UnsetType | None,
) -> list[BuffermapEntry] | None:
    return None if items is None or items is UNSET else _entries(items)


def _opt_bool(value: bool | msgspec.UnsetType | None) -> bool | None:
    return None if value is UNSET else value


def _hello(h: w.HelloReq) -> Hello:
    op, peer = h.req_params.operation, h.req_params.peer
    return Hello(
        overlay_id=op.overlay_id,
        peer_id=peer.peer_id,
        address=peer.address,
        ticket_id=peer.ticket_id,
        conn_num=op.conn_num,
        ttl=op.ttl,
        recovery=_opt_bool(op.recovery),
        vertical_candidate=_opt_bool(op.vertical_candidate),
        hp2p=_ext(h.req_params.hp2p, _NO_HELLO),
    )


def _estab(h: w.EstabReq) -> Estab:
    p = h.req_params
    return Estab(
        overlay_id=p.operation.overlay_id,
        peer_id=p.peer.peer_id,
        ticket_id=p.peer.ticket_id,
        allow_primary_req=p.allow_primary_req,
        hp2p=_ext(p.hp2p, _NO_ESTAB),
    )


def _set_primary(h: w.SetPrimaryReq) -> SetPrimary:
    p = h.req_params
    if p is None or p is UNSET:
        return SetPrimary()
    p = p
    return SetPrimary(buffermap=_opt_entries(p.buffermap), hp2p=_ext(p.hp2p, _NO_SET_PRIMARY))


def _release(h: w.ReleaseReq) -> Release:
    p = h.req_params
    if p is None or p is UNSET:
        return Release()
    p = p
    ack = False if p.operation is UNSET else p.operation.ack
    return Release(ack=ack, hp2p=_ext(p.hp2p, _NO_RELEASE))


def _heartbeat(h: w.HeartbeatReq) -> Heartbeat:
    p = h.req_params
    if p is None or p is UNSET:
        return Heartbeat()
    return Heartbeat(hp2p=_ext(p.hp2p, _NO_HEARTBEAT))


def _scan_fields(p: w.ScanParams) -> dict[str, Any]:
    return {
        "cseq": p.cseq,
        "overlay_id": p.overlay.overlay_id,
        "peer_id": p.peer.peer_id,
        "address": p.peer.address,
        "ticket_id": p.peer.ticket_id,
        "via": p.overlay.via or [],
        "path": p.overlay.path or [],
    }


def _primary_response(h: w.PrimaryYesRsp | w.PrimaryNoRsp) -> SetPrimaryResponse:
    p = h.rsp_params
    if p is None or p is UNSET:
        return SetPrimaryResponse(code=_code(h))
    p = p
    parent = p.parent_peer
    return SetPrimaryResponse(
        code=_code(h),
        buffermap=_opt_entries(p.buffermap),
        parent_peer=(
            None
            if parent is None or parent is UNSET
            else PeerAddress(parent.peer_id, parent.address)
        ),
        hp2p=_ext(p.hp2p, _NO_PRIMARY_RESPONSE),
    )


def _unset(value: Any) -> Any:
    return None if value is UNSET else value


def _auth(h: w.AuthReq) -> Auth:
    p = h.req_params
    return Auth(credential=_unset(p.credential), nonce=_unset(p.nonce), proof=_unset(p.proof))


def _auth_response(h: w.AuthOkRsp | w.AuthRefusedRsp) -> AuthResponse:
    p = h.rsp_params
    if p is UNSET:
        return AuthResponse(code=_code(h))
    return AuthResponse(
        code=_code(h),
        credential=_unset(p.credential),
        nonce=_unset(p.nonce),
        proof=_unset(p.proof),
        reason=_unset(p.reason),
    )


def _given(value: Any) -> Any:
    return UNSET if value is None else value


def _wire_auth_response(m: AuthResponse) -> Header:
    cls = w.AuthOkRsp if m.code == AUTH_OK else w.AuthRefusedRsp
    if m.credential is None and m.nonce is None and m.proof is None and m.reason is None:
        return cls()
    return cls(
        rsp_params=w.AuthRspParams(
            credential=_given(m.credential),
            nonce=_given(m.nonce),
            proof=_given(m.proof),
            reason=_given(m.reason),
        )
    )


def _wire_auth(m: Auth) -> Header:
    return w.AuthReq(
        req_params=w.AuthParams(
            credential=_given(m.credential), nonce=_given(m.nonce), proof=_given(m.proof)
        )
    )


_FROM_WIRE: Final[dict[type[Any], Callable[[Any], Message]]] = {
    w.AuthReq: _auth,
    w.AuthOkRsp: _auth_response,
    w.AuthRefusedRsp: _auth_response,
    w.HelloReq: _hello,
    w.EstabReq: _estab,
    w.ProbeReq: lambda h: Probe(ntp_time=h.req_params.operation.ntp_time),
    w.SetPrimaryReq: _set_primary,
    w.SetCandidateReq: lambda h: SetCandidate(),
    w.ReleaseReq: _release,
    w.HeartbeatReq: _heartbeat,
    w.ScanTreeReq: lambda h: ScanTree(**_scan_fields(h.req_params)),
    w.BuffermapReq: lambda h: Buffermap(overlay_id=h.req_params.overlay_id),
    w.GetDataReq: lambda h: GetData(
        overlay_id=h.overlay_id, source_id=h.source_id, sequence=h.sequence
    ),
    w.HelloRsp: lambda h: HelloResponse(code=_code(h)),
    w.EstabYesRsp: lambda h: EstabResponse(code=_code(h)),
    w.EstabNoRsp: lambda h: EstabResponse(code=_code(h)),
    w.ProbeRsp: lambda h: ProbeResponse(ntp_time=h.rsp_params.operation.ntp_time),
    w.PrimaryYesRsp: _primary_response,
    w.PrimaryNoRsp: _primary_response,
    w.CandidateRsp: lambda h: SetCandidateResponse(code=_code(h)),
    w.BroadcastRsp: lambda h: BroadcastDataResponse(code=_code(h)),
    w.ReleaseRsp: lambda h: ReleaseResponse(code=_code(h)),
    w.HeartbeatRsp: lambda h: HeartbeatResponse(code=_code(h)),
    w.ScanNonLeafRsp: lambda h: ScanTreeResponse(code=_code(h), **_scan_fields(h.rsp_params)),
    w.ScanLeafRsp: lambda h: ScanTreeResponse(code=_code(h), **_scan_fields(h.rsp_params)),
    w.BuffermapRsp: lambda h: BuffermapResponse(
        overlay_id=h.rsp_params.overlay_id,
        buffermap=_entries(h.rsp_params.buffermap),
        code=_code(h),
    ),
}


# --- decode ------------------------------------------------------------------------------------
def decode(
    frame: bytes,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Message:
    """Decode exactly one whole frame (one WebRTC data-channel message, say).

    The payload runs to the end of the frame and must be exactly the ``ext-header-len +
    payload.length`` bytes the header announces; missing or trailing bytes are a FrameError.
    Raises only the ``WireError`` family.
    """
    if type(frame) is not bytes:
        frame = _as_bytes(frame)
    size = len(frame)
    if size < PREFIX_SIZE:
        raise FrameError(f"frame of {size} bytes is shorter than the 4-byte prefix", "prefix")
    version, frame_type, header_len = PREFIX.unpack_from(frame)
    if version != 1 or frame_type != 1 or not header_len:
        check_prefix(frame, 0)  # raises the precise error
    header_end = PREFIX_SIZE + header_len
    if header_end > size:
        raise FrameError(
            f"header length {header_len} runs past the end of the {size}-byte frame",
            "header-length",
        )
    text = frame[PREFIX_SIZE:header_end]
    if text.startswith(_BROADCAST_START):
        fast = _decode_broadcast(text, frame, header_end, max_payload, max_depth)
        if fast is not None:
            return fast
    header = parse_header(text, max_depth)
    announced = payload_length(header, max_payload)
    actual = size - header_end
    if actual != announced:
        raise FrameError(_payload_mismatch(header, actual, announced), "payload")
    return build_message(header, frame, header_end, size, max_depth)


_BROADCAST_START: Final = b'{"req-code":6,'


def _decode_broadcast(
    text: bytes, frame: bytes, start: int, max_payload: int, max_depth: int
) -> BroadcastData | None:
    """The hot path for a well-formed BROADCAST_DATA; None sends it down the general path.

    Anything unusual (a decode error, lengths that do not add up, hp2p fields) returns None so
    that the general path, which names every error precisely, has the last word.
    """
    try:
        header = w.BROADCAST_DECODER.decode(text)
    except (ValueError, RecursionError):
        return None
    p = header.req_params
    payload = p.payload
    ext_end = start + p.ext_header_len
    if (
        header.req_code != 6
        or header.rsp_code is not UNSET
        or p.hp2p is not UNSET
        or ext_end + payload.length != len(frame)
        or p.ext_header_len + payload.length > max_payload
    ):
        return None
    raw = frame[start:ext_end]
    ext = _EXT_CACHE.get(raw)
    peer = p.peer
    op = p.operation
    return BroadcastData(
        source=peer.peer_id,
        sequence=peer.sequence,
        data=frame[ext_end:],
        ext_header=_extension(raw, max_depth) if ext is None else ext.copy(),
        payload_type=payload.payload_type,
        ack=op.ack,
        candidate_path=op.candidate_path,
    )


def _as_bytes(frame: object) -> bytes:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise FrameError(f"a frame must be bytes, not {type(frame).__name__}", None)
    return bytes(frame)


def _payload_mismatch(header: Header, actual: int, announced: int) -> str:
    if announced == 0 and not isinstance(header, w.BroadcastReq):
        return f"{actual} bytes follow a header that carries no payload"
    return f"payload is {actual} bytes but the header announces {announced}"


# --- flat -> wire ------------------------------------------------------------------------------
def _hp2p(ext: E, empty: E) -> E | msgspec.UnsetType:
    """Left out when nothing is set: a plain message keeps the reference's exact bytes."""
    if type(ext) is not type(empty):
        raise HeaderError(
            f"hp2p must be a {type(empty).__name__}, not {type(ext).__name__}", "hp2p"
        )
    return UNSET if ext == empty else ext


def _items(entries: list[BuffermapEntry]) -> list[w.BuffermapItem]:
    return [w.BuffermapItem(e.source_peer_id, e.sequences) for e in entries]


def _opt_items(entries: list[BuffermapEntry] | None) -> list[w.BuffermapItem] | msgspec.UnsetType:
    return UNSET if entries is None else _items(entries)


def _opt(value: bool | None) -> bool | msgspec.UnsetType:
    return UNSET if value is None else value


def _scan_params(m: ScanTree | ScanTreeResponse) -> w.ScanParams:
    return w.ScanParams(
        cseq=m.cseq,
        overlay=w.ScanOverlay(overlay_id=m.overlay_id, via=m.via, path=m.path),
        peer=w.HelloPeer(peer_id=m.peer_id, address=m.address, ticket_id=m.ticket_id),
    )


def _wire_heartbeat(m: Heartbeat) -> Header:
    ext = _hp2p(m.hp2p, _NO_HEARTBEAT)
    return w.HeartbeatReq(req_params=UNSET if ext is UNSET else w.HeartbeatParams(hp2p=ext))


def _wire_set_primary(m: SetPrimary) -> Header:
    ext = _hp2p(m.hp2p, _NO_SET_PRIMARY)
    if m.buffermap is None and ext is UNSET:
        return w.SetPrimaryReq()
    return w.SetPrimaryReq(
        req_params=w.SetPrimaryParams(buffermap=_opt_items(m.buffermap), hp2p=ext)
    )


def _wire_primary_response(m: SetPrimaryResponse) -> Header:
    cls = w.PrimaryYesRsp if m.code == 4200 else w.PrimaryNoRsp
    ext = _hp2p(m.hp2p, _NO_PRIMARY_RESPONSE)
    if m.buffermap is None and m.parent_peer is None and ext is UNSET:
        return cls()
    parent = m.parent_peer
    return cls(
        rsp_params=w.SetPrimaryRspParams(
            buffermap=_opt_items(m.buffermap),
            parent_peer=UNSET if parent is None else w.PeerRef(parent.peer_id, parent.address),
            hp2p=ext,
        )
    )


def _wire_scan_response(m: ScanTreeResponse) -> Header:
    cls = w.ScanNonLeafRsp if m.code == 9100 else w.ScanLeafRsp
    return cls(rsp_params=_scan_params(m))


_TO_WIRE: Final[dict[type[Any], Callable[[Any], Header]]] = {
    Hello: lambda m: w.HelloReq(
        req_params=w.HelloParams(
            operation=w.HelloOperation(
                overlay_id=m.overlay_id,
                conn_num=m.conn_num,
                ttl=m.ttl,
                recovery=_opt(m.recovery),
                vertical_candidate=_opt(m.vertical_candidate),
            ),
            peer=w.HelloPeer(peer_id=m.peer_id, address=m.address, ticket_id=m.ticket_id),
            hp2p=_hp2p(m.hp2p, _NO_HELLO),
        )
    ),
    Estab: lambda m: w.EstabReq(
        req_params=w.EstabParams(
            operation=w.OverlayRef(m.overlay_id),
            allow_primary_req=m.allow_primary_req,
            peer=w.EstabPeer(peer_id=m.peer_id, ticket_id=m.ticket_id),
            hp2p=_hp2p(m.hp2p, _NO_ESTAB),
        )
    ),
    Probe: lambda m: w.ProbeReq(req_params=w.ProbeParams(operation=w.NtpOperation(m.ntp_time))),
    SetPrimary: _wire_set_primary,
    SetCandidate: lambda m: w.SetCandidateReq(),
    BroadcastData: lambda m: w.BroadcastReq(
        req_params=w.BroadcastParams(
            operation=w.BroadcastOperation(ack=m.ack, candidate_path=m.candidate_path),
            peer=w.BroadcastPeer(peer_id=m.source, sequence=m.sequence),
            payload=w.PayloadInfo(length=len(m.data), payload_type=m.payload_type),
            ext_header_len=len(_ext_bytes(m.ext_header)),
            hp2p=_hp2p(m.hp2p, LIVE),
        )
    ),
    Release: lambda m: w.ReleaseReq(
        req_params=w.ReleaseParams(
            operation=w.AckOperation(ack=m.ack), hp2p=_hp2p(m.hp2p, _NO_RELEASE)
        )
    ),
    Heartbeat: _wire_heartbeat,
    ScanTree: lambda m: w.ScanTreeReq(req_params=_scan_params(m)),
    Buffermap: lambda m: w.BuffermapReq(req_params=w.BuffermapParams(overlay_id=m.overlay_id)),
    GetData: lambda m: w.GetDataReq(
        overlay_id=m.overlay_id, source_id=m.source_id, sequence=m.sequence
    ),
    HelloResponse: lambda m: w.HelloRsp(),
    EstabResponse: lambda m: (w.EstabYesRsp if m.code == 2200 else w.EstabNoRsp)(),
    ProbeResponse: lambda m: w.ProbeRsp(
        rsp_params=w.ProbeRspParams(operation=w.NtpOperation(m.ntp_time))
    ),
    SetPrimaryResponse: _wire_primary_response,
    SetCandidateResponse: lambda m: w.CandidateRsp(),
    BroadcastDataResponse: lambda m: w.BroadcastRsp(),
    ReleaseResponse: lambda m: w.ReleaseRsp(),
    HeartbeatResponse: lambda m: w.HeartbeatRsp(),
    ScanTreeResponse: _wire_scan_response,
    BuffermapResponse: lambda m: w.BuffermapRsp(
        rsp_params=w.BuffermapRspParams(overlay_id=m.overlay_id, buffermap=_items(m.buffermap))
    ),
    GetDataResponse: lambda m: (w.GetDataOkRsp if m.code == 11200 else w.GetDataMissingRsp)(
        rsp_params=w.GetDataRspParams(
            peer=w.SourcePeer(m.source),
            sequence=m.sequence,
            payload=w.PayloadInfo(length=len(m.data), payload_type=m.payload_type),
            ext_header_len=len(_ext_bytes(m.ext_header)),
            hp2p=_hp2p(m.hp2p, _NO_ORIGIN),
        )
    ),
    Auth: _wire_auth,
    AuthResponse: _wire_auth_response,
}


# --- encode ------------------------------------------------------------------------------------
_APP_EXT: dict[str, bytes] = {}


def _ext_bytes(ext: object) -> bytes:
    """The JSON extension header; the common ``{"app-id": name}`` is cached per name."""
    if type(ext) is not dict:
        raise HeaderError(f"ext_header must be a dict, not {type(ext).__name__}", "ext-header")
    if len(ext) == 1:
        app = ext.get("app-id")
        if type(app) is str:
            cached = _APP_EXT.get(app)
            if cached is None:
                cached = _json(ext, "ext-header")
                if len(_APP_EXT) < _EXT_CACHE_MAX:
                    _APP_EXT[app] = cached
            return cached
    raw = _json(ext, "ext-header")
    check_depth(raw, DEFAULT_MAX_DEPTH, "ext-header")
    return raw


def _json(value: object, where: str) -> bytes:
    try:
        return w.ENCODER.encode(value)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise HeaderError(f"cannot be written as JSON: {exc}", where) from None


def _frame(header: bytes, *parts: bytes) -> bytes:
    if len(header) > MAX_HEADER:
        raise LimitExceeded(
            f"header of {len(header)} bytes exceeds the format's limit of {MAX_HEADER}", "header"
        )
    return b"".join((PREFIX.pack(1, 1, len(header)), header, *parts))


def encode(msg: Message, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """One whole frame for ``msg``.

    Raises the ``WireError`` family for a message no receiver would accept: a field outside its
    bounds (checked by parsing the header just written), a header over 65535 bytes, a payload
    over ``max_payload`` (a receiver with default limits would refuse it), or a response code
    that does not belong to the response type.
    """
    if isinstance(msg, BroadcastData):
        return _encode_broadcast(msg, max_payload)
    kind = type(msg)
    to_wire = _TO_WIRE.get(kind)
    if to_wire is None:
        raise HeaderError(f"{kind.__name__} is not an R2 message type", None)
    codes = RESPONSE_CODES.get(kind)
    if codes is not None and getattr(msg, "code", None) not in codes:
        raise HeaderError(
            f"{kind.__name__} cannot carry code {getattr(msg, 'code', None)!r}; "
            f"allowed: {', '.join(map(str, codes))}",
            "rsp-code",
        )
    header = _json(to_wire(msg), "header")
    parse_header(header)  # the same checks a receiver makes, with the same error paths
    if isinstance(msg, GetDataResponse):
        m = msg
        _check_payload(len(m.data) + len(_ext_bytes(m.ext_header)), max_payload)
        return _frame(header, _ext_bytes(m.ext_header), m.data)
    return _frame(header)


def _check_payload(size: int, max_payload: int) -> None:
    if size > max_payload:
        raise LimitExceeded(
            f"payload of {size} bytes exceeds the limit of {max_payload}", "payload"
        )


_BROADCAST_HEAD: Final = (
    b'{"req-code":6,"req-params":{"operation":{"ack":%s,"candidate-path":%s},'
    b'"peer":{"peer-id":%s,"sequence":'
)
_BROADCAST_TAIL: Final = b',"payload-type":%s},"ext-header-len":%d}}'
_TRUE_FALSE: Final = (b"false", b"true")
# The header up to the sequence, per (source, ack, candidate-path); and after the length, per
# (payload-type, ext-header-len). Few distinct values occur, so both stay small.
_HEADS: dict[tuple[str, bool, bool], bytes] = {}
_TAILS: dict[tuple[str, int], bytes] = {}
_CACHE_MAX: Final = 4096


def _encode_broadcast(m: BroadcastData, max_payload: int) -> bytes:
    """The hot path: cached byte templates instead of four nested Structs, same bytes out."""
    data = m.data
    seq = m.sequence
    head = _HEADS.get((m.source, m.ack, m.candidate_path))
    if (
        head is None
        or m.hp2p is not LIVE
        or type(seq) is not int
        or not 0 <= seq <= MAX_INT
        or type(data) is not bytes
    ):
        return _encode_broadcast_checked(m, max_payload)
    ext = _ext_bytes(m.ext_header)
    ext_len = len(ext)
    tail = _TAILS.get((m.payload_type, ext_len))
    if tail is None or ext_len + len(data) > max_payload:
        return _encode_broadcast_checked(m, max_payload)
    header = b'%s%d},"payload":{"length":%d%s' % (head, seq, len(data), tail)
    return b"".join((PREFIX.pack(1, 1, len(header)), header, ext, data))


def _encode_broadcast_checked(m: BroadcastData, max_payload: int) -> bytes:
    """Every check through the Struct path; fills the template caches for valid messages."""
    data = m.data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise HeaderError(f"data must be bytes, not {type(data).__name__}", "payload")
    ext = _ext_bytes(m.ext_header)
    _check_payload(len(ext) + len(data), max_payload)
    header = _json(_TO_WIRE[BroadcastData](m), "header")
    parse_header(header)
    if m.hp2p is LIVE and len(_HEADS) < _CACHE_MAX and len(_TAILS) < _CACHE_MAX:
        _HEADS[(m.source, m.ack, m.candidate_path)] = _BROADCAST_HEAD % (
            _TRUE_FALSE[m.ack],
            _TRUE_FALSE[m.candidate_path],
            _json(m.source, "$.req-params.peer.peer-id"),
        )
        _TAILS[(m.payload_type, len(ext))] = _BROADCAST_TAIL % (
            _json(m.payload_type, "$.req-params.payload.payload-type"),
            len(ext),
        )
    return _frame(header, ext, bytes(data))
