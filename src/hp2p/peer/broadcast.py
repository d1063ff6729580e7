"""Data broadcast (DB FE, Q.4100 §7.2.3.3): the per-source duplicate window.

The reference peer keeps one ``last_seen`` per source and drops everything not newer, and it
overwrites ``last_seen`` even for rejected packets (etri-2023-protocol.md §9.2): late and
recovered messages are lost, and one forged huge sequence silences a source. hp2p keeps, per
source, the newest accepted sequence and a bitmap of the ``window`` sequences below it:

* newer than the newest, by at most ``max_ahead``: accepted, the window slides;
* further ahead than ``max_ahead``: rejected as forged (``too_far``), the window does not move;
* inside the window and not yet seen: accepted (a late or recovered message);
* inside the window and seen: rejected (``duplicates``);
* below the window: rejected (``too_old``): it can no longer be told from a duplicate.

Every check is O(1) (a shift or a bit test on a Python int), so it sits on the hot path. The
first message of a source sets its base; messages before it are not reported as gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hp2p.peer.effects import Deliver, Send
from hp2p.peer.errors import NotSourceError
from hp2p.peer.paths import PATH_ROLES, Link
from hp2p.wire.r2.messages import BroadcastData, BroadcastDataResponse

if TYPE_CHECKING:
    from hp2p.peer.core import PeerCore

ACCEPTED = 0
DUPLICATE = 1
TOO_OLD = 2
TOO_FAR = 3


class SourceWindow:
    """Sliding bitmap for one source: bit ``k`` set ⇔ sequence ``newest − k`` was accepted."""

    __slots__ = ("first", "mask", "newest")

    def __init__(self, first: int) -> None:
        self.first = first
        self.newest = first
        self.mask = 1

    def missing(self, window: int) -> list[int]:
        """Sequences between the first seen and the newest that never arrived (oldest first)."""
        span = min(window, self.newest - self.first + 1)
        holes = ~self.mask & ((1 << span) - 1)
        out: list[int] = []
        while holes:
            low = holes & -holes
            out.append(self.newest - (low.bit_length() - 1))
            holes ^= low
        out.reverse()
        return out


@dataclass(slots=True)
class DuplicateCounters:
    """Why messages were refused; every rejection is counted, none is silent."""

    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    too_old: int = 0
    too_far: int = 0


class DuplicateFilter:
    """Per-source sliding windows; ``check`` answers ACCEPTED or the reason for refusal."""

    __slots__ = ("_full", "counters", "max_ahead", "sources", "window")

    def __init__(self, window: int, max_ahead: int) -> None:
        if window < 1 or max_ahead < 1:
            raise ValueError("window and max_ahead must be at least 1")
        self.window = window
        self.max_ahead = max_ahead
        self._full = (1 << window) - 1
        self.sources: dict[str, SourceWindow] = {}
        self.counters = DuplicateCounters()

    def check(self, source: str, sequence: int) -> int:
        """Record ``sequence`` of ``source`` if new: ACCEPTED, or DUPLICATE/TOO_OLD/TOO_FAR."""
        win = self.sources.get(source)
        counters = self.counters
        if win is None:
            self.sources[source] = SourceWindow(sequence)
            counters.accepted += 1
            return ACCEPTED
        ahead = sequence - win.newest
        if ahead > 0:
            if ahead > self.max_ahead:
                counters.too_far += 1
                return TOO_FAR
            win.mask = ((win.mask << ahead) | 1) & self._full
            win.newest = sequence
            counters.accepted += 1
            return ACCEPTED
        back = -ahead
        if back >= self.window:
            counters.too_old += 1
            return TOO_OLD
        bit = 1 << back
        if win.mask & bit:
            counters.duplicates += 1
            return DUPLICATE
        win.mask |= bit
        if sequence < win.first:
            win.first = sequence
        counters.accepted += 1
        counters.late += 1
        return ACCEPTED

    def seen(self, source: str, sequence: int) -> bool:
        """Whether ``sequence`` was accepted (and is still inside the window)."""
        win = self.sources.get(source)
        if win is None:
            return False
        back = win.newest - sequence
        return 0 <= back < self.window and bool(win.mask >> back & 1)

    def newest(self, source: str) -> int | None:
        win = self.sources.get(source)
        return None if win is None else win.newest

    def gaps(self, source: str) -> list[int]:
        """Missing sequences of ``source`` inside the window: the DR FE's pull list."""
        win = self.sources.get(source)
        return [] if win is None else win.missing(self.window)

    def all_gaps(self) -> dict[str, list[int]]:
        """Every source with at least one missing sequence inside its window."""
        result: dict[str, list[int]] = {}
        for source, win in self.sources.items():
            holes = win.missing(self.window)
            if holes:
                result[source] = holes
        return result


