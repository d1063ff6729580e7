"""What a history query knows it is missing: explicit gaps instead of a silently short answer.

A member answers from what it holds; everything it knows exists but does not hold becomes a
gap, so a client can tell "no readings" from "readings I do not have":

* *outside retention*: time before what the member keeps (``--retention-age``, or the end of
  the newest slice retention dropped for the topic);
* *not pulled yet*: objects whose manifest (and so topic and slice) is known but whose data
  is not here yet, when their slice overlaps the query;
* *unknown objects*: numbers announced by neighbours without a manifest yet, or numbers never
  seen between known ones: their topic and time are unknown, so they are gaps of every query
  (``start``/``end`` None) until they are pulled or known to be something else.

Pure: the shell hands in the numbers and metadata it knows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Gap", "find_gaps", "number_ranges"]

#: Gaps listed at most in one answer (the rest are summarised in the last one).
MAX_GAPS = 200


@dataclass(frozen=True, slots=True)
class Gap:
    """``kind``: ``retention``, ``pending`` (manifest known), ``unavailable`` (manifest known,
    no neighbour holds the data), ``announced`` or ``unseen``."""

    kind: str
    start: float | None
    end: float | None
    reason: str
    objects: tuple[int, int] | None = None  # first and last object number, inclusive

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "from": self.start,
            "to": self.end,
            "reason": self.reason,
        }
        if self.objects is not None:
            out["objects"] = list(self.objects)
        return out


def number_ranges(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted numbers as inclusive ``(first, last)`` runs."""
    runs: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def _overlaps(meta: Mapping[str, Any], topic: str, lo: float, hi: float) -> bool:
    start, end = meta.get("start"), meta.get("end")
    if meta.get("topic") != topic:
        return False
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return True  # a manifest without a usable slice: cannot rule it out
    return bool(start < hi and end > lo)


def find_gaps(
    topic: str,
    lo: float,
    hi: float,
    *,
    kept_from: float | None,
    floor: int,
    known: set[int],
    pending: Mapping[int, Mapping[str, Any] | None],
    announced: Iterable[int],
    notes: Callable[[int], tuple[str, str]] | None = None,
) -> list[Gap]:
    """Gaps of the query ``topic`` in ``[lo, hi)``; empty means the answer is complete.

    ``kept_from``: nothing older is kept (retention); ``floor``: lower object numbers are gone;
    ``known``: object numbers stored or refused; ``pending``: objects with a manifest (its
    meta) not stored yet; ``announced``: numbers neighbours hold that have no manifest here;
    ``notes(obj)``: ``(kind, reason)`` of a pending object's gap instead of the default (a
    member keeping replicas says whom a segment is kept by, and whether a neighbour holds it);
    asked only for the objects that are gaps of this query.
    """
    gaps: list[Gap] = []
    if kept_from is not None and lo < kept_from:
        gaps.append(
            Gap("retention", lo, min(hi, kept_from), "outside retention: not kept by this member")
        )
    for obj in sorted(pending):
        meta = pending[obj]
        if meta is None or _overlaps(meta, topic, lo, hi):
            start = meta.get("start") if meta else None
            end = meta.get("end") if meta else None
            kind, reason = (
                notes(obj)
                if notes is not None
                else ("pending", "segment known, data not pulled yet")
            )
            gaps.append(
                Gap(
                    kind,
                    start if isinstance(start, int | float) else None,
                    end if isinstance(end, int | float) else None,
                    reason,
                    (obj, obj),
                )
            )
    unseen = {n for n in announced if n >= floor and n not in known and n not in pending}
    for first, last in number_ranges(unseen):
        gaps.append(
            Gap("announced", None, None, "announced by neighbours, not pulled yet", (first, last))
        )
    # holes between the runs of every number known one way or another (never a loop over
    # the numbers themselves: a neighbour may announce any number)
    holes: list[tuple[int, int]] = []
    expected = floor
    for first, last in number_ranges(n for n in known | set(pending) | unseen if n >= floor):
        if first > expected:
            holes.append((expected, first - 1))
        expected = last + 1
    for first, last in holes:
        gaps.append(
            Gap("unseen", None, None, "object numbers never seen by this member", (first, last))
        )
    if len(gaps) > MAX_GAPS:
        rest = len(gaps) - MAX_GAPS + 1
        gaps = [*gaps[: MAX_GAPS - 1], Gap("more", None, None, f"{rest} more gaps not listed")]
    return gaps
