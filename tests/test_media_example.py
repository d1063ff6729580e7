"""examples/media/run.py, the one-command media example, runs as written and ends with every
viewer at full continuity and a complete recording."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from media_helpers import needs_ffmpeg

pytestmark = [pytest.mark.slow, needs_ffmpeg]

ROOT = Path(__file__).resolve().parent.parent


def test_the_media_example_plays_to_every_viewer_and_records_everything() -> None:
    args = ["--viewers", "2", "--seconds", "8", "--size", "320x180", "--bitrate", "300k"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "media" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "/watch/cam1" in done.stdout
    assert "viewers: 2, continuity 100.0 %" in done.stdout, done.stdout[-2000:]
    assert re.search(r"recording: [3-9] segments, complete", done.stdout), done.stdout[-2000:]
