"""`hp2p bench mesh` on a small case: the BENCHMARKS.md result shape and sane figures."""

from __future__ import annotations

import json

from hp2p.bench.mesh import run


def test_small_run_compares_the_mesh_with_the_tree_push():
    doc = run(12, 256 * 1024, [1], 12.5e6, (0.001, 0.005), 16 * 1024)
    m, tree = doc["metrics"], doc["baselines"]["tree_push"]
    assert doc["benchmark"] == "mesh"
    assert m["delivery_ratio"] == 1.0
    assert tree["delivery_ratio"] == 1.0
    assert 1.0 < m["wire_amplification"] < 1.3
    assert 0.99 < tree["wire_amplification"] < 1.05
    assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"] <= m["last_delivery_p99_ms"]
    assert (
        doc["ratios"]["last_delivery_p50"]
        == m["last_delivery_p50_ms"] / tree["last_delivery_p50_ms"]
    )


def test_command_writes_the_result_file_and_refuses_bad_options(tmp_path):
    from typer.testing import CliRunner

    from hp2p.bench.cli import app

    out = tmp_path / "r" / "mesh.json"
    runner = CliRunner()
    ok = runner.invoke(
        app, ["mesh", "--peers", "8", "--size", "100000", "--seeds", "1", "--json", str(out)]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["params"]["peers"] == 8
    bad = runner.invoke(app, ["mesh", "--seeds", "0"])
    assert bad.exit_code == 2
    assert "--seeds must be at least 1" in bad.output
