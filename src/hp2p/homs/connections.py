"""Connection guard of the HOMS: no idle or slowloris connection holds it (issue #11).

uvicorn closes a keep-alive connection idle between requests (``timeout_keep_alive``) but has
no deadline for the request itself: a client that sends its headers one byte every few seconds,
or announces a body and never sends it, holds a connection (and a file descriptor, and the
request's coroutine) for ever, and a few thousand of them exhaust the process. This module adds

* a **header deadline**: the request line and headers must be complete within
  ``header_timeout`` seconds of the connection (or of the first byte of the next request on a
  keep-alive connection);
* a **body deadline**: the body must be complete within ``body_timeout`` seconds of the headers;
* a **connection cap**: at most ``max_connections`` HTTP connections. When a new one arrives at
  the cap, the connection idle the longest (waiting for a request, not being answered) is
  closed to make room; only when every connection is busy is the new one refused. So idle
  sockets cannot shut a real client out, while busy ones are never cut.

It is a subclass of uvicorn's httptools protocol (the one the HOMS runs with), hooked on the
parser callbacks; uvicorn takes the class as ``Config(http=…)``. WebSocket connections leave
the guard when they upgrade (the signalling layer has its own limits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("hp2p.homs.connections")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The guard's settings (``hp2p homs --header-timeout … --max-connections``)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000


@dataclass
class ConnectionGuard:
    """The HTTP connections of one server, for the cap and the eviction of idle ones."""

    limits: ConnectionLimits
    open: dict[GuardedHttpProtocol, None] = field(default_factory=dict)
    refused: int = 0
    evicted: int = 0
    timed_out: int = 0

    def admit(self, newcomer: GuardedHttpProtocol) -> bool:
        """Make room for ``newcomer``; False if every connection is busy (refuse it)."""
        while len(self.open) >= self.limits.max_connections:
            idle = [p for p in self.open if p.is_idle()]
            if not idle:
                self.refused += 1
                return False
            oldest = min(idle, key=lambda p: p.idle_since)
            self.evicted += 1
            oldest.drop("evicted: the HOMS is at --max-connections")
        self.open[newcomer] = None
        return True

    def forget(self, protocol: GuardedHttpProtocol) -> None:
        self.open.pop(protocol, None)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body deadlines and the connection cap."""

    guard: ConnectionGuard  # set on the subclass made by :func:`guarded_protocol`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False  # between the first byte of a request and its last
        self._busy = False  # headers complete, not yet answered
        self.idle_since = time.monotonic()

    # -- state -----------------------------------------------------------------------------
    def is_idle(self) -> bool:
        """Waiting for a request (or in its headers): nothing the app is working on."""
        return not self._busy

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        self.guard.timed_out += 1
        self.drop(f"{what} not complete in time")

    def drop(self, why: str) -> None:
        """Close the connection now (no answer: the client is not speaking HTTP in time)."""
        log.debug("closing connection from %s: %s", self.client, why)
        self._disarm()
        self.guard.forget(self)  # now: the transport reports the loss only later
        if not self.transport.is_closing():
            self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            self.drop("refused: every connection is busy (--max-connections)")
            return
        self._arm(self.guard.limits.header_timeout, "request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.forget(self)
        super().connection_lost(exc)

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_request:
            self._in_request = True
            if self._deadline is None:  # a later request on a keep-alive connection
                self._arm(self.guard.limits.header_timeout, "request headers")

    def on_headers_complete(self) -> None:
        self._busy = True
        self._arm(self.guard.limits.body_timeout, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_request = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._busy = False
        self.idle_since = time.monotonic()
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        self.guard.forget(self)
        super().handle_websocket_upgrade()


def guarded_protocol(limits: ConnectionLimits) -> tuple[type[GuardedHttpProtocol], ConnectionGuard]:
    """A protocol class for ``uvicorn.Config(http=…)`` bound to a fresh guard, and the guard."""
    guard = ConnectionGuard(limits)
    protocol = type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})
    return protocol, guard
