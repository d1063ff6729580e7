"""The local API of a running peer: HTTP + WebSocket for other processes (AI FE, Q.4100).

Served by ``hp2p peer --api HOST:PORT`` (127.0.0.1 by default: the reference served its local
API on every interface with no authentication, etri-2023-protocol.md §9.1). A tree peer
(CoreTree, SubTree):

=========================  =====================================================================
``GET  /status``           the peer's status (ids, ticket, paths, counters)
``POST /publish``          body = the message bytes; ``?app_id=…&payload_type=…``; → sequence
``GET  /tree``             SCAN_TREE from this peer: the leaf paths it sees
``WS   /subscribe``        one JSON text frame per delivery, and ``{"gap": {source, first,
                           last}}`` for messages no peer could serve; frames sent by the
                           client are published (binary as is, text as UTF-8)
=========================  =====================================================================

A SubMesh peer serves the same routes for whole objects (:func:`build_mesh_app`): ``/publish``
(source only, else 403) answers the object number, ``/subscribe`` sends one frame per verified
object, and ``/tree`` answers 404 (SCAN_TREE is a tree procedure).

Every route, the WebSocket included, sits behind :class:`hp2p.peer.api_guard.ApiGuard`: a
bearer token made at start (printed in the peer's joined line and kept in a 0600 file), a
Host header naming this API (DNS rebinding), no foreign Origin (cross-site pages), and a
request body bounded while it is read. A non-loopback address is refused unless ``public``
(``--api-public``) is given.

This module imports the web stack (FastAPI, uvicorn) and is itself imported only when the API
is served, so a peer without ``--api`` stays small. No ``from __future__ import annotations``
here: FastAPI reads the route annotations at runtime.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect

from hp2p.peer.api import delivery_json, gap_json, payload_json, scan_json
from hp2p.peer.api_guard import (
    SUBPROTOCOL_SCOPE_KEY,
    ApiGuard,
    QuietDenials,
    new_token,
    runtime_dir,
    token_file_name,
    write_token_file,
)
from hp2p.peer.node import MessageTooLargeError, NodeError, PeerNode
from hp2p.peer.settings import ANY_HOSTS, is_loopback_host, split_host_port
from hp2p.peer.subscription import Gap
from hp2p.transport.http_server import EmbeddedHttpServer

log = logging.getLogger("hp2p.peer.local_api")
_uvicorn_log = logging.getLogger("uvicorn.error")
if not any(isinstance(f, QuietDenials) for f in _uvicorn_log.filters):
    _uvicorn_log.addFilter(QuietDenials())

if TYPE_CHECKING:
    from hp2p.peer.mesh_node import MeshDelivery, MeshNode


def build_app(node: Union[PeerNode, "MeshNode"]) -> FastAPI:
    """The local API of ``node`` as an ASGI app (a tree peer's, or a SubMesh peer's)."""
    if not isinstance(node, PeerNode):
        return build_mesh_app(node)
    app = FastAPI(
        title="hp2p peer local API",
        summary="Publish to and subscribe from a running hybrid peer (AI FE of Q.4100)",
    )

    def running() -> PeerNode:
        if node.state in ("starting", "left"):
            raise HTTPException(503, f"the peer is {node.state}; retry when it has joined")
        return node

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """The peer's status: ids, ticket, phase, paths and counters."""
        return node.status()

    @app.post("/publish")
    async def publish(
        request: Request, app_id: str = "etri_data", payload_type: str = "text/plain"
    ) -> dict[str, Any]:
        """Broadcast the request body (any bytes) to the overlay."""
        body = await request.body()
        try:
            sequence = running().publish(body, app_id=app_id, payload_type=payload_type)
        except MessageTooLargeError as exc:
            raise HTTPException(413, str(exc)) from None
        except NodeError as exc:
            raise HTTPException(503, str(exc)) from None
        return {"source": node.peer_id, "sequence": sequence}

    @app.get("/tree")
    async def tree() -> dict[str, Any]:
        """SCAN_TREE from this peer; answers after the core's scan timeout."""
        try:
            result = await running().scan_tree()
        except NodeError as exc:
            raise HTTPException(503, str(exc)) from None
        return scan_json(result)

    @app.websocket("/subscribe")
    async def subscribe(ws: WebSocket) -> None:
        """Deliveries (and gaps, as ``{"gap": {...}}``) as JSON text frames; frames from the
        client are published."""

        def to_json(item: Any) -> dict[str, Any]:
            return gap_json(item) if isinstance(item, Gap) else delivery_json(item)

        def publish_frame(data: bytes) -> str | None:
            try:
                running().publish(data)
            except (NodeError, HTTPException) as exc:
                return str(exc)
            return None

        await _serve_subscription(ws, node.subscribe_with_gaps(), to_json, publish_frame)

    add_metrics_route(app, node)
    return app


