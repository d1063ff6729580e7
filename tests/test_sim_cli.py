"""``hp2p sim``: the result file's shape, the plots, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from hp2p.sim.cli import sim

app = typer.Typer()
app.command()(sim)
SMALL = ["--peers", "20", "--settle", "3", "--duration", "2", "--drain", "2"]


def test_json_result_file_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    plots = tmp_path / "plots"
    args = [*SMALL, "--seeds", "1,2", "--fail", "0.2", "--fail-at", "0.5"]
    result = CliRunner().invoke(app, [*args, "--json", str(out), "--plots", str(plots)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "sim"
    assert {"version", "git", "date", "machine", "params", "metrics", "baselines", "ratios"} <= set(
        doc
    )
    metrics = doc["metrics"]
    for key in (
        "delivery_ratio",
        "delivery_ratio_during",
        "repair_p50_ms",
        "rmr",
        "control_overhead",
        "latency_p50_ms",
        "last_delivery_p99_ms",
        "sim_deliveries_per_s",
        "sim_peers",
    ):
        assert key in metrics
    assert metrics["sim_peers"] == 20
    assert metrics["delivery_ratio"] > 0.9
    assert doc["params"]["seeds"] == [1, 2]
    assert [run["seed"] for run in doc["per_seed"]] == [1, 2]
    for name in ("latency_cdf.png", "delivery_over_time.png", "depth_histogram.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_exit_2_with_a_reason() -> None:
    runner = CliRunner()
    cases = {
        ("--latency", "warp:9"): "use fixed:MS",
        ("--seeds", "a,b"): "--seeds",
        ("--peers", "0"): "peers must be",
        ("--partition", "5,1,0.2"): "partition",
        ("--leave-mode", "explode"): "leave_mode",
    }
    for args, needle in cases.items():
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output, (args, result.output)


def test_children_per_peer_is_max_children_and_fanout_is_a_deprecated_alias(
    tmp_path: Path,
) -> None:
    """Issue #10: one name per thing; --fanout stays only as a hidden, warned alias."""
    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "--max-children" in help_text
    assert "--fanout" not in help_text
    out = tmp_path / "sim.json"
    args = ["--peers", "8", "--settle", "2", "--duration", "1", "--drain", "1", "--seeds", "1"]
    result = CliRunner().invoke(app, [*args, "--max-children", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["params"]["max_children"] == 2
    old = CliRunner().invoke(app, [*args, "--fanout", "3", "--json", str(out)])
    assert old.exit_code == 0, old.output
    assert "--fanout is deprecated: use --max-children" in old.output
    assert json.loads(out.read_text())["params"]["max_children"] == 3
