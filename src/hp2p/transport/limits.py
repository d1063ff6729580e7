"""One memory budget for every R2 connection of a peer process (issue #11, "Trust").

The stream decoder (:class:`hp2p.wire.r2.StreamDecoder`) bounds one frame (16 MiB by default)
and refuses a larger one as soon as its header is read. That bound is per connection: 60
connections that each start a 16 MiB frame and never finish it took a peer from 56 MB to over
1 GB in three seconds. Anyone can reach an R2 port (ARCHITECTURE.md, "Trust by default"), so
the peer needs limits that hold for the whole process, whoever connects:

* **buffered bytes**: the bytes held for incomplete frames, summed over all connections, stay
  under ``buffered_bytes``. When a connection's growth would pass it, the connection holding
  the *most* buffered bytes is closed (usually the one growing), so an honest link sending
  small frames is never the victim of many large partial ones;
* **frame deadline**: a frame that has started must be complete within ``frame_deadline``
  seconds, else its connection is closed. This is what frees a slow-loris sender's share;
* **unidentified connections**: at most ``max_unidentified`` accepted connections may be
  waiting for their first complete frame (they are counted from the accept; the first frame
  must also come within ``frame_deadline``). Further ones are refused at once: a flood of idle
  sockets cannot hold the peer's file descriptors and buffers.

This module only keeps the accounts (no I/O, no clock): :class:`hp2p.transport.tcp.TcpLink`
charges it as it reads, arms the deadline timers and closes what the budget names. Every close
is logged once with its reason and counted in :class:`BudgetStats` (the peer's status shows
them under ``r2_limits``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = [
    "DEFAULT_BUFFERED_BYTES",
    "DEFAULT_FRAME_DEADLINE",
    "DEFAULT_MAX_UNIDENTIFIED",
    "BudgetStats",
    "BufferHolder",
    "R2Budget",
    "R2Limits",
]

DEFAULT_BUFFERED_BYTES = 64 * 1024 * 1024
DEFAULT_FRAME_DEADLINE = 30.0
DEFAULT_MAX_UNIDENTIFIED = 64


@dataclass(frozen=True, slots=True)
class R2Limits:
    """The three process-wide limits; see the module docstring for what each protects."""

    buffered_bytes: int = DEFAULT_BUFFERED_BYTES
    frame_deadline: float = DEFAULT_FRAME_DEADLINE
    max_unidentified: int = DEFAULT_MAX_UNIDENTIFIED

    def __post_init__(self) -> None:
        if self.buffered_bytes <= 0 or self.frame_deadline <= 0 or self.max_unidentified <= 0:
            raise ValueError(
                "R2 limits must be greater than 0: "
                f"buffered_bytes={self.buffered_bytes}, frame_deadline={self.frame_deadline}, "
                f"max_unidentified={self.max_unidentified}"
            )


@dataclass
class BudgetStats:
    """What the budget did, for a person asking why a peer closed connections."""

    peak_buffered: int = 0  # most bytes held for incomplete frames at once (after evictions)
    budget_closes: int = 0  # connections closed because the shared budget was full
    deadline_closes: int = 0  # connections closed because a frame did not complete in time
    unidentified_refused: int = 0  # accepted connections refused: too many unidentified


class BufferHolder(Protocol):
    """A connection that holds buffered bytes and can be told to go."""

    def refuse(self, reason: str) -> None:
        """Close now (no flush) because of ``reason``; release its charge with the budget."""
        ...


class R2Budget:
    """The accounts of one peer process; shared by all its R2 connections."""

    def __init__(self, limits: R2Limits | None = None) -> None:
        self.limits = limits or R2Limits()
        self.stats = BudgetStats()
        self._charged: dict[BufferHolder, int] = {}
        self._unidentified: dict[BufferHolder, None] = {}  # insertion-ordered set
        self._buffered = 0

    @property
    def buffered(self) -> int:
        """Bytes held now for incomplete frames, over every connection."""
        return self._buffered

    @property
    def unidentified(self) -> int:
        """Accepted connections that have not completed a frame yet."""
        return len(self._unidentified)

    def admit(self, holder: BufferHolder) -> bool:
        """Count a newly accepted connection as unidentified; False: refuse it (counted)."""
        if len(self._unidentified) >= self.limits.max_unidentified:
            self.stats.unidentified_refused += 1
            return False
        self._unidentified[holder] = None
        return True

    def identified(self, holder: BufferHolder) -> None:
        """The connection completed a frame: it no longer takes an unidentified slot."""
        self._unidentified.pop(holder, None)

    def charge(self, holder: BufferHolder, buffered: int) -> bool:
        """``holder`` now holds ``buffered`` bytes; False if it was refused for it.

        When the total passes the budget, the largest holders are refused (each told through
        :meth:`BufferHolder.refuse`) until it fits again; ``holder`` may be among them.
        """
        old = self._charged.get(holder, 0)
        if buffered:
            self._charged[holder] = buffered
        else:
            self._charged.pop(holder, None)
        self._buffered += buffered - old
        limit = self.limits.buffered_bytes
        survived = True
        while self._buffered > limit:
            victim = max(self._charged, key=self._charged.__getitem__)
            held = self._charged[victim]
            self.release(victim)
            self.stats.budget_closes += 1
            if victim is holder:
                survived = False
            victim.refuse(
                f"R2 buffer budget full: incomplete frames would hold {self._buffered + held} "
                f"bytes, over r2_buffered_bytes={limit}; closed the connection holding the "
                f"most ({held} bytes)"
            )
        self.stats.peak_buffered = max(self.stats.peak_buffered, self._buffered)
        return survived

    def release(self, holder: BufferHolder) -> None:
        """The connection is gone (or going): drop its charge and its unidentified slot."""
        self._buffered -= self._charged.pop(holder, 0)
        self._unidentified.pop(holder, None)

    def status(self) -> dict[str, Any]:
        """JSON-ready: the limits, what is held now, and the counters."""
        return {
            "buffered_bytes": self._buffered,
            "unidentified": len(self._unidentified),
            "limit_buffered_bytes": self.limits.buffered_bytes,
            "frame_deadline": self.limits.frame_deadline,
            "max_unidentified": self.limits.max_unidentified,
            **asdict(self.stats),
        }
