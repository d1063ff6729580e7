"""HOMP routes (HPI FE, the HOMS peer interface of Q.4100 §7.3) and the monitoring GETs.

Paths, methods, status codes and JSON shapes are those of the reference HOMS-2023
(etri-2023-protocol.md §2), so a reference peer works unchanged. Where the reference answers
a client error with 500, these routes answer the right 4xx with
``{"error": "what went wrong", "field": "$.json.path"}``; docs/homs.md lists each difference.

Routes take the raw body and decode it with the shared msgspec models of
:mod:`hp2p.wire.homp` (one strict decoder for both ends of R1, and no pydantic pass on the
hot join path). The request schemas are added to the OpenAPI document by hand so that
``/docs`` still shows them.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from fastapi import APIRouter, FastAPI, Request, Response

from hp2p.homs import registry
from hp2p.homs.errors import AdmissionRefusedError, HompError
from hp2p.homs.limits import HomsLimits, RateLimitedError
from hp2p.homs.store import (
    HomsStore,
    JoinResult,
    OverlayRecord,
    PeerStatus,
    cost_map,
    topology,
)
from hp2p.wire import homp
from hp2p.wire.errors import LimitExceeded, WireError

log = logging.getLogger("hp2p.homs.api")

_JSON = "application/json"


class AuthenticatedRemovalRequest(msgspec.Struct, kw_only=True):
    """``POST /api/HybridOverlayRemoval`` body.

    The reference takes only ``overlay-id`` and deletes any overlay with no credential
    (etri-2023-protocol.md §9.1). Here the same owner credentials as ``DELETE /homs`` are
    required, flat beside the id.
    """

    overlay_id: homp.Id = msgspec.field(name="overlay-id")
    owner_id: homp.Id = msgspec.field(name="owner-id")
    admin_key: homp.Key


# ---------------------------------------------------------------------------- helpers


def error_body(message: str, field: str | None = None) -> bytes:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return msgspec.json.encode(body)


def _json(status: int, payload: msgspec.Struct | list[Any] | dict[str, Any]) -> Response:
    content = msgspec.json.encode(payload) if isinstance(payload, dict) else homp.encode(payload)
    return Response(content=content, status_code=status, media_type=_JSON)


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == _JSON or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request) -> bytes:
    """The request body, refused early if it is too large or not declared as JSON."""
    limit: int = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HompError(413, f"request body larger than {limit} bytes", "body")
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json_type(content_type):
        raise HompError(
            415, f"send the body as application/json, not {content_type!r}", "content-type"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HompError(413, f"request body larger than {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


#: Fields of the refusals that mean "wrong admin key" (what the admin-key limit counts).
_ADMIN_KEY_FIELDS = frozenset({"$.overlay.auth.admin_key", "$.overlay.auth.parent-admin-key"})


def client_address(request: Request) -> str:
    """The peer address of the connection (what the rate limits key on)."""
    return request.client.host if request.client is not None else "unknown"


@contextlib.asynccontextmanager
async def admin_attempt(
    request: Request, overlay_id: str | None, field: str
) -> AsyncIterator[None]:
    """Guard an operation that checks an admin key of ``overlay_id``: 429 while the client
    or the overlay is over its wrong-key limit, and a wrong key counts against both."""
    if overlay_id is None:
        yield
        return
    limits: HomsLimits = request.app.state.limits
    address = client_address(request)
    limits.check_admin(address, overlay_id, field)
    try:
        yield
    except HompError as exc:
        if exc.field in _ADMIN_KEY_FIELDS:
            limits.admin_failed(address, overlay_id)
        raise


def _store(request: Request) -> HomsStore:
    store: HomsStore = request.app.state.store
    return store


def _request_schema(type_: Any) -> dict[str, Any]:
    (schema,), _ = msgspec.json.schema_components(
        [type_], ref_template="#/components/schemas/{name}"
    )
    return {"requestBody": {"required": True, "content": {_JSON: {"schema": schema}}}}


def _responses(type_: Any, status: int = 200, *errors: int) -> dict[int | str, Any]:
    (schema,), _ = msgspec.json.schema_components(
        [type_], ref_template="#/components/schemas/{name}"
    )
    out: dict[int | str, Any] = {
        status: {"description": "success", "content": {_JSON: {"schema": schema}}}
    }
    descriptions = {
        400: "invalid request, unknown overlay or peer, or wrong credentials",
        403: "forged ticket-id on a recovery join; a join without `public-key` to an overlay "
        "that requires credentials; a sub-overlay without its CoreTree's consent",
        407: 'closed overlay refused admission; body {"overlay":{"overlay-id"}}',
        409: "duplicate overlay-id or peer-id",
        429: "too many wrong admin keys or overlay creations; see Retry-After",
        413: "body too large",
        404: "no overlay_id given, or no such overlay",
        415: "body not sent as application/json",
    }
    for code in errors:
        out[code] = {"description": descriptions[code]}
    return out


#: Every msgspec type whose schema the OpenAPI document must define.
SCHEMA_TYPES: tuple[Any, ...] = (
    homp.CreateRequest,
    homp.CreateResponse,
    list[homp.QueryItem],
    homp.ModifyRequest,
    homp.ModifyResponse,
    homp.RemoveRequest,
    homp.OverlayRefResponse,
    homp.JoinRequest,
    homp.JoinResponse,
    homp.RefreshRequest,
    homp.RefreshResponse,
    homp.LeaveRequest,
    homp.ReportRequest,
    AuthenticatedRemovalRequest,
    homp.AdminRemovalResponse,
    homp.InitDataResponse,
    homp.CostMap,
)


def schema_components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        SCHEMA_TYPES, ref_template="#/components/schemas/{name}"
    )
    return components


# ---------------------------------------------------------------------------- encoders


def _join_response(result: JoinResult) -> homp.JoinResponse:
    ov = result.overlay
    return homp.JoinResponse(
        overlay=homp.JoinResponseOverlay(
            overlay_id=ov.overlay_id,
            type=ov.type,  # type: ignore[arg-type]
            sub_type=ov.sub_type,  # type: ignore[arg-type]
            status=homp.JoinStatus(
                peer_info_list=[
                    homp.PeerInfo(peer_id=e.peer_id, address=e.address) for e in result.peer_list
                ]
            ),
            heartbeat_interval=ov.heartbeat_interval,
            heartbeat_timeout=ov.heartbeat_timeout,
            app_id=ov.app_id,  # type: ignore[arg-type]
            cr_policy=ov.cr_policy,
            parent_overlay_id=ov.parent_overlay_id,
            source_peer_id=ov.source_peer_id,
            source_key=ov.source_key,
            homs_keys=result.homs_keys,
        ),
        peer=homp.JoinResponsePeer(
            peer_id=result.peer_id,
            ticket_id=result.ticket,
            expires=result.expires,
            credential=result.credential,
        ),
    )


def _query_item(ov: OverlayRecord) -> homp.QueryItem:
    return homp.QueryItem(
        overlay=homp.QueryOverlay(
            overlay_id=ov.overlay_id,
            title=ov.title,
            type=ov.type,  # type: ignore[arg-type]
            sub_type=ov.sub_type,  # type: ignore[arg-type]
            owner_id=ov.owner_id,
            status=homp.QueryStatus(num_peers=ov.num_peers, status=ov.status),
            description=ov.description,
            auth=homp.QueryAuth(type=ov.auth_type),  # type: ignore[arg-type]
            app_id=ov.app_id,  # type: ignore[arg-type]
            cr_policy=ov.cr_policy,
            parent_overlay_id=ov.parent_overlay_id,
            source_peer_id=ov.source_peer_id,
            source_key=ov.source_key,
            # Only when it differs from what a reference HOMS means (no credentials), so that
            # reference-compat overlays answer exactly as the reference does.
            security="credentials" if ov.requires_credentials else None,
        )
    )


def _overlay_ref(overlay_id: str) -> homp.OverlayRefResponse:
    return homp.OverlayRefResponse(overlay=homp.OverlayRef(overlay_id=overlay_id))


# ---------------------------------------------------------------------------- routes

router = APIRouter()


@router.post(
    "/homs",
    summary="HybridOverlayCreation",
    openapi_extra=_request_schema(homp.CreateRequest),
    responses=_responses(homp.CreateResponse, 200, 400, 403, 409, 413, 415, 429),
)
async def create_overlay(request: Request) -> Response:
    """Create an overlay (CoreTree, or a SubTree/SubMesh with a parent and a source peer).

    The creator is not joined. Without ``overlay-id`` the HOMS generates a UUID4.
    """
    req = homp.decode_create_request(await read_body(request))
    req.validate_semantics()
    o = req.overlay
    request.app.state.limits.check_create(client_address(request))
    async with admin_attempt(request, o.parent_overlay_id, "$.overlay.auth.parent-admin-key"):
        rec = await _store(request).create_overlay(o)
    return _json(
        200,
        homp.CreateResponse(
            overlay=homp.CreateResponseOverlay(
                overlay_id=rec.overlay_id,
                type=o.type,
                sub_type=o.sub_type,
                owner_id=o.owner_id,
                heartbeat_interval=o.heartbeat_interval,
                heartbeat_timeout=o.heartbeat_timeout,
                # the parent's admin key is a secret of another owner: never echoed
                auth=msgspec.structs.replace(o.auth, parent_admin_key=None),
                app_id=o.app_id,
                cr_policy=o.cr_policy,
                parent_overlay_id=o.parent_overlay_id,
                source_peer_id=o.source_peer_id,
                delete_when_empty=o.delete_when_empty,
                source_key=rec.source_key,
                security=o.security,  # echoed as sent, like every other field
            )
        ),
    )


@router.get(
    "/homs",
    summary="HybridOverlayQuery",
    responses=_responses(list[homp.QueryItem], 200, 400),
)
async def query_overlays(request: Request) -> Response:
    """List overlays; one filter applies: ``overlay-id`` > ``title`` > ``description``.

    Title and description match as case-insensitive substrings. Keys are never returned.
    """
    params = homp.QueryParams.from_query(request.query_params)
    found = await _store(request).query_overlays(
        overlay_id=params.overlay_id, title=params.title, description=params.description
    )
    return _json(200, [_query_item(ov) for ov in found])


@router.put(
    "/homs",
    summary="HybridOverlayModification",
    openapi_extra=_request_schema(homp.ModifyRequest),
    responses=_responses(homp.ModifyResponse, 200, 400, 413, 415, 429),
)
async def modify_overlay(request: Request) -> Response:
    """Change title/description/admission data, transfer ownership or rotate the admin key.

    Needs the admin key and the exact owner-id.
    """
    req = homp.decode_modify_request(await read_body(request))
    async with admin_attempt(request, req.overlay.overlay_id, "$.overlay.auth.admin_key"):
        res = await _store(request).modify_overlay(req)
    auth = None
    if res.access_key is not None or res.peerlist is not None:
        auth = homp.ModifyResponseAuth(access_key=res.access_key, peerlist=res.peerlist)
    return _json(
        200,
        homp.ModifyResponse(
            overlay=homp.ModifyResponseOverlay(
                overlay_id=res.overlay_id,
                title=res.title,
                owner_id=res.owner_id,
                description=res.description,
                auth=auth,
                source_key=req.overlay.source_key,
            )
        ),
    )


@router.delete(
    "/homs",
    summary="HybridOverlayRemoval",
    openapi_extra=_request_schema(homp.RemoveRequest),
    responses=_responses(homp.OverlayRefResponse, 200, 400, 413, 415, 429),
)
async def remove_overlay(request: Request) -> Response:
    """Remove an overlay with its peers; needs the admin key and the exact owner-id."""
    req = homp.decode_remove_request(await read_body(request))
    o = req.overlay
    async with admin_attempt(request, o.overlay_id, "$.overlay.auth.admin_key"):
        await _store(request).remove_overlay(o.overlay_id, o.owner_id, o.auth.admin_key)
    return _json(200, _overlay_ref(o.overlay_id))


@router.post(
    "/api/HybridOverlayRemoval",
    summary="HybridOverlayRemoval (admin form, authenticated)",
    openapi_extra=_request_schema(AuthenticatedRemovalRequest),
    responses=_responses(homp.AdminRemovalResponse, 200, 400, 413, 415, 429),
)
async def admin_remove_overlay(request: Request) -> Response:
    """Remove an overlay by id. Unlike the reference, this needs ``owner-id`` and ``admin_key``."""
    body = await read_body(request)
    req = homp.decode(body, AuthenticatedRemovalRequest)
    async with admin_attempt(request, req.overlay_id, "$.overlay.auth.admin_key"):
        await _store(request).remove_overlay(req.overlay_id, req.owner_id, req.admin_key)
    return _json(200, homp.AdminRemovalResponse(overlay_id=req.overlay_id))


def recovery_flag(raw: str | None) -> bool:
    """``?recovery=``: only ``true``/``1``/``yes`` mean recovery (the reference: any value)."""
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise HompError(400, f"recovery must be true or false, not {raw!r}", "?recovery")


async def join_answer(
    store: HomsStore, recovery_param: str | None, body: bytes
) -> tuple[int, bytes]:
    """HybridOverlayJoin from the raw body: (status, JSON). Shared by the documented route and
    the ASGI fast path (``hp2p.homs.fastpath``), so both answer exactly the same."""
    recovery = recovery_flag(recovery_param)
    req = homp.decode_join_request(body)
    req.validate_semantics()
    declared = req.overlay.source_key
    if recovery:
        req.validate_recovery()
        result = await store.recovery_join(req)
    elif declared is not None:
        # the source declares its key: checked before, recorded after the admitted join
        await store.check_source_key(req.overlay.overlay_id, req.peer.peer_id, declared)
        result = await store.join(req)
        result = await store.claim_source_key(result, declared)
    else:
        result = await store.join(req)
    status = 200 if result.overlay.is_mesh else 202
    return status, homp.encode(_join_response(result))


def error_answer(exc: Exception) -> tuple[int, bytes, list[tuple[str, str]]]:
    """(status, JSON body, extra headers) for a refusal: one mapping for every route."""
    if isinstance(exc, AdmissionRefusedError):
        # The body shape is fixed by the reference; the reason travels in a header.
        return (
            exc.status,
            homp.encode(_overlay_ref(exc.overlay_id)),
            [("X-HOMS-Error", exc.message)],
        )
    if isinstance(exc, RateLimitedError):
        return (
            exc.status,
            error_body(exc.message, exc.field),
            [("Retry-After", exc.retry_after_header)],
        )
    if isinstance(exc, HompError):
        return exc.status, error_body(exc.message, exc.field), []
    if isinstance(exc, WireError):
        status = 413 if isinstance(exc, LimitExceeded) and exc.field == "body" else 400
        return status, error_body(exc.reason, exc.field), []
    log.exception("unexpected error while handling a request", exc_info=exc)
    return 500, UNEXPECTED_BODY, []


UNEXPECTED_BODY = msgspec.json.encode(
    {
        "error": "internal error in the HOMS (logged there); the request may not "
        "have been applied: check its state and retry"
    }
)


@router.post(
    "/peer",
    summary="HybridOverlayJoin",
    openapi_extra=_request_schema(homp.JoinRequest),
    responses=_responses(homp.JoinResponse, 202, 400, 403, 407, 409, 413, 415),
)
async def join(request: Request) -> Response:
    """Join an overlay: 202 for a tree (as the reference), 200 for a SubMesh.

    ``?recovery=true`` (only ``true``/``1``/``yes``; ``false`` means a normal join) asks for a
    recovery peer list for the ticket the HOMS issued to this peer.
    """
    status, content = await join_answer(
        _store(request), request.query_params.get("recovery"), await read_body(request)
    )
    return Response(content=content, status_code=status, media_type=_JSON)


@router.put(
    "/peer",
    summary="HybridOverlayRefresh",
    openapi_extra=_request_schema(homp.RefreshRequest),
    responses=_responses(homp.RefreshResponse, 200, 400, 407, 413, 415),
)
async def refresh(request: Request) -> Response:
    """Keep-alive: extend the peer's liveness; ``expires`` defaults to the stored value."""
    req = homp.decode_refresh_request(await read_body(request))
    res = await _store(request).refresh_member(req)
    return _json(
        200,
        homp.RefreshResponse(
            overlay=homp.RefreshResponseOverlay(
                overlay_id=req.overlay.overlay_id, homs_keys=res.homs_keys
            ),
            peer=homp.RefreshResponsePeer(
                peer_id=req.peer.peer_id, expires=res.expires, credential=res.credential
            ),
        ),
    )


