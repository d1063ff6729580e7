"""`hp2p bench media` runs end to end at a tiny size and writes every key of issue #15."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from media_helpers import needs_ffmpeg

pytestmark = [pytest.mark.slow, needs_ffmpeg]

KEYS = (
    "continuity",
    "continuity_p5",
    "startup_p50_s",
    "startup_p99_s",
    "latency_p50_s",
    "latency_p99_s",
    "source_bytes_ratio",
    "recording_complete",
)


def test_bench_media_writes_its_result_file(tmp_path: Path) -> None:
    out = tmp_path / "media.json"
    args = ["--viewers", "3", "--seconds", "8", "--recorders", "2", "--size", "320x180"]
    args += ["--bitrate", "300k", "--json", str(out), "--plot", str(tmp_path / "m.png")]
    done = subprocess.run(
        [sys.executable, "-m", "hp2p", "bench", "media", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    for key in KEYS:
        assert key in metrics
    assert metrics["segments"] >= 3
    assert metrics["continuity"] is not None
    assert metrics["recording_complete"] == 1.0  # one of two recorders killed half-way
    assert set(result["targets"])
    assert result["continuity_series"]
    assert (tmp_path / "m.png").stat().st_size > 1000
