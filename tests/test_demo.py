"""``hp2p demo`` runs to the end by itself and writes an honest result file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hp2p.demo import percentile

pytestmark = pytest.mark.slow


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) in (50.0, 51.0)
    assert percentile(values, 0.99) == 99.0


def test_demo_five_peers_five_seconds(tmp_path: Path) -> None:
    result = tmp_path / "demo.json"
    out = subprocess.run(
        [sys.executable, "-m", "hp2p", "demo", "--peers", "5", "--seconds", "5", "--json", result],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads(result.read_text())
    assert doc["benchmark"] == "demo"
    assert set(doc) >= {"version", "git", "date", "machine", "params", "metrics"}
    metrics = doc["metrics"]
    assert metrics["peers"] == 5
    assert metrics["joined"] == 5
    assert metrics["messages"] >= 3 * 5  # 3 sources, at least one message per second each
    assert metrics["delivery_ratio"] == 1.0
    assert metrics["duplicates_to_app"] == 0
    assert metrics["deliveries"] == metrics["messages"] * 4
    assert metrics["latency_p50_ms"] is not None
    assert metrics["latency_p50_ms"] <= metrics["latency_p99_ms"]
    assert "summary" in out.stdout