@router.get("/homs/keys", summary="HOMS credential verification keys")
async def homs_keys(request: Request) -> Response:
    """The keys that sign membership credentials: the current one and the retired ones whose
    credentials may still be valid, each with ``not-after`` (``null`` for the current key).

    ``{"current": id, "keys": {id: {"public-key": "ed25519:<hex>", "not-after": t}}}``
    (docs/security.md). Public: a verification key is no secret.
    """
    ring = _store(request).keyring
    published = ring.published()
    return _json(
        200,
        {
            "current": published[0].key_id,
            "credential-ttl": ring.ttl,
            "keys": {
                k.key_id: {"public-key": k.public_key, "not-after": k.not_after} for k in published
            },
        },
    )


@router.delete(
    "/peer",
    summary="HybridOverlayLeave",
    openapi_extra=_request_schema(homp.LeaveRequest),
    responses=_responses(homp.OverlayRefResponse, 200, 400, 413, 415),
)
async def leave(request: Request) -> Response:
    """Leave an overlay (needs the peer password)."""
    req = homp.decode_leave_request(await read_body(request))
    await _store(request).leave(req)
    return _json(200, _overlay_ref(req.overlay.overlay_id))


@router.post(
    "/peer/report",
    summary="HybridOverlayReport",
    openapi_extra=_request_schema(homp.ReportRequest),
    responses=_responses(homp.OverlayRefResponse, 200, 400, 413, 415),
)
async def report(request: Request) -> Response:
    """Report the peer's connection status and cost map; also refreshes its liveness."""
    req = homp.decode_report_request(await read_body(request))
    await _store(request).report(req)
    return _json(200, _overlay_ref(req.overlay.overlay_id))