def add_metrics_route(app: FastAPI, node: Union[PeerNode, "MeshNode"]) -> None:
    """``GET /metrics``: the peer's counters in Prometheus text format (docs/operate.md)."""
    from fastapi.responses import PlainTextResponse

    from hp2p.peer.metrics import exposition
    from hp2p.prometheus import CONTENT_TYPE

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Deliveries, duplicates, relayed bytes, repairs, gaps, parent RTT, depth, cache."""
        return PlainTextResponse(exposition(node.status()), media_type=CONTENT_TYPE)


def object_json(delivery: "MeshDelivery") -> dict[str, Any]:
    """A SubMesh object as JSON: ``text`` when the bytes are UTF-8, else ``data_b64``."""
    out: dict[str, Any] = {
        "object": delivery.object_number,
        "size": len(delivery.data),
        "sha256": hashlib.sha256(delivery.data).hexdigest(),
        "app_id": delivery.app_id,
        "meta": delivery.meta,
    }
    out |= payload_json(delivery.data)
    if delivery.lost:
        out["lost"] = delivery.lost
    return out


def build_mesh_app(node: "MeshNode") -> FastAPI:
    """The local API of a SubMesh peer: the tree peer's routes, for whole objects."""
    from hp2p.peer.errors import NotSourceError
    from hp2p.peer.mesh_node import MeshNodeError

    app = FastAPI(
        title="hp2p SubMesh peer local API",
        summary="Publish whole objects to and receive them from a running SubMesh peer",
    )

    def publish(data: bytes, app_id: str | None) -> int:
        if node.state != "running":
            raise HTTPException(503, f"the peer is {node.state}; retry when it has joined")
        try:
            return node.publish(data, app_id=app_id)
        except NotSourceError as exc:
            raise HTTPException(403, str(exc)) from None
        except MeshNodeError as exc:
            raise HTTPException(503, str(exc)) from None
        except ValueError as exc:  # larger than the configured bounds
            raise HTTPException(413, str(exc)) from None

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """The peer's status: ids, neighbours, store, counters."""
        return node.status()

    @app.post("/publish")
    async def publish_object(request: Request, app_id: str | None = None) -> dict[str, Any]:
        """Publish the request body (any bytes) as one object; the source peer only."""
        number = publish(await request.body(), app_id)
        return {"source": node.peer_id, "object": number}

    @app.get("/tree")
    async def tree() -> dict[str, Any]:
        """Not on a SubMesh: SCAN_TREE is a tree procedure."""
        raise HTTPException(
            404,
            "SCAN_TREE is a tree procedure and this peer is in a SubMesh; "
            "GET /status shows its neighbours",
        )

    @app.websocket("/subscribe")
    async def subscribe(ws: WebSocket) -> None:
        """Whole verified objects as JSON text frames; frames from the client are published."""

        def publish_frame(data: bytes) -> str | None:
            try:
                publish(data, None)
            except HTTPException as exc:
                return str(exc.detail)
            return None

        await _serve_subscription(ws, node.subscribe(), object_json, publish_frame)

    add_metrics_route(app, node)

    return app


async def _serve_subscription(
    ws: WebSocket,
    sub: Any,
    to_json: Callable[[Any], dict[str, Any]],
    publish: Callable[[bytes], str | None],
) -> None:
    """One subscription over a WebSocket: items out as JSON frames, frames in are published.

    A frame that cannot be published is answered with ``{"error": ...}``; the subscription
    ends (and is closed) when the client goes.
    """
    await ws.accept(subprotocol=ws.scope.get(SUBPROTOCOL_SCOPE_KEY))

    async def pump_out() -> None:
        async for item in sub:
            await ws.send_json(to_json(item))

    sender = asyncio.create_task(pump_out())
    try:
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                break
            data = frame.get("bytes")
            if data is None:
                data = (frame.get("text") or "").encode("utf-8")
            error = publish(data)
            if error is not None:
                await ws.send_json({"error": error})
    except WebSocketDisconnect:
        pass
    finally:
        sub.close()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


