"""Data recovery (DR FE, Q.4100 §7.2.3.2; Q.4101 lost-data recovery): pull what is missing.

A peer misses broadcast messages in two ways, and both are handled here:

* **across a repair** — while it was detached, its subtree received nothing from the rest of
  the tree and the rest of the tree received nothing from its subtree. After the new primary
  path is set the two sides compare buffermaps and each sends the other what it lacks (push,
  the overlay's ``recovery-by: push``: buffermaps ride on SET_PRIMARY / 4200), or the repaired
  peer asks its new parent and its candidates with BUFFERMAP and pulls with GET_DATA
  (``recovery-by: pull``);
* **on the live path** — a message lost on one link shows as a hole in the duplicate window
  (sequence n+2 after n). After a short reordering tolerance (``gap_wait``) the hole is pulled
  with GET_DATA from the parent, then from the candidates.

What is missing is a set of *wants* ``(source, sequence)``. A want is asked from one holder at
a time, holders whose buffermap lists it first; an answer 11404 or a time-out moves it to the
next holder. When every holder was asked, the want waits (``pull_round_delay``, doubling) and
tries again — an ancestor may still be recovering the same message, and a recovered message
travels down the primary paths — and after ``pull_rounds`` rounds it is given up and reported
to the application as a ``Gap`` range: never skipped silently. Requests in flight are bounded
per peer and in total, so a long outage turns into a steady trickle, not a burst.

Recovered messages enter the core exactly like live ones (duplicate window, cache, forward to
the primary paths except the arrival one, ``Deliver(recovered=True)``): the subtree below has
the same hole, and the duplicate window sorts out those that got the message another way.

This module decides; it performs no I/O. The core feeds it holders (connections) and the
duplicate window, and turns its ``PullRequest``s into GET_DATA sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from hp2p.peer.control import Phase, recovery_rank
from hp2p.peer.effects import Gap
from hp2p.peer.paths import PATH_ROLES, Link, Role
from hp2p.wire.r2.messages import (
    GET_DATA_OK,
    BroadcastData,
    BroadcastExt,
    Buffermap,
    BuffermapEntry,
    BuffermapResponse,
    GetData,
    GetDataResponse,
    OriginExt,
)

if TYPE_CHECKING:
    from hp2p.peer.broadcast import DuplicateFilter
    from hp2p.peer.cache import MessageCache
    from hp2p.peer.config import PeerConfig
    from hp2p.peer.core import PeerCore

_JSON = msgspec.json.Encoder()
# JSON bytes of one buffermap element besides its id and its numbers:
# {"SourcePeerId":,"Sequence":[]}, plus a comma between elements.
_ENTRY_OVERHEAD = 32
RECOVERED = BroadcastExt(recovered=True)
"""The hp2p flag on a pushed BROADCAST_DATA: the receiver delivers it as recovered."""


_UNSIGNED = OriginExt()


def _recovered(ext: OriginExt) -> BroadcastExt:
    """A pulled message's source signature, carried over to the BROADCAST_DATA it becomes."""
    return BroadcastExt(sig=ext.sig, idx=ext.idx, path=ext.path, cred=ext.cred, recovered=True)


