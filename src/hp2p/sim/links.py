"""The simulator's link model: how long a message takes between two peers, and whether it arrives.

A discrete-event simulation is only as believable as its links. Real overlays see latencies that
differ per pair (geography), vary per packet (jitter), lose packets, are slower for big payloads
(bandwidth) and sometimes split in two (partitions). This module turns a short textual spec into
those effects, all drawn from seeded generators so that the same seed gives the same trace.

The "King" option stands in for the King data set of measured Internet latencies, which this
project does not download: peers get random coordinates in a few clusters ("continents") and the
one-way latency of a pair is a base plus a cost per unit of distance. That reproduces the two
features that matter for a tree overlay: a wide spread of pair latencies, and nearby peers that
are much closer than the median.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


class LinkSpecError(ValueError):
    """A latency or partition spec that cannot be understood; the message says how to write it."""


_LATENCY_HELP = (
    "use fixed:MS, uniform:LO_MS,HI_MS, lognormal:MEDIAN_MS,SIGMA or king[:SCALE] "
    "(e.g. uniform:1,10)"
)


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Per-pair one-way latency in seconds, drawn once per pair from the seed.

    ``kind`` is ``fixed``, ``uniform``, ``lognormal`` or ``king``; ``a`` and ``b`` are its
    parameters in seconds (``b`` is the log-normal sigma, or the King scale factor).
    """

    kind: str = "uniform"
    a: float = 0.001
    b: float = 0.010

    @classmethod
    def parse(cls, spec: str) -> LatencyModel:
        """Read ``fixed:5``, ``uniform:1,10``, ``lognormal:20,0.5``, ``king`` (times in ms)."""
        kind, _, rest = spec.strip().partition(":")
        kind = kind.lower()
        try:
            values = [float(v) for v in rest.split(",")] if rest else []
        except ValueError:
            raise LinkSpecError(f"bad latency {spec!r}: {_LATENCY_HELP}") from None
        if kind == "fixed" and len(values) == 1 and values[0] >= 0:
            return cls("fixed", values[0] / 1000, 0.0)
        if kind == "uniform" and len(values) == 2 and 0 <= values[0] <= values[1]:
            return cls("uniform", values[0] / 1000, values[1] / 1000)
        if kind == "lognormal" and len(values) == 2 and values[0] > 0 and values[1] >= 0:
            return cls("lognormal", values[0] / 1000, values[1])
        if kind == "king" and len(values) <= 1 and all(v > 0 for v in values):
            return cls("king", 0.0, values[0] if values else 1.0)
        raise LinkSpecError(f"bad latency {spec!r}: {_LATENCY_HELP}")

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a * 1000:g}"
        if self.kind == "uniform":
            return f"uniform:{self.a * 1000:g},{self.b * 1000:g}"
        if self.kind == "lognormal":
            return f"lognormal:{self.a * 1000:g},{self.b:g}"
        return f"king:{self.b:g}"


# King-style synthetic geography: cluster centres on a 200 x 100 "map"; one-way latency is
# _KING_BASE plus _KING_PER_UNIT per unit of distance. With these numbers the median one-way
# latency of random pairs is about 35-40 ms and same-cluster pairs are a few ms apart, the
# shape of the King measurements (median RTT of the order of 80 ms).
_KING_CLUSTERS = ((30.0, 30.0), (60.0, 70.0), (110.0, 40.0), (160.0, 65.0), (185.0, 20.0))
_KING_WEIGHTS = (0.35, 0.25, 0.2, 0.15, 0.05)
_KING_SPREAD = 8.0
_KING_BASE = 0.001
_KING_PER_UNIT = 0.0006


@dataclass(frozen=True, slots=True)
class Partition:
    """Between ``start`` and ``end`` (virtual s), messages between ``group`` and the rest vanish."""

    start: float
    end: float
    fraction: float

    @classmethod
    def parse(cls, spec: str) -> Partition:
        """``START,END,FRACTION``: e.g. ``10,20,0.3`` cuts 30 % of the peers off for 10 s."""
        try:
            start, end, fraction = (float(v) for v in spec.split(","))
        except ValueError:
            raise LinkSpecError(
                f"bad partition {spec!r}: use START_S,END_S,FRACTION (e.g. 10,20,0.3)"
            ) from None
        if not (0 <= start < end and 0 < fraction < 1):
            raise LinkSpecError(
                f"bad partition {spec!r}: need 0 <= START < END and 0 < FRACTION < 1"
            )
        return cls(start, end, fraction)


@dataclass(slots=True)
class LinkModel:
    """Everything that happens to a message on its way; seeded, so runs are reproducible.

    ``jitter`` adds a uniform extra delay in [0, jitter] per message while keeping the order of
    one connection (it models queueing on a stream, not reordering). ``loss`` drops a message
    with that probability. ``bandwidth`` (bytes/s per link, 0 = unlimited) adds a serialisation
    delay, so a burst queues behind itself. ``partitions`` cut a random group off for a while.

    Loss hits live BROADCAST_DATA only, as in ``hp2p.sim.network`` (R2 runs on a stream, which
    does not lose control messages; lost data is what the DR FE must pull back). ``loss_all``
    makes every message lossy, like a datagram transport.
    """

    latency: LatencyModel = field(default_factory=LatencyModel)
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth: float = 0.0
    partitions: tuple[Partition, ...] = ()
    seed: int = 0
    loss_all: bool = False
    _coords: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    _groups: dict[int, set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise LinkSpecError(f"loss must be in [0, 1), got {self.loss}")
        if self.jitter < 0 or self.bandwidth < 0:
            raise LinkSpecError("jitter and bandwidth must not be negative")

    @property
    def plain(self) -> bool:
        """No per-message effect: the engine can take its fast path."""
        return not (self.jitter or self.loss or self.bandwidth or self.partitions)

    def pair_latency(self, a: str, b: str) -> float:
        """One-way latency of the pair (symmetric), drawn from the seed and the two names."""
        lat = self.latency
        if lat.kind == "fixed":
            return lat.a
        if lat.kind == "king":
            (xa, ya), (xb, yb) = self._coord(a), self._coord(b)
            return (_KING_BASE + _KING_PER_UNIT * math.hypot(xa - xb, ya - yb)) * lat.b
        first, second = (a, b) if a < b else (b, a)
        rng = random.Random(f"{self.seed}:{first}:{second}")
        if lat.kind == "uniform":
            return rng.uniform(lat.a, lat.b)
        return lat.a * math.exp(rng.gauss(0.0, lat.b))

    def _coord(self, name: str) -> tuple[float, float]:
        point = self._coords.get(name)
        if point is None:
            rng = random.Random(f"{self.seed}:king:{name}")
            cx, cy = rng.choices(_KING_CLUSTERS, weights=_KING_WEIGHTS)[0]
            point = (rng.gauss(cx, _KING_SPREAD), rng.gauss(cy, _KING_SPREAD))
            self._coords[name] = point
        return point

    def start_partition(self, index: int, names: list[str]) -> set[str]:
        """Choose the peers that partition ``index`` cuts off, among ``names`` (live peers)."""
        part = self.partitions[index]
        rng = random.Random(f"{self.seed}:partition:{index}")
        count = min(len(names), max(1, round(part.fraction * len(names))))
        group = set(rng.sample(sorted(names), count))
        self._groups[index] = group
        return group

    def cut(self, a: str, b: str, now: float) -> bool:
        """Whether a partition active at ``now`` separates ``a`` from ``b``."""
        for index, group in self._groups.items():
            part = self.partitions[index]
            if part.start <= now < part.end and ((a in group) != (b in group)):
                return True
        return False
