"""The read-only HTTP API of ``hp2p iot state``: the live state, its changes as SSE and WS.

=============================  ==================================================================
``GET /state``                 every topic (``?prefix=P``: those starting with P), with the
                               version they reflect
``GET /state/{topic}``         one topic (404 saying so when this member has no reading of it)
``GET /state/stream``          Server-Sent Events: ``snapshot``, then ``change`` / ``remove``;
                               each event's id is its version, so a client that reconnects with
                               ``Last-Event-ID`` (or ``?since=V``) gets what it missed, or a
                               ``resync`` snapshot when the member no longer has it
``WS   /state/ws``             the same messages as JSON text frames (``?since=V&prefix=P``)
``GET /status``                the peer's status and the state's counters
=============================  ==================================================================

Protection (:class:`hp2p.peer.api_guard.ApiGuard`, as on the peer's local API): the Host
header must name this API (DNS rebinding), a foreign Origin is refused (cross-site pages),
request bodies are refused (nothing here takes one). The bearer token is *optional* here
(``--api-token``): the API only reads, and what it shows is what any local program may read
by joining the overlay or subscribing to the ``--mqtt-out`` broker. A non-loopback address
needs ``--api-public`` and then always requires the token. At most ``max_clients`` streams
run at once (503 beyond), and WebSocket frames from clients are read and dropped, bounded.

No ``from __future__ import annotations``: FastAPI reads the route annotations at runtime.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse

from hp2p.apps.iot.state import reading_json
from hp2p.apps.iot.state_feed import StateFeed
from hp2p.peer.api_guard import SUBPROTOCOL_SCOPE_KEY, ApiGuard, QuietDenials, new_token
from hp2p.peer.settings import ANY_HOSTS, is_loopback_host, split_host_port
from hp2p.transport.http_server import EmbeddedHttpServer

__all__ = ["StateApi", "StateApiError", "build_state_app", "sse_event"]

#: Largest WebSocket frame read from a client (they have nothing to say).
WS_MAX_SIZE = 4096

_uvicorn_log = logging.getLogger("uvicorn.error")
if not any(isinstance(f, QuietDenials) for f in _uvicorn_log.filters):
    _uvicorn_log.addFilter(QuietDenials())


class StateApiError(Exception):
    """The API could not start; ``str(err)`` says why and what to do."""


def sse_event(message: dict[str, Any] | None) -> bytes:
    """One Server-Sent Event (``None``: a keep-alive comment)."""
    if message is None:
        return b": keep-alive\n\n"
    data = json.dumps(message, separators=(",", ":"))
    return f"id: {message['version']}\nevent: {message['type']}\ndata: {data}\n\n".encode()


def _since(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 18:
        raise HTTPException(400, f"a version is a whole number, not {value[:30]!r}")
    return int(value)


def build_state_app(feed: StateFeed, peer_status: Callable[[], dict[str, Any]]) -> FastAPI:
    """The routes of the module docstring over ``feed``."""
    app = FastAPI(title="hp2p iot state", summary="The live state of an IoT overlay (read only)")

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """The peer's status and the state's counters."""
        return {"peer": peer_status(), **feed.status()}

    @app.get("/state")
    async def state(prefix: str = "") -> dict[str, Any]:
        """Every topic starting with ``prefix``, with the version this reflects."""
        return feed.state.snapshot(feed.clock(), prefix)

    @app.get("/state/stream")
    async def stream(request: Request, since: str | None = None, prefix: str = "") -> Any:
        """Server-Sent Events of the changes (resumable with Last-Event-ID)."""
        start = _since(request.headers.get("last-event-id") or since)
        if not feed.admit():
            raise HTTPException(503, f"{feed.max_clients} streams already; retry later")

        async def events() -> AsyncIterator[bytes]:
            try:
                async for message in feed.messages(start, prefix):
                    yield sse_event(message)
            finally:
                feed.leave()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.get("/state/{topic:path}")
    async def one_topic(topic: str) -> dict[str, Any]:
        """One topic's latest reading."""
        reading = feed.state.get(topic)
        if reading is None:
            raise HTTPException(
                404,
                f"no reading of topic {topic[:200]!r} here (yet); GET /state lists the topics "
                f"this member has",
            )
        return {"version": feed.state.version, **reading_json(reading, feed.clock())}

    @app.websocket("/state/ws")
    async def ws(socket_: WebSocket) -> None:
        """The changes as JSON text frames (``?since=V&prefix=P``)."""
        await _serve_ws(feed, socket_)

    return app


async def _serve_ws(feed: StateFeed, ws: WebSocket) -> None:
    try:
        start = _since(ws.query_params.get("since"))
    except HTTPException as exc:
        await _deny(ws, exc.status_code, str(exc.detail))
        return
    if not feed.admit():
        await _deny(ws, 503, f"{feed.max_clients} streams already; retry later")
        return
    await ws.accept(subprotocol=ws.scope.get(SUBPROTOCOL_SCOPE_KEY))
    prefix = ws.query_params.get("prefix", "")

    async def pump_out() -> None:
        async for message in feed.messages(start, prefix):
            if message is not None:
                await ws.send_json(message)

    sender = asyncio.create_task(pump_out())
    try:
        while True:  # frames in are dropped (uvicorn bounds their size)
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                break
    except WebSocketDisconnect:
        pass
    finally:
        feed.leave()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _deny(ws: WebSocket, status: int, detail: str) -> None:
    """Refuse the handshake with an HTTP answer that says why (uvicorn supports it)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse({"detail": detail}, status_code=status))
    else:
        await ws.close(code=1008, reason=detail[:120])


class StateApi:
    """Serves :func:`build_state_app` with uvicorn in this event loop, behind the guard."""

    def __init__(
        self,
        app: FastAPI,
        listen: str,
        *,
        public: bool = False,
        token: bool = False,
    ) -> None:
        self.host, self.port = split_host_port(listen, "api")
        if not public and not is_loopback_host(self.host):
            raise StateApiError(
                f"refusing to serve the state API on {listen}: not a loopback address. Use "
                "127.0.0.1:PORT, or give --api-public (which also turns on --api-token)"
            )
        self.token = new_token() if token or public else None
        allowed = None if self.host in ANY_HOSTS else frozenset({self.host})
        self.guard = ApiGuard(app, token=self.token, max_body=0, allowed_hosts=allowed)
        self.url = ""
        self._http = EmbeddedHttpServer(
            self.host,
            self.port,
            what="state API",
            error=StateApiError,
            task_name="hp2p-iot-api",
            force_exit=True,  # streams never end by themselves
            ws_max_size=WS_MAX_SIZE,
        )

    async def start(self) -> str:
        """Listen and return the base URL; :class:`StateApiError` if the port cannot be used."""
        self.url = await self._http.start(self.guard)
        self.port = self._http.port
        return self.url

    async def stop(self) -> None:
        await self._http.stop()
