"""What a standby bridge needs to replace a SubTree source: a ledger, a liveness check.

A SubTree has one source peer, inside the active bridge. When that bridge dies, a standby
bridge joins the SubTree *under the same source peer-id* and goes on publishing. For every
SubTree peer to get every selected CoreTree message exactly once, the standby must know two
things at that moment, and it learns both by being an ordinary member of the SubTree (the
*watcher*) as well as a CoreTree peer:

* **the last sequence the source published**, because every SubTree peer's duplicate window
  already holds the failed source's sequences: the new source must number on after it
  (:meth:`hp2p.peer.core.PeerCore.continue_as_source`);
* **which selected CoreTree messages the SubTree already carries.** The tree's data messages
  carry only ``app-id`` in their extension header and the peer shell hands the application
  no other header field, so a SubTree message is matched to the CoreTree message it came from
  by content: ``(app-id, payload type, SHA-256 of the data)``. Two CoreTree messages with the
  same content are the same thing to a SubTree peer, so matching them as a multiset is exact
  for what any SubTree peer can observe. :class:`ForwardLedger` keeps that multiset difference.

The liveness check is :func:`source_answers`: an R2 HELLO_PEER sent to the source's address
with ticket 0. Every tree peer answers a HELLO with 1202, and the ticket rule (never volunteer
to an older peer) makes a ticket-0 HELLO a side-effect-free ping: it is neither relayed nor
answered with an offer. A process that died refuses the connection; one that hangs does not
answer in time. :class:`AbsenceClock` turns those answers into the takeover decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from hp2p.peer.node import Delivery
from hp2p.transport import tcp
from hp2p.transport.base import Link, LinkEvents
from hp2p.wire.r2 import encode
from hp2p.wire.r2.messages import AuthResponse, Hello, HelloResponse, Message

#: What a live tree peer answers a probe HELLO with: the HELLO answer, or, on an overlay that
#: requires credentials, the AUTH refusal its kernel sends before looking at an unadmitted
#: HELLO (docs/security.md). Either way the peer's kernel is running: that is all a probe asks.
_ALIVE = (HelloResponse, AuthResponse)

__all__ = ["AbsenceClock", "CoreKeys", "ForwardLedger", "content_key", "source_answers"]

#: The identity of a message as a SubTree peer sees it.
ContentKey = tuple[str, str, bytes]


def content_key(app_id: str | None, payload_type: str, data: bytes) -> ContentKey:
    """``app-id`` as the bridge publishes it (``etri_data`` when the CoreTree gave none)."""
    return (app_id or "etri_data", payload_type, hashlib.sha256(data).digest())


@dataclass(eq=False)
class _Pending:
    delivery: Delivery
    key: ContentKey
    live: bool = True


class ForwardLedger:
    """Selected CoreTree messages not (yet) seen on the SubTree, and the source's last sequence.

    Both streams carry the same messages, in nearly the same order, but neither is ahead for
    sure: the active bridge may sit nearer the CoreTree source than the standby (a SubTree
    message arrives before its CoreTree copy) or the SubTree may lag. So an unmatched message
    of either stream waits for its partner. What is left on the CoreTree side at a takeover is
    exactly what the failed bridge never forwarded (or forwarded to nobody who survived).

    Bounded: at most ``limit`` CoreTree messages wait (the oldest are dropped and counted in
    ``dropped``: they can no longer be replayed) and at most ``limit`` SubTree messages wait
    for their CoreTree copy (``orphans``: the oldest are forgotten; the copy, if it ever comes,
    would then be replayed once more).
    """

    def __init__(self, source_id: str, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("the ledger must hold at least 1 message")
        self.source_id = source_id
        self.limit = limit
        self.last_sequence = 0
        self.dropped = 0
        self.orphans = 0
        self.matched = 0
        self._pending: deque[_Pending] = deque()  # arrival order, with matched entries left dead
        self._by_key: dict[ContentKey, deque[_Pending]] = {}  # live entries only, oldest first
        self._live = 0
        self._early: dict[ContentKey, int] = {}  # seen on the SubTree, CoreTree copy not yet
        self._early_order: deque[ContentKey] = deque()
        self._early_count = 0

    @property
    def waiting(self) -> int:
        """CoreTree messages the SubTree does not carry yet (what a takeover would replay)."""
        return self._live

    def core_message(self, delivery: Delivery) -> None:
        """A selected CoreTree message reached the standby."""
        key = content_key(delivery.app_id, delivery.payload_type, delivery.data)
        early = self._early.get(key, 0)
        if early:
            self._take_early(key, early)
            self.matched += 1
            return
        entry = _Pending(delivery, key)
        self._pending.append(entry)
        self._by_key.setdefault(key, deque()).append(entry)
        self._live += 1
        while self._live > self.limit:
            self._drop_oldest()
        if len(self._pending) > 2 * self.limit:
            self._pending = deque(e for e in self._pending if e.live)

    def tree_message(self, delivery: Delivery) -> None:
        """The watcher got a SubTree message: forwarded, so not to be replayed."""
        if delivery.source != self.source_id:
            return  # the SubTree policy drops these already; never let one move the numbering
        self.last_sequence = max(self.last_sequence, delivery.sequence)
        key = content_key(delivery.app_id, delivery.payload_type, delivery.data)
        waiting = self._by_key.get(key)
        if waiting:
            entry = waiting.popleft()
            if not waiting:
                del self._by_key[key]
            entry.live = False
            self._live -= 1
            self.matched += 1
            self._trim()
            return
        self._early[key] = self._early.get(key, 0) + 1
        self._early_order.append(key)
        self._early_count += 1
        while self._early_count > self.limit:
            old = self._early_order.popleft()
            count = self._early.get(old, 0)
            if count:
                self._take_early(old, count)
                self.orphans += 1
        if len(self._early_order) > 2 * self.limit:
            self._early_order = deque(k for k in self._early_order if self._early.get(k))

    def unforwarded(self) -> list[Delivery]:
        """Take every waiting CoreTree message, oldest first (the replay at a takeover)."""
        out = [e.delivery for e in self._pending if e.live]
        self._pending.clear()
        self._by_key.clear()
        self._live = 0
        return out

    def _take_early(self, key: ContentKey, count: int) -> None:
        if count > 1:
            self._early[key] = count - 1
        else:
            del self._early[key]
        self._early_count -= 1

    def _drop_oldest(self) -> None:
        while self._pending:
            entry = self._pending.popleft()
            if entry.live:
                waiting = self._by_key[entry.key]
                waiting.popleft()  # the oldest live entry of its key is the oldest overall
                if not waiting:
                    del self._by_key[entry.key]
                entry.live = False
                self._live -= 1
                self.dropped += 1
                return

    def _trim(self) -> None:
        while self._pending and not self._pending[0].live:
            self._pending.popleft()


class CoreKeys:
    """The CoreTree messages (``core-source``, ``core-sequence``) a SubMesh already carries.

    A SubMesh standby fills it at its takeover from the manifests its mesh peer holds, then
    adds every message it publishes. It is checked for every message the standby forwards, not
    only for the buffer replayed at the takeover: its CoreTree peer can still be handed old
    messages afterwards (a peer that re-attaches gets from its new parent what it never had),
    and those must not become second SubMesh objects. Bounded: the oldest ``limit`` keys are
    forgotten first (an older message arriving after that would be published once more).
    """

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("CoreKeys must hold at least 1 key")
        self.limit = limit
        self._keys: set[tuple[str, int]] = set()
        self._order: deque[tuple[str, int]] = deque()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, source: str, sequence: int) -> bool:
        """Record a carried message; False when it was carried already."""
        key = (source, sequence)
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        while len(self._order) > self.limit:
            self._keys.discard(self._order.popleft())
        return True

    def add_meta(self, meta: Mapping[str, object] | None) -> None:
        """Record the message a SubMesh object's ``meta`` names (objects without it are not)."""
        if not meta:
            return
        source, sequence = meta.get("core-source"), meta.get("core-sequence")
        if isinstance(source, str) and isinstance(sequence, int) and not isinstance(sequence, bool):
            self.add(source, sequence)


