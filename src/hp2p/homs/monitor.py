"""Monitoring events (OSM FE, Q.4100 §7.3): an in-process publish/subscribe hub.

The store publishes one event per state change *after* its transaction commits, so a monitor
never sees a change that was rolled back (the reference pushes ``add_peer`` for a join that
then fails, etri-2023-protocol.md §2.3). Event shapes are those of the reference monitoring feed
(etri-2023-protocol.md §2.8), so the reference web UI can consume them unchanged.

The hub is deliberately small: a later layer forwards it to WebSocket monitors and, with
several HOMS processes on one PostgreSQL, fans events out through LISTEN/NOTIFY by
subscribing here and publishing what it receives from other instances with
:meth:`MonitorHub.publish`.

Subscribers get a bounded queue. A subscriber that falls behind by more than its bound is
not silently skipped: its subscription is closed with :class:`SubscriberLagged`, so that the
consumer knows it lost events and can re-read the current state (``GET`` status/topology).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

Event = dict[str, Any]


class SubscriberLagged(Exception):  # noqa: N818 - it is a condition, not an error of the caller
    """The subscriber's queue overflowed; events after the last one received were lost."""


def overlay_created(overlay_id: str) -> Event:
    return {"overlay_id": overlay_id, "type": "overlay", "action": "create"}


def overlay_removed(overlay_id: str) -> Event:
    return {"overlay_id": overlay_id, "type": "overlay", "action": "remove"}


def peer_added(overlay_id: str, peer_id: str, ticket: int) -> Event:
    return {
        "overlay_id": overlay_id,
        "type": "peer",
        "action": "add_peer",
        "node": {"id": peer_id, "ticket_id": ticket},
    }


def peer_deleted(overlay_id: str, peer_id: str) -> Event:
    return {"overlay_id": overlay_id, "peer_id": peer_id, "type": "peer", "action": "delete_peer"}


def connection_updated(overlay_id: str, peer_id: str, links: list[dict[str, Any]]) -> Event:
    return {
        "overlay_id": overlay_id,
        "peer_id": peer_id,
        "type": "peer",
        "action": "update_connection",
        "links": links,
    }


def log(overlay_id: str, peer_id: str, message: str) -> Event:
    return {"overlay_id": overlay_id, "peer_id": peer_id, "type": "log", "message": message}


class _Subscription:
    __slots__ = ("lagged", "queue")

    def __init__(self, bound: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=bound)
        self.lagged = False


class MonitorHub:
    """Fan-out of monitoring events to any number of in-process subscribers."""

    def __init__(self, queue_bound: int = 1000) -> None:
        if queue_bound < 1:
            raise ValueError(f"queue_bound must be >= 1, got {queue_bound}")
        self._bound = queue_bound
        self._subs: set[_Subscription] = set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber; never blocks the publishing request."""
        for sub in list(self._subs):
            if sub.lagged:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.lagged = True

    def publish_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.publish(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        """Yield events published from now on, in order, until the consumer stops.

        Raises :class:`SubscriberLagged` once the consumer has fallen ``queue_bound`` events
        behind (after yielding every event it did receive).
        """
        sub = _Subscription(self._bound)
        self._subs.add(sub)
        try:
            while True:
                if sub.lagged and sub.queue.empty():
                    raise SubscriberLagged(
                        f"monitor subscriber fell more than {self._bound} events behind"
                    )
                yield await sub.queue.get()
        finally:
            self._subs.discard(sub)
