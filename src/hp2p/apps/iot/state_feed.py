"""The shell around :class:`~hp2p.apps.iot.state.LiveState`: deliveries in, change streams out.

:class:`StateFeed` reads a peer's deliveries, hands those of app-id ``hp2p-iot`` to the
state (others are counted and ignored) and wakes the stream clients. A stream client does not
get a queue of its own: it keeps a *cursor* (the last version it was sent) into the state's
bounded change log and reads at most a few changes at a time, so a client that reads slowly
holds almost nothing. One that falls so far behind that the changes it missed left the log
gets a ``resync`` message (a full snapshot) and goes on from there: memory stays bounded
whatever the clients do, and the peer never waits for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hp2p.apps.iot.reading import APP_ID
from hp2p.apps.iot.state import Change, LiveState
from hp2p.peer.subscription import Delivery

if TYPE_CHECKING:
    from hp2p.apps.iot.mqtt_out import MqttOut

__all__ = ["FeedStats", "StateFeed"]

#: Seconds between keep-alive messages on an idle stream (a proxy or client may time out).
KEEPALIVE = 15.0


@dataclass
class FeedStats:
    deliveries: int = 0
    other_app_ids: int = 0
    lost: int = 0  # deliveries dropped by the peer because this member read too slowly
    stream_clients: int = 0
    streams_refused: int = 0
    resyncs: int = 0


class StateFeed:
    """Feeds ``state`` from deliveries; serves change streams to at most ``max_clients``."""

    def __init__(
        self,
        state: LiveState,
        *,
        mqtt_out: MqttOut | None = None,
        max_clients: int = 64,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[Change], None] | None = None,
    ) -> None:
        self.state = state
        self.mqtt_out = mqtt_out
        self.max_clients = max_clients
        self.clock = clock
        self.on_change = on_change
        self.stats = FeedStats()
        self._pulse = asyncio.Event()

    def deliver(self, delivery: Delivery) -> Change | None:
        """One delivery from the tree (never waits)."""
        self.stats.deliveries += 1
        self.stats.lost += delivery.lost
        if delivery.app_id != APP_ID:
            self.stats.other_app_ids += 1
            return None
        change = self.state.apply_bytes(delivery.data, self.clock())
        if change is None:
            return None
        if self.mqtt_out is not None and change.reading is not None:
            self.mqtt_out.offer(change.reading)
        if self.on_change is not None:
            self.on_change(change)
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()
        return change

    async def pump(self, deliveries: AsyncIterator[Delivery]) -> None:
        """Feed the state until ``deliveries`` ends (the peer left)."""
        async for delivery in deliveries:
            self.deliver(delivery)

    def status(self) -> dict[str, Any]:
        return {
            "topics": len(self.state),
            "max_topics": self.state.max_topics,
            "version": self.state.version,
            "state": self.state.counters.as_dict(),
            "feed": asdict(self.stats),
            "mqtt_out": self.mqtt_out.status() if self.mqtt_out else None,
        }

    def admit(self) -> bool:
        """Count a new stream client in; False (counted) when there are ``max_clients``."""
        if self.stats.stream_clients >= self.max_clients:
            self.stats.streams_refused += 1
            return False
        self.stats.stream_clients += 1
        return True

    def leave(self) -> None:
        self.stats.stream_clients -= 1

    def _snapshot(self, kind: str, prefix: str) -> dict[str, Any]:
        return {"type": kind, **self.state.snapshot(self.clock(), prefix)}

    async def messages(
        self, since: int | None, prefix: str = "", keepalive: float = KEEPALIVE
    ) -> AsyncGenerator[dict[str, Any] | None]:
        """A client's stream: a ``snapshot`` first (or the changes after ``since`` when the
        log still has them, else a ``resync`` snapshot), then ``change`` and ``remove``
        messages under ``prefix``; None after ``keepalive`` idle seconds. Endless."""
        log = self.state.log
        if since is None:
            first = self._snapshot("snapshot", prefix)
            cursor = int(first["version"])
            yield first
        else:
            cursor = since
        while True:
            pending = log.since(cursor)
            if pending is None:
                self.stats.resyncs += 1
                again = self._snapshot("resync", prefix)
                cursor = int(again["version"])
                yield again
                continue
            if not pending:
                try:
                    await asyncio.wait_for(self._pulse.wait(), keepalive)
                except TimeoutError:
                    yield None
                continue
            for change in pending:
                cursor = change.version
                if change.topic.startswith(prefix):
                    yield change.as_json(self.clock())
