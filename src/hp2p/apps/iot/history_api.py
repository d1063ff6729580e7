"""The query API of a history member: ``GET /history`` and ``GET /status`` on loopback.

Read-only, and only what any member of the SubMesh can read anyway, so it has no token; it
listens only on a loopback address and refuses requests whose Host header names another
host (a web page elsewhere cannot make a browser read it through DNS rebinding).

No ``from __future__ import annotations`` here: FastAPI reads the route annotations at runtime.
"""

from typing import Any

import msgspec
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from hp2p.apps.iot.history import HistoryError
from hp2p.apps.iot.history_member import HistoryMember, QueryError
from hp2p.peer.settings import is_loopback_host, split_host_port
from hp2p.transport.http_server import EmbeddedHttpServer

__all__ = ["HistoryApi", "build_app"]

_json = msgspec.json.Encoder()


def _answer(body: Any) -> Response:
    return Response(_json.encode(body), media_type="application/json")


def build_app(member: HistoryMember) -> FastAPI:
    app = FastAPI(title="hp2p IoT history", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/history")
    async def history(
        topic: str = Query(..., max_length=256),
        start: float = Query(..., alias="from"),
        end: float = Query(..., alias="to"),
        limit: int = Query(100_000),
        wait: float = Query(2.0),
    ) -> Response:
        """Readings of ``topic`` with ``from <= ts < to`` in time order, with the gaps;
        400 with the reason for a bad parameter (``QueryError``)."""
        try:
            return _answer(await member.query(topic, start, end, limit=limit, wait=wait, raw=True))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/status")
    async def status() -> Response:
        return _answer(member.status())

    return app


class HistoryApi:
    """uvicorn inside the member's event loop; ``await start()`` returns the base URL."""

    def __init__(self, member: HistoryMember, listen: str) -> None:
        self.member = member
        self.host, self.port = split_host_port(listen, "api")
        if not is_loopback_host(self.host):
            raise HistoryError(
                f"refusing to serve the history API on {listen}: not a loopback address "
                "(use 127.0.0.1:PORT; put a reverse proxy in front to publish it)"
            )
        self.url = ""
        self._http = EmbeddedHttpServer(
            self.host, self.port, what="history API", error=HistoryError, task_name="history-api"
        )

    async def start(self) -> str:
        self.port = self._http.bind()
        app = TrustedHostMiddleware(
            build_app(self.member), allowed_hosts=["127.0.0.1", "localhost", "[::1]", self.host]
        )
        self.url = await self._http.serve(app)
        return self.url

    async def stop(self) -> None:
        await self._http.stop()
