"""R2 over TCP: the reference's TCP profile (etri-2023-protocol.md §7.3), done right.

The reference read frames with a single ``recv(n)`` and no loop, so one partial read corrupted
the stream. Here every connection owns a ``StreamDecoder`` that reassembles frames from any
split, and every link has a bounded send queue: when a slow peer cannot keep up, frames are
refused and counted (the caller learns it from ``send_frame``'s return value and from
``LinkStats.overflow_drops``) instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from hp2p.transport.base import LinkEvents, LinkStats
from hp2p.wire.errors import WireError
from hp2p.wire.r2 import StreamDecoder

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


def parse_tcp_address(address: str) -> tuple[str, int]:
    """Split ``tcp://HOST:PORT`` (the form used in HOMP and HELLO) into host and port."""
    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(
            f"not a TCP peer address: {address!r}; expected tcp://HOST:PORT, "
            "e.g. tcp://127.0.0.1:7000"
        )
    return parts.hostname, parts.port


def format_tcp_address(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class TcpLink(asyncio.Protocol):
    """One TCP connection carrying R2 frames in both directions."""

    def __init__(
        self,
        events: LinkEvents | None = None,
        *,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        on_accept: Callable[[TcpLink], LinkEvents] | None = None,
    ) -> None:
        self._events = events
        self._on_accept = on_accept
        self._transport: asyncio.Transport | None = None
        self._decoder = StreamDecoder(max_payload=max_payload)
        self._max_queue_bytes = max_queue_bytes
        self._closed = False
        self._remote = "tcp://?"
        self.stats = LinkStats()

    # -- Link surface ----------------------------------------------------------------------------
    @property
    def remote(self) -> str:
        return self._remote

    @property
    def closed(self) -> bool:
        return self._closed

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

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._remote = format_tcp_address(str(peer[0]), int(peer[1]))
        if self._events is None and self._on_accept is not None:
            self._events = self._on_accept(self)

    def data_received(self, data: bytes) -> None:
        self.stats.bytes_received += len(data)
        try:
            messages = self._decoder.feed(data)
        except WireError as err:
            self.stats.protocol_errors += 1
            log.warning("closing %s: malformed R2 stream: %s", self._remote, err)
            if self._events is not None:
                self._guard(self._events.on_protocol_error, err)
            self.close()
            return
        events = self._events
        if events is None:
            return
        for message in messages:
            self.stats.frames_received += 1
            self._guard(events.on_message, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._events is not None:
            self._guard(self._events.on_closed, exc)

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
) -> TcpLink:
    """Open a link to ``tcp://HOST:PORT``; raises OSError/TimeoutError when it cannot."""
    host, port = parse_tcp_address(address)
    loop = asyncio.get_running_loop()
    _, link = await asyncio.wait_for(
        loop.create_connection(
            lambda: TcpLink(events, max_queue_bytes=max_queue_bytes, max_payload=max_payload),
            host,
            port,
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
) -> asyncio.Server:
    """Accept links on HOST:PORT (port 0 picks a free one; read it from the server's socket)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: TcpLink(
            on_accept=on_accept, max_queue_bytes=max_queue_bytes, max_payload=max_payload
        ),
        host,
        port,
    )
