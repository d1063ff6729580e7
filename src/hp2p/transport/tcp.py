"""R2 over TCP: the reference's TCP profile (etri-2023-protocol.md §7.3), done right.

The reference read frames with a single ``recv(n)`` and no loop, so one partial read corrupted
the stream. Here every connection owns a ``StreamDecoder`` that reassembles frames from any
split, and every link has a bounded send queue: when a slow peer cannot keep up, frames are
refused and counted (the caller learns it from ``send_frame``'s return value and from
``LinkStats.overflow_drops``) instead of piling up in memory.

What a connection may hold while reading is bounded per process, not only per frame: every
link of a peer charges one :class:`~hp2p.transport.limits.R2Budget` with the bytes of its
incomplete frame, a frame must complete within the budget's deadline, and accepted connections
that have not completed a frame yet are limited in number (see :mod:`hp2p.transport.limits`).
A link closed by one of these limits is aborted (nothing more is read or flushed), logged with
the reason and reported through ``LinkEvents.on_refused``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

from hp2p.transport.base import LinkEvents, LinkStats
from hp2p.transport.limits import R2Budget
from hp2p.wire.errors import WireError
from hp2p.wire.r2 import StreamDecoder

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


def parse_tcp_address(address: str, scheme: str = "tcp") -> tuple[str, int]:
    """Split ``tcp://HOST:PORT`` (the form used in HOMP and HELLO) into host and port."""
    parts = urlsplit(address)
    if parts.scheme != scheme or not parts.hostname or parts.port is None:
        if scheme == "tls":
            raise ValueError(
                f"not a TLS peer address: {address!r}; expected tls://HOST:PORT, "
                "e.g. tls://127.0.0.1:7000"
            )
        raise ValueError(
            f"not a TCP peer address: {address!r}; expected tcp://HOST:PORT, "
            "e.g. tcp://127.0.0.1:7000"
        )
    return parts.hostname, parts.port


