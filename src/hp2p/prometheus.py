"""The Prometheus text exposition format (version 0.0.4), written by hand: no dependency.

The HOMS and every peer serve ``/metrics`` in this format. Only what they need is here:
counters, gauges and fixed-bucket histograms, each a :class:`Family` with ``# HELP`` and
``# TYPE`` lines and its samples. No I/O, no clock: callers pass values (and durations) in.
Label values are escaped as the format requires; callers keep label sets bounded.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: ``Content-Type`` of a text exposition.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram"]
Labels = Mapping[str, str]

#: Request latency buckets (seconds): 1 ms … 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape(str(value))}"' for name, value in labels.items())
    return "{" + inner + "}"


@dataclass
class Family:
    """One metric family: name, type, help and its samples (suffix, labels, value)."""

    name: str
    kind: Kind
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | None = None, suffix: str = "") -> Family:
        self.samples.append((suffix, dict(labels or {}), float(value)))
        return self

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for suffix, labels, value in self.samples:
            lines.append(f"{self.name}{suffix}{_label_text(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def counter(name: str, help_text: str, value: float | None = None) -> Family:
    """A counter family (``name`` ends in ``_total``), with one unlabelled sample if given."""
    family = Family(name, "counter", help_text)
    return family if value is None else family.add(value)


def gauge(name: str, help_text: str, value: float | None = None) -> Family:
    """A gauge family, with one unlabelled sample if given."""
    family = Family(name, "gauge", help_text)
    return family if value is None else family.add(value)


class Histogram:
    """Cumulative fixed-bucket histograms, one per label value of a bounded label."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Labels) -> None:
        key = tuple(sorted(labels.items()))
        counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def family(self, name: str, help_text: str) -> Family:
        family = Family(name, "histogram", help_text)
        for key, (counts, total) in sorted(self._series.items()):
            labels = dict(key)
            running = 0
            for bound, count in zip(self.buckets, counts, strict=False):
                running += count
                family.add(running, {**labels, "le": _number(bound)}, "_bucket")
            running += counts[-1]
            family.add(running, {**labels, "le": "+Inf"}, "_bucket")
            family.add(total[0], labels, "_sum")
            family.add(running, labels, "_count")
        return family


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families`` (each once, in order)."""
    return "".join(family.render() for family in families)


def parse(text: str) -> dict[str, dict[str, object]]:
    """Families of an exposition: ``{name: {"type", "help", "samples": {series: value}}}``.

    For tests and ``hp2p overlay``-style tools: strict enough to catch a malformed line (a
    ValueError names it), not a full implementation of the format.
    """
    families: dict[str, dict[str, object]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, what, name, rest = [*line.split(" ", 3), ""][:4]
            entry = families.setdefault(name, {"samples": {}})
            entry["help" if what == "HELP" else "type"] = rest
            continue
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if not series:
            raise ValueError(f"line {number}: no value: {line!r}")
        base = series.split("{", 1)[0]
        owner = next(
            (n for n in (base, base.rsplit("_", 1)[0]) if n in families),
            None,
        )
        if owner is None:
            raise ValueError(f"line {number}: sample of an undeclared family: {line!r}")
        samples = families[owner]["samples"]
        assert isinstance(samples, dict)
        samples[series] = float(value)
    return families
