"""The HTTP side of a viewer or recorder: HLS playlists and segments on loopback.

Routes (each present when its provider is given):

* ``GET /live/{stream}/index.m3u8``, ``GET /live/{stream}/{seq}.ts`` — a viewer's live window;
* ``GET /vod/{stream}/index.m3u8``, ``GET /vod/{stream}/{seq}.ts`` — a recorder's recording;
* ``GET /watch/{stream}`` — a viewer's page: hls.js plays the live playlist and the page shows
  continuity, latency and the peer's place in the tree (``static/``, hls.js vendored: nothing
  is loaded from another origin, and the Content-Security-Policy says so);
* ``GET /status`` — JSON.

Read-only, and only what any member of the overlay receives anyway, so no token; it listens
on loopback only and refuses requests whose Host header names another host (DNS rebinding).
Stream names are checked (:func:`hp2p.apps.media.chunk.check_stream_name`) before any lookup.

No ``from __future__ import annotations``: FastAPI reads route annotations at runtime.
"""

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import msgspec
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from hp2p.apps.media.chunk import ChunkError, check_stream_name
from hp2p.peer.settings import is_loopback_host, split_host_port
from hp2p.transport.http_server import EmbeddedHttpServer

__all__ = ["MediaApi", "MediaApiError", "Playlists"]

_json = msgspec.json.Encoder()
M3U8 = "application/vnd.apple.mpegurl"
TS = "video/mp2t"
_STATIC = Path(__file__).with_name("static")
#: The only files ``/static/`` serves, with their media types.
_STATIC_FILES = {
    "hls.light.min.js": "text/javascript",
    "watch.js": "text/javascript",
}
#: The page loads only this peer's own scripts, playlist, segments and status; hls.js
#: transmuxes in a blob: worker and feeds the video through a blob: URL.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
    "media-src 'self' blob:; worker-src 'self' blob:; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


@cache
def _static(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


def _mount_page(app: FastAPI) -> None:
    headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}

    @app.get("/watch/{stream}")
    async def watch(stream: str) -> Response:
        _stream(stream)
        return Response(_static("watch.html"), media_type="text/html", headers=headers)

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        media_type = _STATIC_FILES.get(name)
        if media_type is None:
            raise HTTPException(404, "no such file")
        cached = {**headers, "Cache-Control": "max-age=86400"}
        return Response(_static(name), media_type=media_type, headers=cached)


class MediaApiError(Exception):
    """The API could not start; ``str(err)`` says why and what to do."""


class Playlists(Protocol):
    """What a viewer (``live``) or a recorder (``vod``) serves."""

    def playlist(self, stream: str) -> str | None: ...

    def segment(self, stream: str, sequence: int) -> bytes | None: ...


def _stream(name: str) -> str:
    try:
        return check_stream_name(name)
    except ChunkError as exc:
        raise HTTPException(400, str(exc)) from None


def _mount(app: FastAPI, prefix: str, provider: Playlists) -> None:
    @app.get(f"/{prefix}/{{stream}}/index.m3u8")
    async def playlist(stream: str) -> Response:
        text = provider.playlist(_stream(stream))
        if text is None:
            raise HTTPException(404, f"no stream {stream!r} here (yet)")
        headers = {"Cache-Control": "no-cache"}
        return Response(text, media_type=M3U8, headers=headers)

    @app.get(f"/{prefix}/{{stream}}/{{name}}")
    async def segment(stream: str, name: str) -> Response:
        number, dot, ext = name.partition(".")
        if ext != "ts" or not dot or not (number.isascii() and number.isdigit()):
            raise HTTPException(404, "segments are named SEQUENCE.ts")
        if len(number) > 16:
            raise HTTPException(404, "no such segment")
        data = provider.segment(_stream(stream), int(number))
        if data is None:
            raise HTTPException(404, f"segment {number} of {stream!r} is not held here")
        return Response(data, media_type=TS, headers={"Cache-Control": "max-age=3600"})


def build_app(
    live: Playlists | None, vod: Playlists | None, status: Callable[[], dict[str, Any]]
) -> FastAPI:
    app = FastAPI(title="hp2p media", docs_url=None, redoc_url=None, openapi_url=None)
    if live is not None:
        _mount(app, "live", live)
        _mount_page(app)
    if vod is not None:
        _mount(app, "vod", vod)

    @app.get("/status")
    async def get_status() -> Response:
        return Response(_json.encode(status()), media_type="application/json")

    return app


class MediaApi:
    """uvicorn inside the peer's event loop; ``await start()`` returns the base URL."""

    def __init__(self, app: FastAPI, listen: str) -> None:
        self.app = app
        self.host, self.port = split_host_port(listen, "api")
        if not is_loopback_host(self.host):
            raise MediaApiError(
                f"refusing to serve media on {listen}: not a loopback address (use "
                "127.0.0.1:PORT; put a reverse proxy in front to publish it)"
            )
        self.url = ""
        self._http = EmbeddedHttpServer(
            self.host, self.port, what="media API", error=MediaApiError, task_name="media-api"
        )

    async def start(self) -> str:
        self.port = self._http.bind()
        hosts = ["127.0.0.1", "localhost", "[::1]", self.host]
        self.url = await self._http.serve(TrustedHostMiddleware(self.app, allowed_hosts=hosts))
        return self.url

    async def stop(self) -> None:
        await self._http.stop()
