"""Long work shows progress: on a console that is not a terminal (a pipe, a log file, CI),
``hp2p sim`` and ``hp2p bench …`` write plain progress lines (no ANSI escapes) instead of
rich's live bars, which would draw nothing there (:mod:`hp2p.bench.progress`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rich.console import Console

from hp2p.bench.progress import LineProgress


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hp2p", *args],
        capture_output=True,  # pipes: not a terminal
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TERM": "xterm-256color", "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_sim_writes_plain_progress_lines_when_not_a_terminal() -> None:
    out = _run("sim", "--peers", "20", "--seeds", "1")
    lines = [ln for ln in out.splitlines() if ln.startswith("seed 1: 20 peers:")]
    assert len(lines) >= 3, out  # started, some tenths, done
    assert lines[-1].endswith("20.2/20.2"), lines  # the end of the virtual run
    assert "\x1b[" not in out


def test_bench_mesh_writes_its_phases_as_plain_lines() -> None:
    out = _run("bench", "mesh", "--quick", "--peers", "10")
    assert "seed 1: SubMesh pull, 10 peers: 0/2" in out
    assert "seed 1: tree push, 10 peers: 2/2" in out
    assert "\x1b[" not in out


def test_a_line_per_phase_and_tenth_not_per_update() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    with LineProgress(console=console) as progress:
        task = progress.add_task("[bold]joining", total=100)
        for _ in range(100):
            progress.advance(task)
        progress.update(task, description="messages", completed=0)
    lines = [ln for ln in buffer.getvalue().splitlines() if ln]
    assert lines[0] == "joining: 0/100"
    assert lines[-1] == "messages: 0/100"
    assert len(lines) == 12  # 0, 10 tenths, the new phase
    assert "\x1b[" not in buffer.getvalue()