# ---------------------------------------------------------------------------- monitoring


@router.get(
    "/api/InitData",
    summary="Web-UI init data",
    responses=_responses(homp.InitDataResponse),
)
async def init_data(request: Request) -> Response:
    """Where the reference monitoring UI finds the WebSocket (``WEB_SOCKET_PORT``).

    The port that really serves it: ``--ws-port`` if given, else the HTTP port (the socket is
    also served at the bare path there).
    """
    settings = request.app.state.settings
    port = settings.ws_port if settings.ws_port is not None else settings.port
    return _json(200, homp.InitDataResponse(WEB_SOCKET_PORT=port or 8082))


def _query(request: Request, name: str) -> str | None:
    """A query parameter, refused (400) if it holds NUL: PostgreSQL cannot compare such text
    and would answer 500, SQLite would silently match nothing."""
    value = request.query_params.get(name)
    if value is not None and "\x00" in value:
        raise HompError(400, "text may not contain the NUL character (\\u0000)", f"?{name}")
    return value


def _required_query(request: Request, name: str) -> str:
    value = _query(request, name)
    if not value:
        raise HompError(404, f"give the overlay with ?{name}=…", f"?{name}")
    return value


async def may_view(request: Request, overlay_id: str, *, named: bool = True) -> bool:
    """Whether the request carries a credential to see a closed overlay's members.

    ``Authorization: Bearer <operator token>`` (any overlay) or ``X-HOMS-Admin-Key: <that
    overlay's admin key>``; wrong admin keys count against the admin-key rate limit. The admin
    key is only tried on the overlay the request ``named`` (not on the other overlays of a
    composition, where it is some other overlay's key and would count as a wrong guess).
    """
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    expected: str | None = getattr(request.app.state, "operator_token", None)
    if scheme.lower() == "bearer" and token and expected is not None:
        return hmac.compare_digest(token.strip().encode(), expected.encode())
    admin_key = request.headers.get("x-homs-admin-key")
    if admin_key and named:
        async with admin_attempt(request, overlay_id, "X-HOMS-Admin-Key"):
            if not await _store(request).verify_admin_key(overlay_id, admin_key):
                raise HompError(403, f"wrong admin key for {overlay_id!r}", "X-HOMS-Admin-Key")
        return True
    return False


