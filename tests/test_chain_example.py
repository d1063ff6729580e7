"""examples/chain/run.py, the one-command chain example, runs as written and ends with a
summary in which every node agrees and every forged transfer was refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_chain_example_confirms_every_accepted_transfer_on_every_node() -> None:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "src")}
    args = ["--nodes", "3", "--seconds", "5", "--rate", "20", "--start-in", "12"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "chain" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert lines, done.stdout[-2000:]
    summary = json.loads(lines[-1].removeprefix("SUMMARY "))
    assert summary["sent"] == 100
    assert summary["forged"] == 4
    assert summary["forged_refused"] == 4
    assert summary["accepted"] == 96
    assert summary["nodes"] == summary["answering"] == 7  # 4 producers, 3 full nodes
    assert summary["final_height"] >= 2
    assert summary["agree_at_final"] == 7
    assert summary["blocks_refused"] == {}
    for counts in summary["confirmed"].values():  # a producer and a full node
        assert counts == {"final": 96}, summary
    assert "chain after" in done.stdout  # the live table was shown
