"""The local API of a running peer: HTTP + WebSocket for other processes (AI FE, Q.4100).

Served by ``hp2p peer --api HOST:PORT`` (127.0.0.1 by default: the reference served its local
API on every interface with no authentication, etri-2023-protocol.md §9.1):

=========================  =====================================================================
``GET  /status``           the peer's status (ids, ticket, paths, counters)
``POST /publish``          body = the message bytes; ``?app_id=…&payload_type=…``; → sequence
``GET  /tree``             SCAN_TREE from this peer: the leaf paths it sees
``WS   /subscribe``        one JSON text frame per delivery, and ``{"gap": {source, first,
                           last}}`` for messages no peer could serve; frames sent by the
                           client are published (binary as is, text as UTF-8)
=========================  =====================================================================

This module imports the web stack (FastAPI, uvicorn) and is itself imported only when the API
is served, so a peer without ``--api`` stays small. No ``from __future__ import annotations``
here: FastAPI reads the route annotations at runtime.
"""

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect

from hp2p.peer.api import delivery_json, gap_json, scan_json
from hp2p.peer.node import MessageTooLargeError, NodeError, PeerNode
from hp2p.peer.settings import split_host_port
from hp2p.peer.subscription import Gap


def build_app(node: PeerNode) -> FastAPI:
    """The local API as an ASGI app."""
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
        await ws.accept()
        sub = node.subscribe_with_gaps()

        async def pump_out() -> None:
            async for item in sub:
                if isinstance(item, Gap):
                    await ws.send_json(gap_json(item))
                else:
                    await ws.send_json(delivery_json(item))

        sender = asyncio.create_task(pump_out())
        try:
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                data = frame.get("bytes")
                if data is None:
                    data = (frame.get("text") or "").encode("utf-8")
                try:
                    running().publish(data)
                except (NodeError, HTTPException) as exc:
                    await ws.send_json({"error": str(exc)})
        except WebSocketDisconnect:
            pass
        finally:
            sub.close()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    return app


class LocalApi:
    """Serves :func:`build_app` with uvicorn inside the peer's event loop."""

    def __init__(self, node: PeerNode, listen: str) -> None:
        self.node = node
        self.host, self.port = split_host_port(listen, "api")
        self.url = ""
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Listen and return the base URL; raises ``NodeError`` if the port cannot be used."""
        ready = asyncio.Event()

        class _Server(uvicorn.Server):
            # The peer owns SIGINT/SIGTERM (clean leave); uvicorn must not take them over.
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                try:
                    await super().startup(sockets=sockets)
                finally:
                    ready.set()

        try:
            sock = socket.create_server((self.host, self.port), reuse_port=False)
        except OSError as exc:
            raise NodeError(
                f"cannot serve the local API on {self.host}:{self.port}: "
                f"{exc.strerror or exc} (is the port in use? try another --api port)"
            ) from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self.node), log_level="warning", access_log=False, lifespan="off"
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="hp2p-api")
        started = asyncio.ensure_future(ready.wait())
        await asyncio.wait([self._task, started], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not self._server.started:
            await self.stop()
            raise NodeError("the local API did not start (see the log above)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 3.0)

    async def __aenter__(self) -> "LocalApi":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
