"""``hp2p bench tree`` smoke run on a tiny overlay, and simulator/real-process agreement.

Real ``hp2p homs`` / ``hp2p peer`` and relay processes on 127.0.0.1, a few messages each: this
checks the result file and that nothing is lost, not any timing (timing targets belong to the
benchmark itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hp2p.bench.tree import tree
from hp2p.sim.metrics import analyse
from hp2p.sim.scenario import Scenario, run_scenario

app = typer.Typer()
app.command()(tree)

pytestmark = pytest.mark.slow


def test_tiny_tree_run_writes_the_result_file_and_agrees_with_the_simulator(
    tmp_path: Path,
) -> None:
    out = tmp_path / "tree.json"
    args = ["--peers", "5", "--messages", "5", "--rates", "40", "--step", "0.5"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "tree"
    assert set(doc["baselines"]) == {"floor", "flood", "unsigned"}
    metrics = doc["metrics"]
    for key in (
        "delivery_ratio",
        "latency_p50_ms",
        "latency_p99_ms",
        "last_delivery_p50_ms",
        "last_delivery_p99_ms",
        "cpu_us_per_hop_at_10_per_s",
        "rmr",
        "control_overhead",
        "rss_mb_per_process",
        "max_depth",
        "latency_depth1_p50_ms",
    ):
        assert key in metrics, key
    assert metrics["delivery_ratio"] == 1.0
    assert metrics["duplicates_to_app"] == 0
    assert metrics["unattached"] == 0
    for name in ("floor", "flood", "unsigned"):
        assert doc["baselines"][name]["delivery_ratio"] == 1.0
    assert doc["baselines"]["unsigned"]["duplicates_to_app"] == 0
    assert "signature_cost_us_per_hop" in metrics  # issue #11: the cost is reported
    assert doc["baselines"]["floor"]["rmr"] == 0.0
    assert doc["baselines"]["flood"]["rmr"] > 0.0  # flooding sends copies a tree does not
    assert doc["per_size"][0]["steps"]["hp2p"][0]["rate"] == 40.0
    assert "latency_p50_ms_vs_floor" in doc["ratios"]

    # Agreement: the same core in the simulator, same N and max_children, makes the same kind
    # of tree (one root, everyone attached, max_children respected) and delivers everything.
    sim = analyse(run_scenario(Scenario(peers=5, rate=10.0, duration=1.0), seed=1))["metrics"]
    assert sim["delivery_ratio"] == 1.0
    assert sim["unattached_at_start"] == 0
    assert sim["roots_at_start"] == 1
    assert sim["max_depth"] == 1  # four joiners fit under a root with four child slots
    assert 1 <= metrics["max_depth"] <= 2  # real joins race; a spare slot may go one deeper