class AbsenceClock:
    """Decides when the source has been gone long enough to take over.

    ``rank`` orders a list of standbys for one bridge: standby 1 waits ``takeover_after`` of
    unbroken absence, standby *r* waits ``rank_gap`` more per rank. The gap must cover what
    standby *r − 1* needs to take over (its settle time, a join, and the probe period by
    which their clocks may differ): then the source id answers again at its new address,
    which resets every later standby's clock, so only one of them takes over. (If two still
    race, the HOMS admits one of them under the source peer-id: see the bridge.)
    """

    def __init__(self, takeover_after: float, rank: int = 1, rank_gap: float | None = None):
        if takeover_after <= 0:
            raise ValueError("takeover_after must be > 0 seconds")
        if rank < 1:
            raise ValueError("the standby rank starts at 1 (the first to take over)")
        gap = takeover_after if rank_gap is None else rank_gap
        if gap < 0:
            raise ValueError("rank_gap must be >= 0 seconds")
        self.wait = takeover_after + (rank - 1) * gap
        self.missing_since: float | None = None

    def observe(self, answered: bool, now: float) -> bool:
        """One probe result; True once the source has been unanswering for the whole wait."""
        if answered:
            self.missing_since = None
            return False
        if self.missing_since is None:
            self.missing_since = now
        return now - self.missing_since >= self.wait


async def source_answers(
    address: str, *, overlay_id: str, prober_id: str, prober_address: str, limit: float
) -> bool:
    """True when the tree peer at ``address`` answers a ticket-0 HELLO_PEER within ``limit`` s
    (with the HELLO answer, or with the AUTH refusal of an overlay that needs credentials)."""
    answered = asyncio.Event()
    got: list[Message] = []

    def on_message(link: Link, message: Message) -> None:
        got.append(message)
        if isinstance(message, _ALIVE):
            answered.set()

    def on_closed(link: Link, exc: BaseException | None) -> None:
        answered.set()  # wakes the wait; whether it answered is judged by what arrived

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        link = await tcp.connect(
            address, LinkEvents(on_message=on_message, on_closed=on_closed), connect_timeout=limit
        )
    except (OSError, TimeoutError, ValueError):
        return False
    try:
        hello = Hello(
            overlay_id=overlay_id,
            peer_id=prober_id,
            address=prober_address,
            ticket_id=0,
            conn_num=0,
            ttl=0,
        )
        if not link.send_frame(encode(hello)):
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), max(0.0, deadline - loop.time()))
        return any(isinstance(m, _ALIVE) for m in got)
    finally:
        link.close()
