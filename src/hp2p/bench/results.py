"""The result file every benchmark, `hp2p sim` and `hp2p demo` writes (BENCHMARKS.md).

One shape for all of them, so that `hp2p bench report` and the README tables can be made
from any mix of result files.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.console import Console

from hp2p import __version__

Figures = Mapping[str, float | int | str | None]


def _git_revision() -> str | None:
    """The short commit of the checkout the benchmark ran from, if there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def result_document(
    benchmark: str,
    *,
    params: Mapping[str, Any],
    metrics: Figures,
    baselines: Mapping[str, Figures] | None = None,
    ratios: Figures | None = None,
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "version": __version__,
        "git": _git_revision(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "params": dict(params),
        "metrics": dict(metrics),
        "baselines": {k: dict(v) for k, v in (baselines or {}).items()},
        "ratios": dict(ratios or {}),
    }


def write_result(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    """Write a result file, creating its folder; returns the path written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
    return target


def _cannot_write(console: Console, path: Path, exc: OSError) -> typer.Exit:
    console.print(f"[red]cannot write {path}: {exc.strerror}; pick a writable path[/]")
    return typer.Exit(1)


def check_writable(console: Console, *paths: Path | None) -> None:
    """Before minutes of measuring, not after: the folder of each path given can be made
    (else a red line and exit status 1)."""
    for path in paths:
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _cannot_write(console, path, exc) from None


def save_result(console: Console, path: Path | None, document: Mapping[str, Any]) -> None:
    """Write the result file when one was asked for, and say where (exit 1 if it cannot)."""
    if path is None:
        return
    try:
        written = write_result(path, document)
    except OSError as exc:
        raise _cannot_write(console, path, exc) from None
    console.print(f"result file: {written}")
