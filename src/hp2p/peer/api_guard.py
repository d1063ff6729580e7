"""What stands in front of a peer's local API: token, Host, Origin and body size (issue #11).

The local HTTP/WebSocket API (:mod:`hp2p.peer.local_api`) publishes into the overlay on the
peer's behalf, so whoever reaches it speaks for the peer. Binding it to 127.0.0.1 is not
enough: every local user and every web page open in a local browser can reach 127.0.0.1. This
pure ASGI middleware (no web framework imported) refuses, in this order:

1. a ``Host`` header that is not a loopback name or address or the address the API is bound
   to: ``421`` (a DNS-rebinding page reaches 127.0.0.1 under its own name); none, or more
   than one: ``400``;
2. an ``Origin`` header, when there is one, other than the API's own origin
   (``http://`` + the Host): ``403`` (a cross-site page's fetch or WebSocket; browsers always
   send Origin on those, programs such as curl send none);
3. a request without the peer's bearer token: ``401``. HTTP takes it only as
   ``Authorization: Bearer <token>`` (query strings end up in logs); a WebSocket also as the
   ``token`` query parameter or the subprotocol ``hp2p-token.<token>``, because a browser
   cannot set headers on a WebSocket;
4. a request body over ``max_body`` bytes: ``413`` as soon as the limit is passed, from the
   ``Content-Length`` before any of the body is read, or while a chunked body streams in;
   never more than ``max_body`` plus one chunk is kept. A refused body that is small (declared
   at most ``DRAIN_SLACK`` over the limit) is read and dropped so that the client gets its
   answer; after any other refusal the connection is closed and nothing more is read.

A WebSocket is refused with the same status codes when the server supports the ASGI denial
response (uvicorn does), else closed with 1008 before it is accepted. The token is compared
in constant time. :class:`QuietDenials` keeps uvicorn from logging an error for each denied
WebSocket (its sans-IO WebSocket protocol does so after a correct denial response), so that a
flood of refused handshakes does not flood the peer's log.

The token itself is made and kept by :func:`new_token` and :func:`write_token_file`: 32 random
bytes, in a file of mode 0600 in a directory only this user can enter.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "SUBPROTOCOL",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "ApiGuard",
    "GuardStats",
    "QuietDenials",
    "new_token",
    "runtime_dir",
    "token_file_name",
    "write_token_file",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

#: A browser offers ``["hp2p", "hp2p-token.<token>"]``; the API accepts with ``hp2p``.
SUBPROTOCOL = "hp2p"
TOKEN_SUBPROTOCOL_PREFIX = "hp2p-token."
#: The key of the scope where the guard leaves the subprotocol the endpoint accepts with.
SUBPROTOCOL_SCOPE_KEY = "hp2p.subprotocol"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: A refused request's body up to this much over ``max_body`` is read and dropped so that the
#: client gets its answer; a larger one ends the connection (see ``_discard_small_body``).
DRAIN_SLACK = 1024 * 1024


@dataclass
class GuardStats:
    """What the guard refused and how much request body it read (for status and tests)."""

    unauthorized: int = 0
    bad_host: int = 0
    bad_origin: int = 0
    too_large: int = 0
    body_bytes_read: int = 0


class QuietDenials(logging.Filter):
    """Drops uvicorn's error line for a WebSocket the guard refused (see the module docstring).

    uvicorn 0.54 answers the ASGI denial response correctly, then logs "ASGI callable returned
    without completing handshake" because the handshake never completed. The endpoints of the
    local API always accept before they return, so that line only ever follows a denial.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe (also valid in a WebSocket subprotocol)."""
    return secrets.token_urlsafe(32)


def runtime_dir() -> Path:
    """Where a peer without a state directory keeps its token: private to this user.

    ``$XDG_RUNTIME_DIR/hp2p`` when the session has one (tmpfs, per user), else
    ``<tmp>/hp2p-<uid>``. The directory is created 0700; an existing one that is a symlink,
    belongs to another user or is open to others is refused, so nobody can plant or read the
    token file there.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "hp2p" if base else Path(tempfile.gettempdir()) / f"hp2p-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if (
        stat.S_ISLNK(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise PermissionError(
            f"{path} is not a private directory of this user (owner, mode or symlink); "
            "remove it or set XDG_RUNTIME_DIR"
        )
    return path


def token_file_name(peer_id: str, port: int) -> str:
    """``api-<peer-id>-<port>.token``, the peer-id reduced to characters safe in a file name."""
    return f"api-{re.sub(r'[^A-Za-z0-9_.-]', '_', peer_id)}-{port}.token"


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` with mode 0600 (also when the file existed with another)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode("ascii") + b"\n")
    finally:
        os.close(fd)


def _host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    return name if sep and port.isdigit() else value


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name; the first of repeated ones."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name not in out:
            out[name] = raw_value.decode("latin-1")
    return out


class ApiGuard:
    """ASGI middleware enforcing the rules of the module docstring before ``app`` sees a request.

    ``allowed_hosts``: the names a Host header may carry (loopback names are always allowed);
    None when the API listens on every interface (``--api-public`` with 0.0.0.0), where this
    host's names are not known in advance: the token still protects it. ``token`` None keeps
    every other rule but asks for no token (read-only APIs whose data is open anyway, and
    APIs whose requests carry their own signatures).
    """

    def __init__(
        self,
        app: Asgi,
        *,
        token: str | None,
        max_body: int,
        allowed_hosts: frozenset[str] | None,
    ) -> None:
        self.app = app
        self._token = None if token is None else token.encode("ascii")
        self.max_body = max_body
        self.allowed_hosts = (
            None if allowed_hosts is None else LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}
        )
        self.stats = GuardStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        hosts = sum(1 for name, _ in scope.get("headers", ()) if name.lower() == b"host")
        if hosts != 1:
            self.stats.bad_host += 1
            await self._deny(
                scope, receive, send, 400, f"exactly one Host header is needed, got {hosts}"
            )
            return
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            self.stats.bad_host += 1
            await self._deny(
                scope,
                receive,
                send,
                421,
                f"Host {host!r} is not this API's address; use http://127.0.0.1:PORT "
                "(names that merely resolve to loopback are refused: DNS rebinding)",
            )
            return
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{host}".lower():
            self.stats.bad_origin += 1
            await self._deny(
                scope,
                receive,
                send,
                403,
                f"Origin {origin!r} is not this API's own origin; cross-site requests are refused",
            )
            return
        if not self._authorized(scope, headers):
            self.stats.unauthorized += 1
            await self._deny(
                scope,
                receive,
                send,
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>' with the token "
                "from the peer's joined line or its token file",
                [(b"www-authenticate", b'Bearer realm="hp2p-peer"')],
            )
            return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        await self._http_with_body_limit(scope, receive, send, headers)

    # --- the token ------------------------------------------------------------------------------
    def _matches(self, candidate: str) -> bool:
        assert self._token is not None
        return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), self._token)

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        if self._token is None:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(value.strip()):
            return True
        if scope["type"] != "websocket":
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if any(self._matches(value) for value in query.get("token", ())):
            return True
        offered: list[str] = list(scope.get("subprotocols") or ())
        for protocol in offered:
            if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX) and self._matches(
                protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :]
            ):
                # the server must answer with a subprotocol the browser offered
                scope[SUBPROTOCOL_SCOPE_KEY] = SUBPROTOCOL if SUBPROTOCOL in offered else protocol
                return True
        return False

    # --- the body -------------------------------------------------------------------------------
    async def _http_with_body_limit(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]
    ) -> None:
        """Read the body up to ``max_body`` (413 past it), then hand it to the app in one piece."""
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was complete
            body: bytes = message.get("body", b"")
            total += len(body)
            self.stats.body_bytes_read += len(body)
            if total > self.max_body:
                chunks.clear()
                await self._too_large(scope, receive, send, mid_body=True)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, *, mid_body: bool = False
    ) -> None:
        self.stats.too_large += 1
        await self._deny(
            scope,
            receive,
            send,
            413,
            f"request body larger than {self.max_body} bytes, the most this peer publishes in "
            "one message; split it",
            mid_body=mid_body,
        )

    async def _discard_small_body(self, scope: Scope, receive: Receive) -> bool:
        """Read and drop the body of a refused request if it is small; False: close instead.

        A server that closes a connection while the client is still sending makes the
        client's kernel see a reset, and the client may lose the answer. So a body declared no
        larger than ``max_body + DRAIN_SLACK`` is read to its end and dropped (bounded, never
        kept) and the connection lives on; a larger one, a chunked one or a body half read
        is not read further: the answer goes out with ``Connection: close``.
        """
        headers = _headers(scope)
        length = headers.get("content-length")
        if "transfer-encoding" in headers:
            return False
        if length is None:
            return True  # no body
        if not length.isdigit() or int(length) > self.max_body + DRAIN_SLACK:
            return False
        remaining = int(length)
        while remaining > 0:
            message = await receive()
            if message["type"] != "http.request":
                return False
            size = len(message.get("body", b""))
            self.stats.body_bytes_read += size
            remaining -= size
            if not message.get("more_body", False):
                break
        return True

    # --- refusing -------------------------------------------------------------------------------
    async def _deny(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        detail: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        mid_body: bool = False,
    ) -> None:
        body = json.dumps({"detail": detail}).encode("utf-8")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            *(extra or []),
        ]
        if scope["type"] == "http":
            if mid_body or not await self._discard_small_body(scope, receive):
                # the rest of the body is never read, not even to find the next request
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
