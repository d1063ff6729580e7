"""The simulator engine: determinism, agreement with the test harness, link-model statistics."""

from __future__ import annotations

import statistics

import pytest

from hp2p.sim import network as base
from hp2p.sim.engine import SimNetwork
from hp2p.sim.links import LatencyModel, LinkModel, LinkSpecError, Partition
from hp2p.sim.metrics import analyse
from hp2p.sim.network import Network
from hp2p.sim.scenario import Scenario, ScenarioError, run_scenario
from hp2p.wire.r2.messages import BroadcastData

SMALL = Scenario(peers=30, join_gap=0.02, settle=3.0, rate=10.0, duration=3.0, drain=3.0)


def _trace(seed: int, scenario: Scenario = SMALL) -> tuple[object, ...]:
    record = run_scenario(scenario, seed)
    obs = record.observer
    return (
        list(obs.d_message),
        list(obs.d_peer),
        list(obs.d_time),
        list(obs.published_at),
        record.traffic,
        record.events,
    )


def test_same_seed_same_trace_and_another_seed_differs() -> None:
    first = _trace(7)
    assert first == _trace(7)
    assert first[2] != _trace(8)[2]


def test_plain_links_reproduce_the_harness_exactly() -> None:
    """SimNetwork with the harness's latency law gives the very same run as Network."""

    def build(net: Network) -> tuple[object, ...]:
        for i in range(60):
            net.at(i * 0.02, net.add_peer)
        net.run(6.0)
        for k in range(10):
            net.at(6.0 + k * 0.05, lambda: net.publish("p00001", b"x" * 100))
        net.run(10.0)
        deliveries = sum(p.deliveries for p in net.peers.values())
        return net.parents(), deliveries, net.events_processed

    plain = build(Network(seed=3))
    sim = build(SimNetwork(seed=3, links=LinkModel(LatencyModel("uniform", 0.001, 0.010), seed=3)))
    assert plain == sim
    assert plain[1] == 10 * 59


def test_uniform_latency_stays_in_range_with_the_expected_mean() -> None:
    model = LinkModel(LatencyModel.parse("uniform:1,10"), seed=1)
    values = [model.pair_latency(f"a{i}", f"b{i}") for i in range(4000)]
    assert min(values) >= 0.001
    assert max(values) <= 0.010
    assert statistics.fmean(values) == pytest.approx(0.0055, abs=0.0003)
    assert model.pair_latency("x", "y") == model.pair_latency("y", "x")


def test_lognormal_median_and_fixed_latency() -> None:
    model = LinkModel(LatencyModel.parse("lognormal:20,0.5"), seed=2)
    values = [model.pair_latency(f"a{i}", f"b{i}") for i in range(4000)]
    assert statistics.median(values) == pytest.approx(0.020, rel=0.08)
    assert LinkModel(LatencyModel.parse("fixed:5")).pair_latency("a", "b") == 0.005


def test_king_geography_has_a_wide_spread_and_close_neighbours() -> None:
    model = LinkModel(LatencyModel.parse("king"), seed=3)
    names = [f"p{i}" for i in range(200)]
    values = [model.pair_latency(a, b) for a in names[:50] for b in names[50:]]
    assert 0.015 <= statistics.median(values) <= 0.070
    assert min(values) < 0.008  # same cluster
    assert max(values) > 4 * statistics.median(values) / 2


@pytest.mark.parametrize("spec", ["bogus", "uniform:10,1", "fixed:-1", "lognormal:0,1", "king:x"])
def test_bad_latency_specs_say_how_to_write_them(spec: str) -> None:
    with pytest.raises(LinkSpecError, match="use fixed:MS"):
        LatencyModel.parse(spec)


@pytest.mark.parametrize("spec", ["1,2", "3,1,0.5", "1,2,1.5", "a,b,c"])
def test_bad_partitions_are_refused(spec: str) -> None:
    with pytest.raises(LinkSpecError, match="partition"):
        Partition.parse(spec)


def test_loss_happens_at_the_configured_rate_and_the_core_recovers_it() -> None:
    links = LinkModel(loss=0.1)
    # settle > heartbeat timeout: the core backfills a new source only once settled.
    record = run_scenario(Scenario(peers=30, settle=6.0, duration=4.0, links=links), seed=5)
    traffic = record.traffic
    assert 0.07 <= traffic.dropped / traffic.payload_copies <= 0.12
    metrics = analyse(record)["metrics"]
    assert metrics["delivery_ratio"] == 1.0
    assert metrics["duplicates_to_app"] == 0


def test_jitter_keeps_the_order_of_one_connection() -> None:
    net = SimNetwork(seed=1, links=LinkModel(LatencyModel.parse("fixed:5"), jitter=0.02, seed=1))
    for i in range(3):
        net.at(i * 0.1, net.add_peer)
    net.run(5.0)
    before = net._seq
    for _ in range(40):
        net.publish("p00001", b"x")
    scheduled = sorted((e for e in net._heap if e[1] > before), key=lambda e: e[1])
    per_link: dict[tuple[str, int], list[float]] = {}
    for when, _, kind, peer, conn, payload in scheduled:
        if kind == base._RECV and type(payload) is BroadcastData:
            per_link.setdefault((peer.peer_id, conn), []).append(when)
    assert len(per_link) == 2
    for times in per_link.values():
        assert len(times) == 40
        assert times == sorted(times)
        assert min(times) >= net.now + 0.005  # never earlier than the fixed latency
        assert len(set(times)) > 1  # the jitter did change the arrival times


def test_partition_drops_across_the_cut_and_heals() -> None:
    links = LinkModel(partitions=(Partition(1.0, 3.0, 0.3),))
    scenario = Scenario(peers=30, settle=3.0, duration=8.0, drain=5.0, links=links)
    result = analyse(run_scenario(scenario, seed=4))
    assert result["metrics"]["link_drops"] > 0
    late = [ratio for t, ratio in result["series"]["timeline"] if t >= 6.0]
    assert late
    assert all(r == 1.0 for r in late)


def test_bandwidth_delays_a_big_payload() -> None:
    fast = analyse(run_scenario(Scenario(peers=10, duration=2.0, settle=2.0), seed=1))
    slow_links = LinkModel(bandwidth=100_000)  # 1 KiB takes ~10 ms to serialise
    slow = analyse(run_scenario(Scenario(peers=10, duration=2.0, settle=2.0, links=slow_links), 1))
    assert slow["metrics"]["latency_p50_ms"] > fast["metrics"]["latency_p50_ms"] + 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peers": 0}, "peers"),
        ({"sources": "nobody"}, "sources"),
        ({"fail_fraction": 1.5}, "fail_fraction"),
        ({"heartbeat_interval": 5.0}, "heartbeat"),
        ({"rate": 1e6, "duration": 10.0}, "messages"),
    ],
)
def test_bad_scenarios_name_the_parameter(change: dict[str, object], message: str) -> None:
    scenario = Scenario(**change)  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match=message):
        scenario.check()
