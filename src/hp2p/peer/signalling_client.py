"""A peer's one WebSocket to the HOMS signalling channel (etri-2023-protocol.md §2.8).

WebRTC links are dialled by peer-id: offers, answers and candidates travel through the HOMS,
which relays every message with a ``toid`` to the socket registered under that peer-id. A peer
process keeps exactly one such socket, shared by its WebRTC dialer and listener, so that the
HOMS sees one registration per peer (a second socket for the same peer-id would be refused as
a takeover on a credentials overlay).

Registration (``hello``) happens once the peer has joined at the HOMP level, because what it
proves comes from the join:

* on a ``credentials`` overlay the hello carries the membership credential, the HOMS answers a
  nonce (``challenge``) and the peer signs it (``prove``, :mod:`hp2p.trust.hello`); the
  registration is confirmed by ``{"action":"registered"}``;
* otherwise (``reference-compat``) the hello carries the peer's HOMP password, which the HOMS
  checks against the stored hash; no confirmation follows, only an error if refused.

A dropped socket is reopened and the hello repeated, a bounded number of times in a row (a
registration that succeeds resets the count), so a HOMS restart does not end WebRTC for good
but a HOMS that keeps refusing does not make the peer spin. This module does not import aiortc:
it only moves JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from hp2p.trust import hello as hello_proof
from hp2p.trust.credential import decode as decode_credential
from hp2p.trust.keys import SigningKey

log = logging.getLogger("hp2p.peer.signalling")

#: Reopened sockets in a row (without a registration in between) before giving up.
MAX_RECONNECTS = 5
#: Largest delay between two attempts to reopen the socket (seconds).
MAX_BACKOFF = 3.0


def signalling_url(homs_url: str) -> str:
    """The signalling WebSocket of the HOMS at ``homs_url``: ``http://H:P`` → ``ws://H:P/ws``."""
    parts = urlsplit(homs_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws"


@dataclass(frozen=True, slots=True)
class Identity:
    """What a hello proves: read again before every hello, since a refresh renews the
    credential."""

    overlay_id: str
    peer_id: str
    password: str
    #: The membership credential and its key; None on an overlay without credentials.
    credential: str | None = None
    key: SigningKey | None = None


@dataclass
class SignallingStats:
    """Counters for a person wondering why WebRTC links do not open."""

    connects: int = 0
    registrations: int = 0
    relays_sent: int = 0
    relays_received: int = 0
    errors_received: int = 0  # {"action":"error"} answers of the HOMS
    send_failures: int = 0  # a relay could not be written (socket down)


class SignallingClient:
    """One registered WebSocket; see the module docstring.

    ``on_relay`` is called with every relayed message (a dict with ``fromid`` and ``type``),
    ``on_error`` with every error the HOMS sends back (``reason``, ``field``).
    """

    def __init__(
        self,
        url: str,
        identity: Callable[[], Identity],
        *,
        on_relay: Callable[[dict[str, Any]], None],
        on_error: Callable[[dict[str, Any]], None] = lambda _m: None,
        open_timeout: float = 5.0,
        max_reconnects: int = MAX_RECONNECTS,
        backoff: float = 0.2,
    ) -> None:
        self.url = url
        self._identity = identity
        self._on_relay = on_relay
        self._on_error = on_error
        self._open_timeout = open_timeout
        self._max_reconnects = max_reconnects
        self._backoff = backoff
        self._conn: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()
        #: Set when the client has given up (too many failed reconnects) or was closed.
        self.stopped = asyncio.Event()
        self.stats = SignallingStats()
        self.failure: str | None = None

    async def start(self, within: float) -> None:
        """Open the socket and register; raises TimeoutError/OSError if not registered in time."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hp2p-signalling")
        registered = asyncio.ensure_future(self.registered.wait())
        stopped = asyncio.ensure_future(self.stopped.wait())
        try:
            _done, _ = await asyncio.wait(
                [registered, stopped], timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            registered.cancel()
            stopped.cancel()
        if not self.registered.is_set():
            reason = self.failure or f"no registration within {within:g} s"
            raise OSError(f"signalling at {self.url}: {reason}")

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one relay (it must carry ``toid``); False if the socket is not up."""
        conn = self._conn
        if conn is None or not self.registered.is_set():
            self.stats.send_failures += 1
            return False
        try:
            await conn.send(json.dumps(message, separators=(",", ":")))
        except (WebSocketException, OSError):
            self.stats.send_failures += 1
            return False
        self.stats.relays_sent += 1
        return True

    async def close(self) -> None:
        """Close the socket (the HOMS unregisters the peer-id with it)."""
        self.stopped.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)

    # -- the socket's life -------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while failures <= self._max_reconnects and not self.stopped.is_set():
            try:
                async with connect(
                    self.url, open_timeout=self._open_timeout, max_size=64 * 1024
                ) as conn:
                    self._conn = conn
                    self.stats.connects += 1
                    await self._hello(conn)
                    if self.registered.is_set():
                        failures = 0  # a password hello counts as registered once sent
                    async for raw in conn:
                        if self._handle(conn, raw):
                            failures = 0  # registered: the count of failures starts again
                        if self._challenge_reply is not None:
                            reply, self._challenge_reply = self._challenge_reply, None
                            await conn.send(reply)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                log.info("signalling socket %s failed: %s", self.url, self.failure)
            finally:
                self._conn = None
                self.registered.clear()
            failures += 1
            if self.stopped.is_set():
                break
            await asyncio.sleep(min(MAX_BACKOFF, self._backoff * 2**failures))  # back-off
        self.failure = self.failure or "closed"
        self.stopped.set()

    _challenge_reply: str | None = None

    async def _hello(self, conn: ClientConnection) -> None:
        me = self._identity()
        hello: dict[str, Any] = {"action": "hello", "peer-id": me.peer_id}
        hello["overlay-id"] = me.overlay_id
        if me.credential is not None and me.key is not None:
            hello["credential"] = me.credential
        else:
            hello["password"] = me.password
        await conn.send(json.dumps(hello, separators=(",", ":")))
        if "password" in hello:
            # the password hello has no confirmation; a refusal comes back as an error
            self._registered()

    def _registered(self) -> None:
        self.stats.registrations += 1
        self.registered.set()

    def _handle(self, conn: ClientConnection, raw: str | bytes) -> bool:
        """One message from the HOMS; True when it completed a registration."""
        try:
            message = json.loads(raw)
        except ValueError:
            log.info("signalling: a message that is not JSON, ignored")
            return False
        if not isinstance(message, dict):
            return False
        action = message.get("action")
        if action == "challenge":
            me = self._identity()
            if me.credential is None or me.key is None:
                return False
            nonce = bytes.fromhex(str(message.get("nonce", "")))
            proof = hello_proof.prove(
                me.key, me.overlay_id, me.peer_id, nonce, decode_credential(me.credential).digest
            )
            reply = {"action": "prove", "peer-id": me.peer_id, "proof": proof.hex()}
            self._challenge_reply = json.dumps(reply, separators=(",", ":"))
            return False
        if action == "registered":
            self._registered()
            return True
        if action == "error":
            self.stats.errors_received += 1
            log.info("signalling: the HOMS refused: %s", message.get("reason"))
            if message.get("field") in ("$.password", "$.credential", "$.proof"):
                self.failure = f"hello refused: {message.get('reason')}"
                self.registered.clear()
            self._on_error(message)
            return False
        if "fromid" in message:
            self.stats.relays_received += 1
            try:
                self._on_relay(message)
            except Exception:
                log.exception("signalling: handling a relay failed")
        return False
