"""examples/iot/run.py, the one-command IoT example, runs as written and ends with a history."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_iot_example_shows_live_state_and_a_complete_history() -> None:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "iot" / "run.py"), "--seconds", "4"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "overlays up" in out
    # both gateways' devices reached the SubTree member's live state
    assert re.search(r"/a/dev-\d/temperature", out)
    assert re.search(r"/b/dev-\d/temperature", out)
    found = re.search(r"(\d+) readings, complete=True, gaps=\[\]", out)
    assert found, out[-2000:]
    assert 15 <= int(found.group(1)) <= 21  # 4 s at 20 readings/s over 4 devices: ~20 from dev-0