async def _viewable(request: Request, overlay_id: str) -> OverlayRecord:
    """The overlay, if this request may see its members: an open overlay, or a closed one with
    a credential (403 otherwise; 404 if there is no such overlay)."""
    try:
        ov = await _store(request).get_overlay(overlay_id)
    except HompError as exc:
        raise HompError(404, exc.message, "?overlay_id") from exc
    if ov.auth_type == "closed" and not await may_view(request, overlay_id):
        raise HompError(
            403,
            f"overlay {overlay_id!r} is closed: its members are shown with the operator token "
            "(Authorization: Bearer …) or its admin key (X-HOMS-Admin-Key)",
            "Authorization",
        )
    return ov


@router.get(
    "/api/OverlayCostMap",
    summary="Current cost map (reference UI graph)",
    responses=_responses(homp.CostMap, 200, 404),
)
async def overlay_cost_map(request: Request) -> Response:
    """Nodes and primary/candidate links from the last reports, in the reference layout.

    Without ``overlay_id`` the answer is 404, as in the reference.
    """
    overlay_id = _required_query(request, "overlay_id")
    store = _store(request)
    await _viewable(request, overlay_id)
    try:
        members = await store.peers(overlay_id)
    except HompError as exc:
        raise HompError(404, exc.message, "?overlay_id") from exc
    return _json(
        200,
        cost_map(overlay_id, members),
    )


