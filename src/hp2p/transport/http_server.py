"""uvicorn inside the caller's event loop: the one way every local HTTP API is served.

The peer's local API, the IoT state and history APIs, the chain API and the media API all
run beside a node that owns the process: its event loop, and SIGINT/SIGTERM (a clean leave),
which uvicorn would otherwise take over. Each listens on a
:func:`~hp2p.transport.listen.listening_socket` (no Nagle delay), reports a port it cannot
use in one line naming it, and waits for uvicorn's start-up rather than polling for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from hp2p.transport.bind_errors import bind_error_message
from hp2p.transport.listen import listening_socket

__all__ = ["EmbeddedHttpServer"]


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers, telling when its start-up is over."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the node owns SIGINT/SIGTERM
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


class EmbeddedHttpServer:
    """``bind()`` then ``await serve(app)`` (or ``await start(app)``), ``await stop()``.

    ``what`` names the API in errors ("local API"); ``error`` is the exception type its
    caller reports them with. ``force_exit`` stops without waiting for open streams, for
    APIs whose streams never end by themselves.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        what: str,
        error: type[Exception],
        task_name: str,
        force_exit: bool = False,
        **config: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.what = what
        self.error = error
        self.task_name = task_name
        self.force_exit = force_exit
        self.config = config
        self.url = ""
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> int:
        """Listen now (the port is known before the app is built); the bound port."""
        try:
            self._sock = listening_socket(self.host, self.port)
        except OSError as exc:
            detail = bind_error_message(exc, self.host, self.port, "--api")
            raise self.error(f"{self.what}: {detail}") from None
        self.port = int(self._sock.getsockname()[1])
        return self.port

    async def serve(self, app: Any, start_timeout: float = 10.0) -> str:
        """Serve ``app`` on the bound socket; the base URL once uvicorn has started."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", **self.config
        )
        server = self._server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[self._sock]), name=self.task_name)
        started = asyncio.ensure_future(server.ready.wait())
        await asyncio.wait(
            [self._task, started], timeout=start_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        started.cancel()
        if not server.started:
            await self.stop()
            raise self.error(f"the {self.what} did not start (see the log above)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        return self.url

    async def start(self, app: Any) -> str:
        self.bind()
        return await self.serve(app)

    def close_socket(self) -> None:
        """Give the port back when the caller gives up between ``bind`` and ``serve``."""
        if self._sock is not None and self._server is None:
            self._sock.close()
            self._sock = None

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = self.force_exit
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 3.0)
        self.close_socket()