class StartingGate:
    """ASGI wrapper: every HTTP request is answered 503 while the peer has not joined yet.

    The API listens before the peer joins, so a client that connects early learns that it
    should wait (``Retry-After``, and a JSON body saying why), not that nothing listens there.
    WebSocket subscriptions pass: one opened early receives every delivery from the first.
    """

    def __init__(self, app: Any, node: Union[PeerNode, "MeshNode"]) -> None:
        self.app = app
        self.node = node

    def starting(self) -> bool:
        node = self.node
        if isinstance(node, PeerNode):
            return not node.joined.is_set() and node.state != "left"
        return node.state == "starting"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.starting():
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "starting",
                "state": self.node.state,
                "detail": "the peer has not joined its overlay yet; retry in a moment",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class LocalApi:
    """Serves :func:`build_app` with uvicorn inside the peer's event loop, behind the guard.

    ``token``: the bearer token (default: a fresh random one); ``token_dir``: where its 0600
    file goes, beside the peer's state (default: :func:`hp2p.peer.api_guard.runtime_dir`);
    ``max_body``: the largest request body read (default: the largest message or object the
    peer publishes); ``public``: allow a non-loopback address (logged as a warning).
    """

    def __init__(
        self,
        node: Union[PeerNode, "MeshNode"],
        listen: str,
        *,
        public: bool = False,
        token: str | None = None,
        token_dir: str | None = None,
        max_body: int | None = None,
    ) -> None:
        self.node = node
        self.host, self.port = split_host_port(listen, "api")
        if not public and not is_loopback_host(self.host):
            raise NodeError(
                f"refusing to serve the local API on {listen}: not a loopback address, so "
                "other machines could reach it. Use 127.0.0.1:PORT, or give --api-public if "
                "you mean it"
            )
        self.public = public
        self.token = token or new_token()
        self.token_file: Path | None = None
        self._token_dir = token_dir
        if max_body is None:
            if isinstance(node, PeerNode):
                max_body = node.max_message
            else:
                max_body = node.settings.config.max_object_size
        self.max_body = max_body
        self.guard: ApiGuard | None = None
        self.url = ""
        self._http = EmbeddedHttpServer(
            self.host, self.port, what="local API", error=NodeError, task_name="hp2p-api"
        )

    async def start(self) -> str:
        """Listen and return the base URL; raises ``NodeError`` if the port cannot be used."""
        self.port = self._http.bind()
        try:
            self.token_file = self._write_token()
        except OSError as exc:
            self._http.close_socket()
            raise NodeError(f"cannot write the local API's token file: {exc}") from None
        if self.public:
            log.warning(
                "the local API listens on %s:%d, reachable from other machines; only its "
                "token protects it (--api-public)",
                self.host,
                self.port,
            )
        allowed = None if self.host in ANY_HOSTS else frozenset({self.host})
        self.guard = ApiGuard(
            StartingGate(build_app(self.node), self.node),
            token=self.token,
            max_body=self.max_body,
            allowed_hosts=allowed,
        )
        self.url = await self._http.serve(self.guard)
        return self.url

    def _write_token(self) -> Path:
        """The token file (0600), beside the peer's state or in the user's runtime directory."""
        folder = Path(self._token_dir) if self._token_dir else runtime_dir()
        path = folder / token_file_name(self.node.peer_id, self.port)
        write_token_file(path, self.token)
        return path

    @property
    def headers(self) -> dict[str, str]:
        """The header every request to this API needs (for in-process clients and tests)."""
        return {"Authorization": f"Bearer {self.token}"}

    async def stop(self) -> None:
        await self._http.stop()
        if self.token_file is not None:
            with contextlib.suppress(OSError):
                self.token_file.unlink()
            self.token_file = None

    async def __aenter__(self) -> "LocalApi":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
