"""``hp2p bench report`` and ``hp2p bench all``: markdown from result files, family discovery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from hp2p.bench import cli as bench_cli
from hp2p.bench.all import FAMILIES, available
from hp2p.bench.report import report
from hp2p.bench.results import result_document, write_result

app = typer.Typer()
app.command()(report)


def _write(folder: Path) -> Path:
    doc = result_document(
        "tree",
        params={"peers": 50, "payload": 1024},
        metrics={"latency_p50_ms": 2.5, "deliveries_per_s": 9000, "loop_free": True},
        baselines={"floor": {"latency_p50_ms": 2.0, "deliveries_per_s": 12000}},
        ratios={"latency_p50_ms_vs_floor": 1.25, "deliveries_per_s_vs_floor": 0.75},
    )
    doc["metrics"]["x"] = [1]  # not a figure: must not become a table row
    return write_result(folder / "tree.json", doc)


def test_report_renders_figures_baselines_and_ratios(tmp_path: Path) -> None:
    _write(tmp_path)
    result = CliRunner().invoke(app, ["--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "### tree — " in text
    assert " CPUs, Python " in text
    assert "| figure | hp2p | floor | hp2p / floor |" in text
    assert "| latency_p50_ms | 2.5 | 2 | 1.25 |" in text
    assert "| deliveries_per_s | 9000 | 12000 | 0.75 |" in text
    assert "| x |" not in text  # lists are not table cells


def test_report_writes_a_file_and_refuses_bad_input(tmp_path: Path) -> None:
    path = _write(tmp_path)
    out = tmp_path / "r.md"
    runner = CliRunner()
    assert runner.invoke(app, [str(path), "-o", str(out)]).exit_code == 0
    assert "| latency_p50_ms |" in out.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no": "metrics"}))
    result = runner.invoke(app, [str(bad)])
    assert result.exit_code == 2
    assert "not a BENCHMARKS.md result file" in result.output
    result = runner.invoke(app, ["--dir", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "no folder" in result.output


def test_bench_all_runs_every_family_with_its_quick_size() -> None:
    found = available()
    assert "tree" in found
    assert "--quick" in found["tree"]
    assert "wire" in found
    assert set(found) == set(FAMILIES)
    assert all("--quick" in options for options in found.values())
    # `hp2p bench` mounts exactly these families, plus `all`, `report` and `media` (which
    # needs ffmpeg and runs minutes, so `bench all` leaves it out: docs/media.md)
    group = typer.main.get_command(bench_cli.app)
    assert set(getattr(group, "commands", {})) == {*FAMILIES, "all", "report", "media"}
    assert "media" not in FAMILIES


def test_bench_all_does_not_import_the_bench_command_line() -> None:
    """No import circle: ``hp2p.bench.cli`` mounts ``hp2p.bench.all``, never the reverse."""
    probe = "import sys, hp2p.bench.all; print('hp2p.bench.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