_NEW_SOURCE_BACKFILL = 64


class Broadcaster:
    """The DB FE's procedures: publish, and accept-deliver-forward each BROADCAST_DATA.

    The hot path of the whole peer is :meth:`on_data`: one dict lookup, one duplicate-window
    check, one cache insert, one precomputed fan-out tuple and two effects; no logging, no
    payload copy. It holds the core's long-lived parts in attributes of its own so that a
    message costs no extra indirection.
    """

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        self.duplicates = core.duplicates
        self.cache = core.cache
        self.paths = core.paths
        self.counters = core.counters
        self.effects = core.effects
        self.sequence = 0
        #: SubTree (Q.4100 §6): the only source whose data this overlay carries; None on a
        #: CoreTree. Checked here, in the core, so the simulator enforces it as daemons do.
        self.source_only: str | None = None

    def publish(
        self, data: bytes, now: float, app_id: str, payload_type: str, candidate_path: bool
    ) -> int:
        """Broadcast ``data`` from this peer (CoreTree is multi-source); returns its sequence.

        On a SubTree only the source peer may: any other raises :class:`NotSourceError`
        before anything is sent.
        """
        source = self.core.peer_id
        if self.source_only is not None and source != self.source_only:
            raise NotSourceError(
                f"only the source peer {self.source_only!r} of SubTree {self.core.overlay_id!r} "
                f"may publish; this peer is {source!r}. Publish at the source (or through an "
                "R3 bridge that feeds it)."
            )
        self.sequence += 1
        message = BroadcastData(
            source=source,
            sequence=self.sequence,
            data=data,
            ext_header={"app-id": app_id},
            payload_type=payload_type,
            candidate_path=candidate_path,
        )
        self.duplicates.check(source, self.sequence)
        self.cache.put(message, now)
        targets = self.paths.fanout(None, candidate_path)
        if targets:
            self.effects.append(Send(targets, message))
        self.counters.published += 1
        return self.sequence

    def continue_as_source(self, last_sequence: int) -> None:
        """Publish on after ``last_sequence``: a standby taking over a source's peer-id.

        Every peer's duplicate filter already holds the failed source's sequences, so a
        takeover that numbered from 1 again would be refused as old or duplicate data; the
        standby learns the last sequence it saw from that source and goes on from there.
        """
        if last_sequence < 0:
            raise ValueError(f"last_sequence must be ≥ 0, got {last_sequence}")
        self.sequence = max(self.sequence, last_sequence)

    def on_data(self, link: Link, msg: BroadcastData, now: float, recovered: bool) -> None:
        if link.role not in PATH_ROLES:
            self.core.error(link.conn, "BROADCAST_DATA on a connection that is not a path")
            return
        if self.source_only is not None and msg.source != self.source_only:
            self.counters.foreign_dropped += 1  # neither delivered nor relayed
            return
        effects = self.effects
        if msg.ack:
            effects.append(Send((link.conn,), BroadcastDataResponse()))
        duplicates = self.duplicates
        win = duplicates.sources.get(msg.source)
        previous = None if win is None else win.newest
        if duplicates.check(msg.source, msg.sequence) != ACCEPTED:
            return
        if previous is not None:
            if msg.sequence > previous + 1:
                self.core.dr.live_gap(msg.source, previous + 1, msg.sequence - 1, now)
        elif 1 < msg.sequence <= _NEW_SOURCE_BACKFILL and self.core.dr.settled(now):
            self.core.dr.live_gap(msg.source, 1, msg.sequence - 1, now)
        if msg.hp2p.recovered:
            recovered = True
        self.cache.put(msg, now)
        targets = self.paths.fanout(link.conn, msg.candidate_path)
        if targets:
            effects.append(Send(targets, msg))
            self.counters.forwarded += 1
        effects.append(
            Deliver(msg.source, msg.sequence, msg.data, msg.app_id, msg.payload_type, recovered)
        )
        self.counters.delivered += 1
