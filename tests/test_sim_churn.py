"""Churn models of the simulator: mass failure (crash and hang) and continuous join/leave."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from hp2p.sim.metrics import analyse
from hp2p.sim.scenario import Scenario, run_scenario

BASE = Scenario(peers=60, join_gap=0.02, settle=4.0, rate=10.0, duration=8.0, drain=5.0)


def _run(**change: Any) -> dict[str, Any]:
    return analyse(run_scenario(replace(BASE, **change), seed=11))


def test_mass_crash_orphans_are_repaired_and_nothing_is_lost_afterwards() -> None:
    result = _run(fail_fraction=0.3, fail_at=2.0)
    metrics = result["metrics"]
    assert metrics["orphans"] > 0
    assert metrics["unrepaired"] == 0
    assert metrics["delivery_ratio_after"] == 1.0
    assert metrics["duplicates_to_app"] == 0
    assert metrics["loop_free"] is True
    assert metrics["repair_p99_ms"] is not None


def test_a_hang_is_found_only_by_heartbeats_so_repair_takes_longer() -> None:
    crash = _run(fail_fraction=0.3, fail_at=2.0)["metrics"]
    hang = _run(fail_fraction=0.3, fail_at=2.0, fail_mode="hang")["metrics"]
    assert hang["orphans"] > 0
    # Nothing tells a child that a hung parent is gone before its heartbeat timeout (3 s).
    assert hang["repair_p50_ms"] >= 0.5 * BASE.heartbeat_timeout * 1000
    assert hang["repair_p50_ms"] > crash["repair_p50_ms"]
    assert hang["delivery_ratio_after"] == 1.0


def test_continuous_churn_joins_and_departs_while_delivery_holds() -> None:
    record = run_scenario(replace(BASE, join_rate=2.0, leave_rate=2.0), seed=3)
    obs = record.observer
    departed = sum(1 for t in obs.died_at if t != math.inf)
    assert len(obs.peer_index) > BASE.peers  # newcomers joined during traffic
    assert departed >= 5
    metrics = analyse(record)["metrics"]
    assert metrics["delivery_ratio"] >= 0.99
    assert metrics["duplicates_to_app"] == 0


def test_graceful_leaves_lose_nothing() -> None:
    record = run_scenario(replace(BASE, leave_rate=2.0, leave_mode="leave"), seed=5)
    metrics = analyse(record)["metrics"]
    assert sum(1 for t in record.observer.died_at if t != math.inf) >= 5
    assert metrics["delivery_ratio"] == 1.0
