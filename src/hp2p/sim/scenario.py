"""A simulation scenario: who joins when, what is published, which faults and churn happen.

One :class:`Scenario` describes a run on a virtual timeline; :func:`run_scenario` plays it with
one seed on a :class:`~hp2p.sim.engine.SimNetwork` and returns the raw records, the traffic
counters and the wall-clock cost. Everything random (join order jitter, victims, churn times,
sources) comes from generators seeded by the scenario seed, so a run is a pure function of
(scenario, seed) and can be replayed exactly.

Timeline::

    0 ── joins (one every join_gap) ── settle ──┬── traffic for `duration` ──┬── drain ──
                                             t_start   (faults, churn)      t_end
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hp2p.peer.config import PeerConfig
from hp2p.sim.engine import SimNetwork, Traffic
from hp2p.sim.links import LinkModel, Partition
from hp2p.sim.network import MemoryHoms
from hp2p.sim.observe import Observer


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """Parameters of one simulated run (times in virtual seconds)."""

    peers: int = 100
    join_gap: float = 0.01
    settle: float = 5.0
    rate: float = 10.0  # broadcasts per second during the traffic window
    duration: float = 10.0
    drain: float = 5.0
    payload: int = 1024
    sources: str = "root"  # root | random
    max_children: int = 4  # children per peer (PeerConfig.max_children)
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    cache_count: int = 1024
    fail_fraction: float = 0.0  # mass failure: this share of the peers at fail_at
    fail_at: float = 3.0  # seconds after the start of traffic
    fail_mode: str = "crash"  # crash | hang
    spare_root: bool = True  # the mass failure never takes the root (a publisher)
    join_rate: float = 0.0  # continuous churn during traffic: joins per second
    leave_rate: float = 0.0  # continuous churn during traffic: departures per second
    leave_mode: str = "crash"  # crash | leave | hang
    links: LinkModel = field(default_factory=LinkModel)
    codec: bool = False
    max_events: int = 200_000_000

    def check(self) -> None:
        """Raise :class:`ScenarioError` for values that would make the run meaningless."""
        if self.peers < 1:
            raise ScenarioError("peers must be at least 1")
        if self.join_gap < 0 or self.settle < 0 or self.drain < 0:
            raise ScenarioError("join_gap, settle and drain must not be negative")
        if self.rate < 0 or self.duration <= 0:
            raise ScenarioError("rate must be >= 0 and duration > 0")
        if self.rate * self.duration > 1_000_000:
            raise ScenarioError("rate x duration is over 1,000,000 messages; shorten the run")
        if self.payload < 0:
            raise ScenarioError("payload must not be negative")
        if self.sources not in ("root", "random"):
            raise ScenarioError("sources must be 'root' or 'random'")
        if self.max_children < 1:
            raise ScenarioError("max_children must be at least 1")
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ScenarioError("need 0 < heartbeat_interval < heartbeat_timeout")
        if not 0.0 <= self.fail_fraction < 1.0:
            raise ScenarioError("fail_fraction must be in [0, 1)")
        if self.fail_mode not in ("crash", "hang"):
            raise ScenarioError("fail_mode must be 'crash' or 'hang'")
        if self.leave_mode not in ("crash", "leave", "hang"):
            raise ScenarioError("leave_mode must be 'crash', 'leave' or 'hang'")
        if self.join_rate < 0 or self.leave_rate < 0:
            raise ScenarioError("join_rate and leave_rate must not be negative")
        if self.cache_count < 1:
            raise ScenarioError("cache_count must be at least 1")

    @property
    def traffic_start(self) -> float:
        return self.peers * self.join_gap + self.settle

    @property
    def traffic_end(self) -> float:
        return self.traffic_start + self.duration

    @property
    def end(self) -> float:
        return self.traffic_end + self.drain

    def config(self) -> PeerConfig:
        # Big runs need small caches: 10,000 cores x 1024 cached 1 KiB messages is 10 GB.
        return PeerConfig(
            max_children=self.max_children,
            cache_count=self.cache_count,
            cache_bytes=max(self.cache_count * max(self.payload, 1) * 2, 1 << 16),
        )


@dataclass(slots=True)
class RunRecord:
    """What one seed produced: records, counters and costs, before any statistics."""

    scenario: Scenario
    seed: int
    observer: Observer
    traffic: Traffic  # during [traffic_start, end]
    wall_s: float  # whole run
    traffic_wall_s: float  # wall time of [traffic_start, end]
    traffic_cpu_s: float  # CPU time of this process over the same window (noisy machines)
    events: int
    deliveries_in_window: int
    fault_time: float | None = None
    orphans: list[int] = field(default_factory=list)  # peer indexes whose parent failed
    depths_at_start: list[int] = field(default_factory=list)
    unattached_at_start: int = 0
    roots_at_start: int = 0
    loop_free: bool = True
    peers_alive_at_end: int = 0


Progress = Callable[[float, float], None]  # (virtual now, virtual end)


def run_scenario(scenario: Scenario, seed: int, progress: Progress | None = None) -> RunRecord:
    """Play ``scenario`` with ``seed``; ``progress`` is called about once per virtual second."""
    scenario.check()
    observer = Observer()
    t0 = scenario.traffic_start
    # Partitions are given relative to the start of traffic; the link model wants absolute times.
    links = replace(
        scenario.links,
        seed=seed,
        partitions=tuple(
            Partition(p.start + t0, p.end + t0, p.fraction) for p in scenario.links.partitions
        ),
    )
    homs = MemoryHoms(
        heartbeat_interval=scenario.heartbeat_interval,
        heartbeat_timeout=scenario.heartbeat_timeout,
    )
    net = SimNetwork(
        seed=seed,
        config=scenario.config(),
        links=links,
        homs=homs,
        codec=scenario.codec,
        on_effect=observer.on_effect,
    )
    rng = random.Random(f"{seed}:scenario")
    wall0 = time.perf_counter()
    for i in range(scenario.peers):
        net.at(i * scenario.join_gap, lambda: observer.index_of(net.add_peer()))
    record = RunRecord(scenario, seed, observer, Traffic(), 0.0, 0.0, 0.0, 0, 0)
    _advance(net, t0, scenario, progress)

    # Snapshot of the tree when traffic starts.
    depths = net.depths()
    record.depths_at_start = sorted(d for d in depths.values() if d is not None)
    record.unattached_at_start = sum(1 for p in net.alive() if not p.core.attached)
    record.roots_at_start = len(net.roots())
    roots = net.roots()
    root = roots[0] if roots else None

    def publish() -> None:
        source = root if root is not None and net.peers[root].alive else None
        if scenario.sources == "random" or source is None:
            live = [p.peer_id for p in net.alive() if p.core.attached]
            if not live:
                return
            source = rng.choice(live)
        # The publisher never delivers to itself; other peers deliver in later events, so
        # registering the message after the call is in time.
        sequence = net.publish(source, b"\x00" * scenario.payload)
        observer.published(source, sequence, net.now, root=source == root)

    if scenario.rate > 0:
        count = int(scenario.rate * scenario.duration)
        for k in range(count):
            net.at(t0 + k / scenario.rate, publish)
    if scenario.fail_fraction > 0:
        record.fault_time = t0 + scenario.fail_at

        def mass_failure() -> None:
            live = sorted(p.peer_id for p in net.alive())
            pool = [name for name in live if not (scenario.spare_root and name == root)]
            victims = rng.sample(pool, min(len(pool), round(scenario.fail_fraction * len(live))))
            chosen = set(victims)
            record.orphans = [
                observer.index_of(p.peer_id)
                for p in net.alive()
                if p.peer_id not in chosen and p.core.parent in chosen
            ]
            for name in victims:
                observer.died(name, net.now)
            net.crash_many(victims, hang=scenario.fail_mode == "hang")

        net.at(record.fault_time, mass_failure)
    _schedule_churn(net, scenario, observer, rng, lambda: root)
    for index, part in enumerate(links.partitions):

        def start_partition(index: int = index) -> None:
            links.start_partition(index, sorted(p.peer_id for p in net.alive()))

        net.at(part.start, start_partition)

    before = net.traffic.copy()
    delivered_before = len(observer.d_time)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    _advance(net, scenario.end, scenario, progress)
    wall2, cpu2 = time.perf_counter(), time.process_time()
    record.traffic_cpu_s = cpu2 - cpu1
    record.traffic = net.traffic.minus(before)
    record.traffic_wall_s = wall2 - wall1
    record.wall_s = wall2 - wall0
    record.deliveries_in_window = len(observer.d_time) - delivered_before
    record.events = net.events_processed
    record.loop_free = net.loop_free()
    record.peers_alive_at_end = len(net.alive())
    return record


def _advance(net: SimNetwork, until: float, scenario: Scenario, progress: Progress | None) -> None:
    """Run to ``until`` in one-virtual-second steps (progress), bounded by ``max_events``."""
    step = 1.0
    while net.now < until:
        target = min(until, math.floor(net.now / step) * step + step)
        budget = scenario.max_events - net.events_processed
        if budget <= 0:
            raise ScenarioError(
                f"the run exceeded max_events={scenario.max_events} at virtual t={net.now:.1f} s"
            )
        net.run(target, max_events=budget)
        if progress is not None:
            progress(net.now, scenario.end)


def _schedule_churn(
    net: SimNetwork,
    scenario: Scenario,
    observer: Observer,
    rng: random.Random,
    root: Callable[[], str | None],
) -> None:
    """Poisson joins and departures during the traffic window (times drawn up front)."""
    t0, t1 = scenario.traffic_start, scenario.traffic_end
    for rate, action in ((scenario.join_rate, "join"), (scenario.leave_rate, "leave")):
        if rate <= 0:
            continue
        t = t0 + rng.expovariate(rate)
        while t < t1:
            if action == "join":
                net.at(t, lambda: observer.index_of(net.add_peer()))
            else:
                net.at(t, lambda: _depart(net, scenario, observer, rng, root()))
            t += rng.expovariate(rate)


def _depart(
    net: SimNetwork, scenario: Scenario, observer: Observer, rng: random.Random, root: str | None
) -> None:
    live = sorted(p.peer_id for p in net.alive() if p.peer_id != root)
    if len(live) < 2:
        return
    name = rng.choice(live)
    observer.died(name, net.now)
    if scenario.leave_mode == "leave":
        net.leave(name)
    else:
        net.crash_many([name], hang=scenario.leave_mode == "hang")
