"""What the peer shell needs from a transport, whatever carries the frames.

A transport moves whole R2 frames between two peers. TCP (``hp2p.transport.tcp``), the
fault-injecting wrapper (``hp2p.transport.faults``) and, later, WebRTC data channels all offer
the same small surface, so the peer shell and the tests never care which one runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hp2p.wire.errors import WireError
from hp2p.wire.r2.messages import Message


@dataclass
class LinkStats:
    """Counters a person debugging a slow or lossy link wants to see."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    overflow_drops: int = 0  # frames refused because the send queue was full (back-pressure)
    injected_drops: int = 0  # frames dropped on purpose by the fault-injecting transport
    protocol_errors: int = 0


@dataclass
class LinkEvents:
    """Callbacks from a link to its owner (the peer shell)."""

    on_message: Callable[[Link, Message], None]
    on_closed: Callable[[Link, BaseException | None], None]
    on_protocol_error: Callable[[Link, WireError], None] = field(default=lambda link, err: None)
    #: The link was closed by a process-wide limit (``hp2p.transport.limits``): the reason.
    on_refused: Callable[[Link, str], None] = field(default=lambda link, reason: None)


class Link(Protocol):
    """One bidirectional path to a remote peer carrying R2 frames."""

    @property
    def stats(self) -> LinkStats: ...

    @property
    def remote(self) -> str: ...

    def send_frame(self, frame: bytes) -> bool:
        """Queue one encoded frame; False if it was refused (queue full or link closed)."""
        ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...