def format_tcp_address(host: str, port: int, scheme: str = "tcp") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class TcpLink(asyncio.Protocol):
    """One TCP connection carrying R2 frames in both directions."""

    def __init__(
        self,
        events: LinkEvents | None = None,
        *,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        on_accept: Callable[[TcpLink], LinkEvents] | None = None,
        budget: R2Budget | None = None,
    ) -> None:
        self._events = events
        self._on_accept = on_accept
        self._transport: asyncio.Transport | None = None
        self._max_payload = max_payload
        self._decoder = StreamDecoder(max_payload=max_payload)
        self._max_queue_bytes = max_queue_bytes
        self._closed = False
        self._refused = False
        self._remote = "tcp://?"
        self._budget = budget
        self._identified = on_accept is None  # a link we dialled knows whom it reaches
        self._deadline: asyncio.TimerHandle | None = None
        self.stats = LinkStats()

    # -- Link surface ----------------------------------------------------------------------------
    @property
    def remote(self) -> str:
        return self._remote

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def certificate_key(self) -> bytes | None:
        """On TLS, the Ed25519 key of the certificate the other end presented; else None."""
        transport = self._transport
        if transport is None or transport.get_extra_info("ssl_object") is None:
            return None
        from hp2p.transport.tls import peer_key  # x509 parsing: only for TLS links

        return peer_key(transport.get_extra_info("ssl_object"))

    def send_frame(self, frame: bytes) -> bool:
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + len(frame) > self._max_queue_bytes:
            self.stats.overflow_drops += 1
            return False
        transport.write(frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)
        return True

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def refuse(self, reason: str) -> None:
        """Close at once for a process-wide limit: drop what is buffered, flush nothing.

        Called by the budget (which has already released this link's charge) and by the
        frame deadline. The owner hears of it through ``on_refused``, then ``on_closed``.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        self._decoder = StreamDecoder(max_payload=self._max_payload)  # frees the partial frame
        if self._budget is not None:
            self._budget.release(self)
        log.warning("closing R2 connection %s: %s", self._remote, reason)
        if self._events is not None:
            self._guard(self._events.on_refused, reason)
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._remote = format_tcp_address(str(peer[0]), int(peer[1]))
        budget = self._budget
        if budget is not None and not self._identified:
            if not budget.admit(self):
                # Refused before the owner hears of it: it never gets a connection id.
                self._refused = True
                log.warning(
                    "refusing R2 connection from %s: %d connections are already waiting for "
                    "their first frame (r2_max_unidentified)",
                    self._remote,
                    budget.limits.max_unidentified,
                )
                transport.abort()
                return
            # the first frame must come within the deadline, counted from the accept
            self._arm_deadline("no complete first frame")
        if self._events is None and self._on_accept is not None:
            self._events = self._on_accept(self)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self.stats.bytes_received += len(data)
        try:
            messages = self._decoder.feed(data)
        except WireError as err:
            self.stats.protocol_errors += 1
            log.warning("closing %s: malformed R2 stream: %s", self._remote, err)
            self._cancel_deadline()
            if self._budget is not None:
                self._budget.release(self)
            if self._events is not None:
                self._guard(self._events.on_protocol_error, err)
            self.close()
            return
        if self._budget is not None:
            self._account(bool(messages))
        events = self._events
        if events is None or self._refused:
            return  # a link the budget just closed hands nothing more to its owner
        for message in messages:
            self.stats.frames_received += 1
            self._guard(events.on_message, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_deadline()
        if self._budget is not None:
            self._budget.release(self)
        if self._events is not None:
            self._guard(self._events.on_closed, exc)

    # -- process-wide limits ---------------------------------------------------------------------
    def _account(self, completed: bool) -> None:
        """Charge the budget with the incomplete frame and keep its deadline; see the module.

        A chunk that completed a frame identifies the connection and ends that frame's
        deadline; the partial frame after it, if any, gets a deadline of its own.
        """
        budget = self._budget
        assert budget is not None
        if completed and not self._identified:
            self._identified = True
            budget.identified(self)
        buffered = self._decoder.buffered
        if not budget.charge(self, buffered):
            return  # refused: the budget closed this link
        if buffered == 0:
            if self._identified:
                self._cancel_deadline()
        elif completed or self._deadline is None:
            self._arm_deadline("frame not complete")

    def _arm_deadline(self, what: str) -> None:
        budget = self._budget
        if budget is None or self._transport is None:
            return
        self._cancel_deadline()
        seconds = budget.limits.frame_deadline
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._deadline_passed, what)

    def _deadline_passed(self, what: str) -> None:
        self._deadline = None
        if self._refused or self._closed or self._budget is None:
            return
        self._budget.stats.deadline_closes += 1
        self.refuse(
            f"{what} within r2_frame_deadline={self._budget.limits.frame_deadline:g} s "
            f"({self._decoder.buffered} bytes of it received)"
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _guard(self, callback: Callable[..., None], arg: object) -> None:
        """Run an owner callback; a bug there must not tear down the transport silently."""
        try:
            callback(self, arg)
        except Exception:
            log.exception("peer shell callback failed on link %s", self._remote)


async def connect(
    address: str,
    events: LinkEvents,
    *,
    connect_timeout: float = 5.0,
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    budget: R2Budget | None = None,
) -> TcpLink:
    """Open a link to ``tcp://HOST:PORT`` or ``tls://HOST:PORT`` (TLS 1.3, see
    :mod:`hp2p.transport.tls`); raises OSError/TimeoutError when it cannot.

    With ``budget`` what the remote sends is charged to the process's R2 budget and held to
    its frame deadline (a dialled link is identified from the start).
    """
    secure = address.lower().startswith("tls://")
    host, port = parse_tcp_address(address, "tls" if secure else "tcp")
    context = None
    if secure:
        from hp2p.transport.tls import client_context  # a TCP-only peer never loads x509

        context = client_context()
    loop = asyncio.get_running_loop()
    _, link = await asyncio.wait_for(
        loop.create_connection(
            lambda: TcpLink(
                events, max_queue_bytes=max_queue_bytes, max_payload=max_payload, budget=budget
            ),
            host,
            port,
            ssl=context,
            server_hostname="" if secure else None,
        ),
        connect_timeout,
    )
    link._remote = address
    return link


async def listen(
    host: str,
    port: int,
    on_accept: Callable[[TcpLink], LinkEvents],
    *,
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    budget: R2Budget | None = None,
    tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Accept links on HOST:PORT (port 0 picks a free one; read it from the server's socket).

    With ``budget`` every accepted link is held to the process-wide limits
    (:mod:`hp2p.transport.limits`); one refused as unidentified never reaches ``on_accept``.
    With ``tls`` (:func:`hp2p.transport.tls.server_context`) every link is TLS 1.3.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: TcpLink(
            on_accept=on_accept,
            max_queue_bytes=max_queue_bytes,
            max_payload=max_payload,
            budget=budget,
        ),
        host,
        port,
        ssl=tls,
        ssl_handshake_timeout=10.0 if tls is not None else None,
    )
