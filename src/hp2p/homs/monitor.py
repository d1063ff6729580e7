"""Monitoring events (OSM FE, Q.4100 §7.3): an in-process publish/subscribe hub.

The store publishes one event per state change *after* its transaction commits, so a monitor
never sees a change that was rolled back (the reference pushes ``add_peer`` for a join that
then fails, etri-2023-protocol.md §2.3). Event shapes are those of the reference monitoring feed
(etri-2023-protocol.md §2.8), so the reference web UI can consume them unchanged.

The hub is deliberately small. WebSocket monitors (``hp2p.homs.ws``) subscribe to it. With
several HOMS processes on one PostgreSQL, ``hp2p.homs.fanout`` registers a *forwarder* that
sees every event published here and sends it to the other instances, and hands what they send
to :meth:`MonitorHub.deliver`, which reaches local subscribers only (so an event never
bounces back and forth between instances).

Subscribers get a bounded queue. A subscriber that falls behind by more than its bound is
not silently skipped: its subscription is closed with :class:`SubscriberLagged`, so that the
consumer knows it lost events and can re-read the current state (``GET`` status/topology).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
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


#: Wakes a consumer blocked on an empty queue when its subscription is closed.
_CLOSED: Event = {}


class Subscription:
    """One subscriber's view of the hub: registered at creation, so nothing published after
    :meth:`MonitorHub.subscribe` returns is missed, however late iteration starts.

    Iterate it (``async for event in sub``) and close it when done (or use it as an async
    context manager).
    """

    __slots__ = ("_hub", "closed", "lagged", "queue")

    def __init__(self, hub: MonitorHub, bound: int) -> None:
        self._hub = hub
        # One extra slot so that close() can always wake a consumer blocked on get().
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=bound + 1)
        self.lagged = False
        self.closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        """The next event, in order.

        Raises :class:`SubscriberLagged` once the consumer has fallen ``queue_bound`` events
        behind (after every event it did receive), and ends after :meth:`close` once the
        events published before it are consumed.
        """
        if self.lagged and self.queue.empty():
            self.close()
            raise SubscriberLagged(
                f"monitor subscriber fell more than {self._hub.queue_bound} events behind"
            )
        if self.closed and self.queue.empty():
            raise StopAsyncIteration
        event = await self.queue.get()
        if event is _CLOSED:
            raise StopAsyncIteration
        return event

    def offer(self, event: Event) -> None:
        if self.lagged or self.closed:
            return
        if self.queue.qsize() >= self._hub.queue_bound:
            self.lagged = True
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        """Stop receiving; a consumer waiting for the next event is woken and ends."""
        if self.closed:
            return
        self.closed = True
        self._hub._subs.discard(self)
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(_CLOSED)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()


class MonitorHub:
    """Fan-out of monitoring events to any number of in-process subscribers."""

    def __init__(self, queue_bound: int = 1000) -> None:
        if queue_bound < 1:
            raise ValueError(f"queue_bound must be >= 1, got {queue_bound}")
        self.queue_bound = queue_bound
        self._subs: set[Subscription] = set()
        self._forwarders: list[Callable[[Event], None]] = []

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, event: Event) -> None:
        """An event of this instance: to every subscriber and every forwarder; never blocks."""
        self.deliver(event)
        for forward in self._forwarders:
            forward(event)

    def deliver(self, event: Event) -> None:
        """An event that happened elsewhere (another HOMS instance): local subscribers only."""
        for sub in list(self._subs):
            sub.offer(event)

    def add_forwarder(self, forward: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``forward(event)`` for every event published here; returns the remover.

        ``forward`` must not block (queue the event and return).
        """
        self._forwarders.append(forward)

        def remove() -> None:
            if forward in self._forwarders:
                self._forwarders.remove(forward)

        return remove

    def publish_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.publish(event)

    def subscribe(self) -> Subscription:
        """A new subscription, receiving every event published from now on."""
        sub = Subscription(self, self.queue_bound)
        self._subs.add(sub)
        return sub
