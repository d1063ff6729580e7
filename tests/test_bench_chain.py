"""``hp2p bench chain``: its figures from recorded events (pure), and a small real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hp2p.bench.chain_figures import BlockInfo, TxRecord, block_figures, tx_figures

ROOT = Path(__file__).resolve().parents[1]


def head(t: float, height: int, digest: str, final: int = 0) -> dict[str, Any]:
    return {"event": "head", "t": t, "height": height, "hash": digest, "final_height": final}


def test_tx_figures_count_delivery_latency_and_copies() -> None:
    records = [
        TxRecord("a", "p1", 10.0, True, 202),
        TxRecord("b", "p2", 11.0, True, 202),
        TxRecord("c", "p1", 12.0, False, 422, kind="forged"),  # refused: not counted
    ]
    events = {
        "p1": {"b": [11.004]},
        "p2": {"a": [10.010, 10.020]},  # a duplicate copy
        "p3": {"a": [10.030], "b": [11.002]},
    }
    got = tx_figures(records, events)
    assert got["txs_accepted"] == 2
    assert got["tx_delivery_ratio"] == 1.0
    assert got["tx_p50_ms"] == pytest.approx(4.0, abs=0.01)  # b: the slower of 4 ms and 2 ms
    assert got["tx_p99_ms"] == pytest.approx(30.0, abs=0.01)  # a: the last producer at 30 ms
    assert got["tx_duplicates"] == pytest.approx(5 / 4 - 1)  # 5 copies for 4 deliveries
    missing = tx_figures(records, {**events, "p3": {}})
    assert missing["tx_delivery_ratio"] == pytest.approx(4 / 6)


def test_block_figures_time_blocks_finality_and_count_forks() -> None:
    blocks = [BlockInfo(1, "h1", ["a"]), BlockInfo(2, "h2", ["b", "x"])]
    events = {
        "p1": [
            head(1.0, 1, "h1"),
            head(3.0, 2, "h2"),
            head(5.0, 3, "h3", 1),
            head(7.0, 4, "h4", 2),
        ],
        "n1": [head(1.2, 1, "h1"), head(3.1, 2, "h2")],
        "n2": [head(1.5, 1, "h1"), head(3.05, 2, "other"), head(3.3, 2, "h2")],  # a fork at 2
    }
    records = [
        TxRecord("a", "p1", 0.5, True, 202),
        TxRecord("b", "p1", 2.5, True, 202),
        TxRecord("x", "p1", 2.6, False, 422, kind="overspend"),  # yet in a block: counted
    ]
    got = block_figures(blocks, events, ["p1"], ["n1", "n2"], records)
    assert got["_block_latencies_ms"] == [500.0, 300.0]
    assert got["finality_p50_s"] == pytest.approx(4.5)
    assert got["txs_finalised"] == 2
    assert got["forks"] == 1
    assert got["invalid_in_blocks"] == 1


@pytest.mark.slow
def test_a_small_chain_benchmark_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "chain.json"
    args = ["--producers", "2", "--nodes", "1", "--rate", "10", "--seconds", "3"]
    args += ["--sync-blocks", "20", "--json", str(out)]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "hp2p", "bench", "chain", *args],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    doc = json.loads(out.read_text())
    metrics = doc["metrics"]
    for key in ("tx_delivery_ratio", "tx_p50_ms", "tx_p99_ms", "tx_duplicates", "block_p99_ms",
                "finality_p99_s", "tx_per_s", "invalid_accepted", "forks", "sync_s"):  # fmt: skip
        assert metrics[key] is not None, key
    assert metrics["tx_delivery_ratio"] == 1.0
    assert metrics["tx_duplicates"] == 0
    assert metrics["invalid_sent"] >= 1
    assert metrics["invalid_accepted"] == 0
    assert metrics["all_nodes_agree_at_top"] is True
    assert metrics["sync_blocks"] >= 20
    assert "skipped" in doc["baselines"]["gossipsub"]
    assert set(doc["params"]["targets"]) >= {"tx delivery 100 %", "sync <= 30 s"}
