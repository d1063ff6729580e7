"""`hp2p media …` documents itself and refuses bad input with one line, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hp2p", "media", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": path, "PYTHONPATH": ":".join(sys.path)},
    )


def test_media_help_lists_the_commands_each_with_examples() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for name in ("source", "viewer", "bridge", "recorder"):
        assert name in out.stdout
        sub = _run(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Examples" in sub.stdout
        assert "hp2p media" in sub.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["source", "--overlay", "a", "--create", "b"], "give --overlay ID (join) or --create"),
        (["source", "--overlay", "a", "--input", "/nonexistent.mp4"], "does not exist"),
        (["source", "--overlay", "a", "--stream", "../x"], "stream name"),
        (["source", "--overlay", "a", "--segment", "60"], "--segment must be"),
        (["viewer", "--join", "a", "--api", "10.1.2.3:80"], "not a loopback address"),
        (["recorder", "--join", "a", "--dir", "/tmp/x", "--api", "8.8.8.8:1"], "not a loopback"),
        (["viewer", "--join", "a", "--homs", "ftp://x"], "must start with http"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(args: list[str], says: str) -> None:
    out = _run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert says in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_source_without_ffmpeg_says_how_to_install_it(tmp_path: object) -> None:
    out = _run("source", "--overlay", "a", path=str(tmp_path))
    assert out.returncode == 2
    assert "ffmpeg is not installed" in out.stderr
    assert "make media-deps" in out.stderr