@router.get("/api/OverlayStatus", summary="Overlay status with members and liveness")
async def overlay_status(request: Request) -> Response:
    """The overlay (incl. SubTree/SubMesh parent and source peer) and every member.

    Per member: ticket, address, ``expires``, ``last_seen`` and ``expires_at`` (epoch
    seconds), and the last reported counts and cost map.
    """
    overlay_id = _required_query(request, "overlay_id")
    store = _store(request)
    ov = await _viewable(request, overlay_id)
    try:
        members = await store.peers(overlay_id)
    except HompError as exc:
        raise HompError(404, exc.message, "?overlay_id") from exc
    subs = await store.query_overlays(parent_overlay_id=overlay_id)
    return _json(
        200,
        {
            "overlay": {
                "overlay-id": ov.overlay_id,
                "title": ov.title,
                "type": ov.type,
                "sub-type": ov.sub_type,
                "owner-id": ov.owner_id,
                "status": ov.status,
                "auth-type": ov.auth_type,
                "parent-overlay-id": ov.parent_overlay_id,
                "source-peer-id": ov.source_peer_id,
                "source-key": ov.source_key,
                "delete-when-empty": ov.delete_when_empty,
                "last-ticket": ov.last_ticket,
                "created": ov.created_at,
                "num_peers": len(members),
                "num_active": sum(1 for m in members if m.num_primary > 0),
                "sub-overlays": [_sub_summary(sub) for sub in subs],
            },
            "peers": [_member_json(m) for m in members],
        },
    )


