"""A fault-injecting transport: delay, jitter, loss, reordering and partitions per link.

The kernel here has no ``netem``, so hp2p makes its own bad networks. Faults act on the sending
side of a link, frame by frame, which is what a peer observes of a real lossy path: whole R2
messages that arrive late, out of order, or never. Every link draws from its own
``random.Random`` seeded from (plan seed, local name, remote name), so the same plan gives the
same faults on every run, independent of what other links do.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

from hp2p.transport.base import Link, LinkStats


@dataclass(frozen=True)
class LinkFaults:
    """What to do to the frames of one link. Times in seconds, probabilities in [0, 1]."""

    delay: float = 0.0
    jitter: float = 0.0  # uniform extra delay in [0, jitter]; FIFO order is kept
    loss: float = 0.0
    reorder: float = 0.0  # probability that a frame skips the FIFO and gets extra delay
    reorder_delay: float = 0.005

    def __post_init__(self) -> None:
        for name in ("loss", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        for name in ("delay", "jitter", "reorder_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def is_clean(self) -> bool:
        return self == LinkFaults()


@dataclass
class FaultPlan:
    """The faults of a whole process: a default, per-remote overrides and partitions.

    ``partitioned`` holds remote names (addresses) that are cut off: nothing is sent to them
    until :meth:`heal` is called. The plan is shared by all links of a process and may be changed
    while they run (tests cut and heal partitions this way).
    """

    seed: int = 0
    default: LinkFaults = field(default_factory=LinkFaults)
    per_remote: dict[str, LinkFaults] = field(default_factory=dict)
    partitioned: set[str] = field(default_factory=set)

    def faults_for(self, remote: str) -> LinkFaults:
        return self.per_remote.get(remote, self.default)

    def partition(self, *remotes: str) -> None:
        self.partitioned.update(remotes)

    def heal(self, *remotes: str) -> None:
        if remotes:
            self.partitioned.difference_update(remotes)
        else:
            self.partitioned.clear()

    def rng_for(self, local: str, remote: str) -> random.Random:
        digest = hashlib.blake2b(
            f"{self.seed}\x00{local}\x00{remote}".encode(), digest_size=8
        ).digest()
        return random.Random(int.from_bytes(digest, "big"))

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> FaultPlan:
        """Read ``delay=0.02,jitter=0.005,loss=0.01,reorder=0.001`` (the CLI form)."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or key not in ("delay", "jitter", "loss", "reorder", "reorder_delay"):
                raise ValueError(
                    f"bad fault setting {item!r}; use e.g. delay=0.02,jitter=0.005,loss=0.01"
                )
            try:
                values[key] = float(raw)
            except ValueError:
                raise ValueError(f"bad number in fault setting {item!r}") from None
        return cls(seed=seed, default=LinkFaults(**values))


class FaultyLink:
    """Wraps a real link and applies the plan's faults to every frame it sends."""

    def __init__(self, inner: Link, plan: FaultPlan, *, local: str, remote: str) -> None:
        self._inner = inner
        self._plan = plan
        self._remote_name = remote
        self._rng = plan.rng_for(local, remote)
        self._fifo: deque[tuple[float, bytes]] = deque()
        self._fifo_timer: asyncio.TimerHandle | None = None
        self._pending: dict[int, asyncio.TimerHandle] = {}
        self._tokens = itertools.count()

    @property
    def stats(self) -> LinkStats:
        return self._inner.stats

    @property
    def remote(self) -> str:
        return self._inner.remote

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def inner(self) -> Link:
        return self._inner

    def send_frame(self, frame: bytes) -> bool:
        if self._inner.closed:
            return False
        if self._remote_name in self._plan.partitioned:
            self._inner.stats.injected_drops += 1
            return True  # the sender cannot tell a partition from a slow network
        faults = self._plan.faults_for(self._remote_name)
        if faults.is_clean:
            return self._inner.send_frame(frame)
        rng = self._rng
        if faults.loss and rng.random() < faults.loss:
            self._inner.stats.injected_drops += 1
            return True
        delay = faults.delay + (rng.uniform(0.0, faults.jitter) if faults.jitter else 0.0)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if faults.reorder and rng.random() < faults.reorder:
            # This frame leaves the FIFO: it overtakes or falls behind its neighbours.
            token = next(self._tokens)
            due = now + delay + rng.uniform(0.0, faults.reorder_delay)
            self._pending[token] = loop.call_at(due, self._deliver_reordered, token, frame)
            return True
        if delay <= 0 and not self._fifo:
            return self._inner.send_frame(frame)
        # Jitter alone must not reorder: frames wait in a FIFO released by one timer.
        due = max(now + delay, self._fifo[-1][0] if self._fifo else 0.0)
        self._fifo.append((due, frame))
        if self._fifo_timer is None:
            self._fifo_timer = loop.call_at(due, self._release_fifo)
        return True

    def _release_fifo(self) -> None:
        self._fifo_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._fifo and self._fifo[0][0] <= now:
            self._inner.send_frame(self._fifo.popleft()[1])
        if self._fifo:
            self._fifo_timer = loop.call_at(self._fifo[0][0], self._release_fifo)

    def _deliver_reordered(self, token: int, frame: bytes) -> None:
        self._pending.pop(token, None)
        self._inner.send_frame(frame)

    def close(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        if self._fifo_timer is not None:
            self._fifo_timer.cancel()
            self._fifo_timer = None
        self._fifo.clear()
        self._inner.close()
