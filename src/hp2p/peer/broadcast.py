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