def _member_json(m: PeerStatus) -> dict[str, Any]:
    return {
        "peer-id": m.peer_id,
        "ticket-id": m.ticket,
        "address": m.address,
        "expires": m.expires,
        "last_seen": m.last_seen,
        "expires_at": m.expires_at,
        "num_primary": m.num_primary,
        "num_out_candidate": m.num_out_candidate,
        "num_in_candidate": m.num_in_candidate,
        "costmap": m.costmap,
        "suspect_since": m.suspect_since,
    }


@router.get("/api/OverlayMember", summary="One member of an overlay, with its liveness")
async def overlay_member(request: Request) -> Response:
    """The member ``peer_id`` of ``overlay_id`` as in OverlayStatus, or 404.

    For a program that watches one peer (the R3 bridge watching its sub-overlay's source)
    without reading every member of a large overlay each time.
    """
    overlay_id = _required_query(request, "overlay_id")
    peer_id = _query(request, "peer_id")
    if not peer_id:
        raise HompError(404, "give the member with ?peer_id=…", "?peer_id")
    await _viewable(request, overlay_id)
    try:
        members = await _store(request).peers(overlay_id, peer_id=peer_id)
    except HompError as exc:
        raise HompError(404, exc.message, "?overlay_id") from exc
    if not members:
        raise HompError(404, f"{peer_id!r} is not a member of {overlay_id!r}", "?peer_id")
    return _json(200, _member_json(members[0]))


