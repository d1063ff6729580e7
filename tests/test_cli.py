"""The `hp2p` command is installed, documents itself and is honest about stubs."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hp2p", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_subcommands() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for name in ("homs", "peer", "demo", "bench", "sim"):
        assert name in out.stdout


def test_version() -> None:
    out = _run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("hp2p ")