def summarise(entries: Iterable[BuffermapEntry], budget: int) -> list[BuffermapEntry]:
    """Cut a buffermap to fit ``budget`` JSON bytes by dropping the *oldest* sequences.

    An R2 header is at most 65535 bytes and a full cache of many sources does not fit (the
    codec refuses it with ``LimitExceeded``). What a buffermap is for is the recent past — what
    a peer missed while detached — so the newest sequences of every source are kept, the
    budget shared fairly: each round gives every source still wanting room one more slice.
    The receiver reads "not listed below the lowest listed sequence" as "unknown", never as
    "missing" (see :func:`lacking`).
    """
    items = [(e.source_peer_id, sorted(e.sequences)) for e in entries]
    left = budget - 2
    sizes: list[list[int]] = []
    for source, seqs in items:
        left -= _ENTRY_OVERHEAD + len(_JSON.encode(source))
        sizes.append([len(str(s)) + 1 for s in seqs])
    if left <= 0:
        return []
    taken = [0] * len(items)
    active = [i for i, (_, seqs) in enumerate(items) if seqs]
    while active and left > 0:
        share = max(1, left // len(active))
        still: list[int] = []
        for i in active:
            cost = sizes[i]
            room = share
            n = taken[i]
            total = len(cost)
            while n < total and cost[total - 1 - n] <= room and cost[total - 1 - n] <= left:
                room -= cost[total - 1 - n]
                left -= cost[total - 1 - n]
                n += 1
            progressed = n > taken[i]
            taken[i] = n
            if n < total and progressed:
                still.append(i)
        active = still
    return [
        BuffermapEntry(source_peer_id=source, sequences=seqs[len(seqs) - taken[i] :])
        for i, (source, seqs) in enumerate(items)
        if taken[i]
    ]


def lacking(
    cache: MessageCache,
    theirs: Sequence[BuffermapEntry],
    since: float | None,
    limit: int,
) -> list[BroadcastData]:
    """Cached messages the holder of buffermap ``theirs`` does not have, oldest first.

    For a source in their map, a sequence above the lowest one they list and not listed is
    missing there (below it, their map may simply have been cut or their cache evicted). A
    source absent from their map is pushed only for messages that arrived at or after
    ``since`` (the outage), so a repair never replays the whole cache of an old source.
    """
    listed: dict[str, tuple[int, set[int]]] = {}
    for entry in theirs:
        if entry.sequences:
            listed[entry.source_peer_id] = (min(entry.sequences), set(entry.sequences))
    out: list[BroadcastData] = []
    for source, (low, have) in listed.items():
        for sequence in cache.sequences(source):
            if sequence > low and sequence not in have:
                message = cache.message(source, sequence)
                if message is not None:
                    out.append(message)
    if since is not None:
        out.extend(m for m in cache.arrived_since(since) if m.source not in listed)
    out.sort(key=lambda m: (m.source, m.sequence))
    return out[:limit]


def missing_from(
    duplicates: DuplicateFilter,
    theirs: Sequence[BuffermapEntry],
    me: str,
    new_source: int = 64,
) -> list[tuple[str, int]]:
    """``(source, sequence)`` listed in a holder's buffermap that this peer never accepted.

    For a source this peer knows, sequences inside its window from its first one on (holes
    and the tail published while it was detached); for a source it never heard of, all that
    are listed if the holder still has its first ones (``new_source`` or below: the source
    started while this peer was detached) — an old source's history is not pulled. Its own
    messages never.
    """
    out: list[tuple[str, int]] = []
    for entry in theirs:
        source = entry.source_peer_id
        if source == me:
            continue
        win = duplicates.sources.get(source)
        if win is None and (not entry.sequences or min(entry.sequences) > new_source):
            continue
        for sequence in entry.sequences:
            if win is not None:
                if sequence < win.first or sequence <= win.newest - duplicates.window:
                    continue
                if sequence - win.newest > duplicates.max_ahead:
                    continue
                if duplicates.seen(source, sequence):
                    continue
            out.append((source, sequence))
    return out


@dataclass(slots=True)
class Want:
    """One missing message and the state of its pull."""

    source: str
    sequence: int
    not_before: float
    round: int = 0
    asked: int | None = None  # the connection a GET_DATA is outstanding on
    deadline: float = 0.0
    tried: set[int] = field(default_factory=set)
    hint: int | None = None  # a connection whose buffermap lists it


@dataclass(frozen=True, slots=True)
class PullRequest:
    """Send GET_DATA for ``(source, sequence)`` on ``conn``."""

    conn: int
    source: str
    sequence: int


@dataclass(slots=True)
class RecoveryCounters:
    """What the DR FE did; exported in ``PeerCore.status()``."""

    wanted: int = 0
    requested: int = 0
    recovered: int = 0
    absent: int = 0  # 11404 answers
    timeouts: int = 0
    gaps: int = 0  # messages reported as gaps
    pushed: int = 0
    buffermaps: int = 0


@dataclass(slots=True)
class PullSettings:
    gap_wait: float
    timeout: float
    rounds: int
    round_delay: float
    per_peer: int
    total: int
    max_wanted: int


class PullQueue:
    """The wants, their holders and the bounds on requests in flight."""

    def __init__(self, settings: PullSettings) -> None:
        self.settings = settings
        self.wants: dict[tuple[str, int], Want] = {}
        self.inflight: dict[int, int] = {}
        self.total_inflight = 0
        self.counters = RecoveryCounters()
        self._failed: list[tuple[str, int]] = []
        self._failed_at: float | None = None  # the oldest unreported failure
        self._pumped_at = float("-inf")

    def __len__(self) -> int:
        return len(self.wants)

    def want(self, source: str, sequence: int, not_before: float, hint: int | None = None) -> None:
        """Track ``(source, sequence)`` as missing; over the bound it fails at once (a Gap)."""
        key = (source, sequence)
        existing = self.wants.get(key)
        if existing is not None:
            if hint is not None and existing.hint is None:
                existing.hint = hint
            return
        self.counters.wanted += 1
        if len(self.wants) >= self.settings.max_wanted:
            self._fail(key, not_before)
            return
        self.wants[key] = Want(source, sequence, not_before, hint=hint)

    def want_range(self, source: str, first: int, last: int, now: float) -> None:
        """A live hole ``first..last``: pulled after the reordering tolerance."""
        when = now + self.settings.gap_wait
        for sequence in range(first, last + 1):
            self.want(source, sequence, when)

    def answered(self, conn: int, source: str, sequence: int, found: bool, now: float) -> None:
        """A GET_DATA answer (11200 or 11404) arrived on ``conn``."""
        want = self.wants.get((source, sequence))
        if want is None or want.asked != conn:
            return
        self._release(want)
        if found:
            self.counters.recovered += 1
            del self.wants[(source, sequence)]
        else:
            self.counters.absent += 1
            want.tried.add(conn)

    def conn_lost(self, conn: int) -> None:
        """``conn`` is gone: what was asked on it is asked elsewhere."""
        for want in self.wants.values():
            if want.asked == conn:
                self._release(want)
                want.tried.add(conn)
            if want.hint == conn:
                want.hint = None
        self.inflight.pop(conn, None)

    def pump(
        self, now: float, holders: Sequence[int], duplicates: DuplicateFilter
    ) -> list[PullRequest]:
        """Requests to send now, within the bounds; wants already satisfied are dropped."""
        settings = self.settings
        self._pumped_at = now
        out: list[PullRequest] = []
        done: list[tuple[str, int]] = []
        for key, want in self.wants.items():
            if want.asked is not None:
                if now < want.deadline:
                    continue
                self.counters.timeouts += 1
                late = want.asked
                self._release(want)
                want.tried.add(late)
            if duplicates.seen(want.source, want.sequence):
                done.append(key)
                continue
            if now < want.not_before or not holders:
                continue
            if self.total_inflight >= settings.total:
                continue
            conn = self._choose(want, holders)
            if conn is None:
                if all(h in want.tried for h in holders):
                    want.round += 1
                    want.tried.clear()
                    if want.round >= settings.rounds:
                        done.append(key)
                        self._fail(key, now)
                        continue
                    want.not_before = now + settings.round_delay * 2 ** (want.round - 1)
                continue
            want.asked = conn
            want.deadline = now + settings.timeout
            self.inflight[conn] = self.inflight.get(conn, 0) + 1
            self.total_inflight += 1
            self.counters.requested += 1
            out.append(PullRequest(conn, want.source, want.sequence))
        for key in done:
            del self.wants[key]
        return out

    def _fail(self, key: tuple[str, int], now: float) -> None:
        self._failed.append(key)
        if self._failed_at is None:
            self._failed_at = now

    def take_failed(self, now: float, duplicates: DuplicateFilter) -> list[tuple[str, int, int]]:
        """Given-up wants as ``(source, first, last)`` ranges; a late arrival is not a gap.

        Neighbours of one hole fail one answer apart; failures are held for ``gap_wait`` so
        that the application gets one range rather than a report per message.
        """
        if self._failed_at is None or now < self._failed_at + self.settings.gap_wait:
            return []
        failed = sorted(k for k in self._failed if not duplicates.seen(*k))
        self._failed.clear()
        self._failed_at = None
        ranges: list[tuple[str, int, int]] = []
        for source, sequence in failed:
            if ranges and ranges[-1][0] == source and ranges[-1][2] == sequence - 1:
                ranges[-1] = (source, ranges[-1][1], sequence)
            else:
                ranges.append((source, sequence, sequence))
        self.counters.gaps += len(failed)
        return ranges

    def has_failed(self) -> bool:
        return self._failed_at is not None

    def next_deadline(self) -> float | None:
        """When ``pump`` next has something to do (a due want or an answer time-out).

        A want that was due at the last ``pump`` but could not be asked (every holder busy or
        none attached) waits for an event instead — an answer, a time-out, a new path — so
        the timer never spins.
        """
        when: float | None = None
        if self._failed_at is not None:
            when = self._failed_at + self.settings.gap_wait
        pumped = self._pumped_at
        for want in self.wants.values():
            if want.asked is not None:
                t = want.deadline
            elif want.not_before > pumped:
                t = want.not_before
            else:
                continue
            if when is None or t < when:
                when = t
        return when

    def _choose(self, want: Want, holders: Sequence[int]) -> int | None:
        per_peer = self.settings.per_peer
        inflight = self.inflight
        hint = want.hint
        if (
            hint is not None
            and hint not in want.tried
            and hint in holders
            and inflight.get(hint, 0) < per_peer
        ):
            return hint
        for conn in holders:
            if conn not in want.tried and inflight.get(conn, 0) < per_peer:
                return conn
        return None

    def _release(self, want: Want) -> None:
        conn = want.asked
        if conn is None:
            return
        want.asked = None
        left = self.inflight.get(conn, 0) - 1
        if left > 0:
            self.inflight[conn] = left
        else:
            self.inflight.pop(conn, None)
        self.total_inflight -= 1


T_PULL = "pull"
_NEW_SOURCE_BACKFILL = 64


def pull_settings(config: PeerConfig) -> PullSettings:
    return PullSettings(
        gap_wait=config.gap_wait,
        timeout=config.pull_timeout,
        rounds=config.pull_rounds,
        round_delay=config.pull_round_delay,
        per_peer=config.pull_per_peer,
        total=config.pull_total,
        max_wanted=config.pull_max_wanted,
    )


class DataRecovery:
    """The DR FE's procedures: buffermap exchange after a repair, live gaps, GET_DATA pulls.

    See the module docstring for the rules; this class feeds :class:`PullQueue` from the
    core's inputs and turns its requests into GET_DATA sends and its give-ups into ``Gap``.
    """

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        self.queue = PullQueue(pull_settings(core.config))
        self.buffermaps: dict[str, list[BuffermapEntry]] = {}  # last buffermap per peer
        self.detached_at: float | None = None
        self.attached_at: float | None = None
        self._pull_since: float | None = None
        self._pull_at: float | None = None

    # === answers from neighbours =================================================================
    def on_buffermap_response(self, link: Link, msg: BuffermapResponse, now: float) -> None:
        if link.role not in PATH_ROLES:
            self.core.error(link.conn, "BUFFERMAP answer on a connection that is not a path")
            return
        self.queue.counters.buffermaps += 1
        self.buffermaps[link.peer_id] = msg.buffermap
        if link.role is Role.PARENT and self._pull_since is not None:
            # Pull recovery still pushes up what the new parent lacks (etri §4.7): the rest of
            # the tree can get what my subtree published while detached from nobody else.
            self.push(link, msg.buffermap, self._pull_since, now)
            self._pull_since = None
        self._want_from(link, msg.buffermap, now, now)

    def on_get_data_response(self, link: Link, msg: GetDataResponse, now: float) -> None:
        core = self.core
        if msg.code == GET_DATA_OK:
            recovered = BroadcastData(
                source=msg.source,
                sequence=msg.sequence,
                data=msg.data,
                ext_header=msg.ext_header,
                payload_type=msg.payload_type,
                hp2p=RECOVERED if msg.hp2p == _UNSIGNED else _recovered(msg.hp2p),
            )
            core.db.on_data(link, recovered, now, True)
        found = core.duplicates.seen(msg.source, msg.sequence)
        self.queue.answered(link.conn, msg.source, msg.sequence, found, now)
        self.pump(now)

    def check_heads(self, heads: dict[str, int], now: float) -> None:
        """A neighbour's heads: a newer sequence than mine is a hole at my tail.

        ``heads`` was typed and bounded at decode (``HeartbeatExt``).
        """
        core = self.core
        duplicates = core.duplicates
        # Heads travel on every path, candidates included, and a candidate nearer the source
        # may simply be ahead of me: wait longer than for a hole before calling it a loss.
        wait = max(core.config.gap_wait, core.config.heartbeat_interval / 2)
        for source, newest in heads.items():
            if source == core.peer_id:
                continue
            win = duplicates.sources.get(source)
            if win is None:
                if 1 <= newest <= _NEW_SOURCE_BACKFILL and self.settled(now):
                    self.live_gap(source, 1, newest, now, wait)
            elif win.newest < newest <= win.newest + duplicates.max_ahead:
                self.live_gap(source, win.newest + 1, newest, now, wait)

    # === across a repair =========================================================================
    def outage(self, now: float) -> float:
        """How far back my missed and unshared messages may go: the outage plus detection."""
        start = now if self.detached_at is None else self.detached_at
        return now - start + self.core.config.heartbeat_timeout

    def after_repair(self, parent: Link, theirs: list[BuffermapEntry] | None, now: float) -> None:
        """A new primary path after a loss: exchange buffermaps with the new parent.

        Push (4200 carried the parent's buffermap): the parent already pushes what I lack; I
        push what it lacks and want the rest a little later, once the push had its chance.
        Pull, or a parent that sent no buffermap: BUFFERMAP to the parent and every candidate.
        """
        core = self.core
        since = now - self.outage(now)
        self.detached_at = None
        if theirs is not None and core.recovery_by == "push":
            self.buffermaps[parent.peer_id] = theirs
            self.push(parent, theirs, since, now)
            self._want_from(parent, theirs, now + core.config.pull_timeout, now)
            return
        self._pull_since = since
        targets = (parent.conn, *(c.conn for c in core.paths.with_role(Role.OUT_CANDIDATE)))
        core.send(targets, Buffermap(overlay_id=core.overlay_id))

    def push(
        self, link: Link, theirs: list[BuffermapEntry], since: float | None, now: float
    ) -> None:
        """Send ``link`` the cached messages its buffermap lacks, flagged as recovered."""
        core = self.core
        core.cache.expire(now)
        for message in lacking(core.cache, theirs, since, core.config.push_max):
            self.push_one(link, message)

    def push_one(self, link: Link, message: BroadcastData) -> None:
        """Send ``link`` one cached message as BROADCAST_DATA, flagged as recovered."""
        ext = msgspec.structs.replace(message.hp2p, recovered=True)
        pushed = msgspec.structs.replace(message, hp2p=ext, ack=False)
        self.core.db.send_data((link.conn,), pushed)
        self.queue.counters.pushed += 1

    def _want_from(self, link: Link, theirs: list[BuffermapEntry], when: float, now: float) -> None:
        for source, sequence in missing_from(self.core.duplicates, theirs, self.core.peer_id):
            self.queue.want(source, sequence, when, hint=link.conn)
        self.pump(now)

    # === on the live path ========================================================================
    def settled(self, now: float) -> bool:
        """Attached for a while: a source first heard of at sequence 2..64 lost its first ones.

        Sequences start at 1. A peer that has been in the tree for a heartbeat time-out would
        have got a new source's first messages; a peer that just joined simply came late, and
        what was published before it joined is not its gap.
        """
        return self.attached_at is not None and now - self.attached_at > (
            self.core.config.heartbeat_timeout
        )

    def live_gap(
        self, source: str, first: int, last: int, now: float, wait: float | None = None
    ) -> None:
        """A hole on the live path: pull it after the reordering tolerance."""
        gap_wait = self.core.config.gap_wait
        wait = gap_wait if wait is None else wait
        self.queue.want_range(source, first, last, now + wait - gap_wait)
        when = now + wait
        if self._pull_at is None or when < self._pull_at:
            self._pull_at = when
            self.core.timers.arm(T_PULL, when)

    # === pulling =================================================================================
    def _holders(self) -> list[int]:
        """Who to ask, in order: the parent, the candidates (best first), then the children."""
        paths = self.core.paths
        out: list[int] = []
        parent = paths.parent
        if parent is not None:
            out.append(parent.conn)
        candidates = paths.with_role(Role.OUT_CANDIDATE)
        candidates.sort(key=recovery_rank)
        out.extend(c.conn for c in candidates)
        out.extend(c.conn for c in paths.with_role(Role.IN_CANDIDATE, Role.CHILD))
        return out

    def pump(self, now: float) -> None:
        """Send the GET_DATA requests due, report given-up misses as gaps, re-arm the timer."""
        core = self.core
        queue = self.queue
        attached = core.phase is Phase.ATTACHED
        if attached:
            for req in queue.pump(now, self._holders(), core.duplicates):
                core.send((req.conn,), GetData(core.overlay_id, req.source, req.sequence))
        if queue.has_failed():
            for source, first, last in queue.take_failed(now, core.duplicates):
                core.effects.append(Gap(source, first, last))
        when = queue.next_deadline()
        if when is None or not attached:
            core.timers.cancel(T_PULL)
            self._pull_at = None
        else:
            self._pull_at = when
            core.timers.arm(T_PULL, when)

    def on_pull_timer(self, now: float) -> None:
        self._pull_at = None
        self.pump(now)

    def link_gone(self, link: Link, now: float) -> None:
        self.queue.conn_lost(link.conn)
        if link.role in PATH_ROLES:
            self.buffermaps.pop(link.peer_id, None)
            if self.queue.total_inflight or len(self.queue):
                self.pump(now)

    def timers(self) -> dict[str, Callable[[float], None]]:
        return {T_PULL: self.on_pull_timer}