@router.get("/api/OverlayTopology", summary="Current topology: nodes and links")
async def overlay_topology(request: Request) -> Response:
    """Nodes (peer-id, ticket) and primary/candidate links from the members' last reports."""
    overlay_id = _required_query(request, "overlay_id")
    await _viewable(request, overlay_id)
    try:
        members = await _store(request).peers(overlay_id)
    except HompError as exc:
        raise HompError(404, exc.message, "?overlay_id") from exc
    nodes, links = topology(members)
    return _json(200, {"overlay-id": overlay_id, "nodes": nodes, "links": links})


def _sub_summary(ov: OverlayRecord) -> dict[str, object]:
    return {
        "overlay-id": ov.overlay_id,
        "title": ov.title,
        "type": ov.type,
        "sub-type": ov.sub_type,
        "source-peer-id": ov.source_peer_id,
        "source-key": ov.source_key,
        "num_peers": ov.num_peers,
    }


@router.get("/api/OverlayComposition", summary="A CoreTree and its sub-overlays (R3)")
async def overlay_composition(request: Request) -> Response:
    """The whole composition an overlay belongs to: its CoreTree and every SubTree/SubMesh
    fed from it (recursively), each with its source peer and current topology.

    Any member of the composition may be named; the answer starts from the top overlay, so a
    monitor shows the same picture whichever overlay it was looking at.
    """
    overlay_id = _required_query(request, "overlay_id")
    store = _store(request)
    try:
        top = await store.get_overlay(overlay_id)
        seen = {top.overlay_id}
        while top.parent_overlay_id is not None and top.parent_overlay_id not in seen:
            top = await store.get_overlay(top.parent_overlay_id)
            seen.add(top.overlay_id)
    except HompError as exc:
        raise HompError(404, exc.message, "?overlay_id") from exc

    async def describe(ov: OverlayRecord, depth: int) -> dict[str, object]:
        entry: dict[str, object] = {**_sub_summary(ov), "parent-overlay-id": ov.parent_overlay_id}
        named = ov.overlay_id == overlay_id
        if ov.auth_type == "closed" and not await may_view(request, ov.overlay_id, named=named):
            # a closed overlay's members are its owner's and the operator's business
            entry.update(nodes=[], links=[], hidden=True)
        else:
            nodes, links = topology(await store.peers(ov.overlay_id))
            entry.update(nodes=nodes, links=links)
        subs = [] if depth >= 8 else await store.query_overlays(parent_overlay_id=ov.overlay_id)
        entry["sub-overlays"] = [await describe(sub, depth + 1) for sub in subs]
        return entry

    return _json(200, {"composition": await describe(top, 0)})


@router.get("/api/PeerInfo", summary="Peer information registrar (PIR FE)")
async def peer_info(request: Request) -> Response:
    """Addresses and capabilities a peer sent at its last join."""
    peer_id = _query(request, "peer_id")
    if not peer_id:
        raise HompError(404, "give the peer with ?peer_id=…", "?peer_id")
    info = await registry.lookup(_store(request), peer_id)
    if info is None:
        raise HompError(404, f"no peer {peer_id!r} has joined", "?peer_id")
    return _json(200, info)


@router.get("/api/SignallingStatus", summary="Signalling WebSocket counts")
async def signalling_status(request: Request) -> Response:
    """Profile, open sockets, registered peer-ids and subscribed monitors of this instance.

    Counts only (no peer-ids): enough to watch the channel and for tests to wait on it.
    """
    return _json(200, request.app.state.switchboard.status())


@router.get("/health", summary="Liveness probe")
async def health() -> Response:
    """200 once the HOMS is up and its database schema is current."""
    return _json(200, {"status": "ok"})


# ---------------------------------------------------------------------------- errors


def install_error_handlers(app: FastAPI) -> None:
    """Map every refusal to a JSON answer; nothing reaches the client as a bare 500."""

    async def on_error(_request: Request, exc: Exception) -> Response:
        status, body, headers = error_answer(exc)
        return Response(body, status_code=status, media_type=_JSON, headers=dict(headers))

    app.add_exception_handler(HompError, on_error)
    app.add_exception_handler(WireError, on_error)
    app.add_exception_handler(Exception, on_error)
