"""``hp2p bench all``: every benchmark family, one after another, then the report.

Families (BENCHMARKS.md): ``wire``, ``homs``, ``tree``, ``churn``, ``mesh``, ``iot``, ``chain``;
:data:`FAMILIES` is the one list of them, which ``hp2p bench`` (:mod:`hp2p.bench.cli`) mounts
too. Each runs in its own process (``python -m hp2p bench FAMILY --json …``), so one failing or
crashing family cannot take the others down, and each gets a wall-clock limit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hp2p.bench.chain import chain
from hp2p.bench.churn import churn
from hp2p.bench.homs import homs
from hp2p.bench.iot import iot
from hp2p.bench.mesh import mesh
from hp2p.bench.tree import tree
from hp2p.bench.wire import wire

#: The benchmark families, in the order ``hp2p bench all`` runs them: name -> command.
FAMILIES: dict[str, Callable[..., Any]] = {
    "wire": wire,
    "homs": homs,
    "tree": tree,
    "churn": churn,
    "mesh": mesh,
    "iot": iot,
    "chain": chain,
}


def available() -> dict[str, list[str]]:
    """Family -> the option names of its command (``--quick`` …)."""
    found: dict[str, list[str]] = {}
    for name, command in FAMILIES.items():
        probe = typer.Typer()
        probe.command(name=name)(command)
        click = typer.main.get_command(probe)
        found[name] = [opt for param in click.params for opt in getattr(param, "opts", [])]
    return found


def run_all(
    quick: Annotated[bool, typer.Option("--quick", help="Each family's --quick size.")] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the result files and the report.")
    ] = Path("bench-results"),
    limit: Annotated[float, typer.Option(help="Wall-clock limit per family, seconds.")] = 600.0,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these families (repeatable).")
    ] = None,
) -> None:
    """Run every available benchmark family, write bench-results/*.json and report.md.

    Examples:

      hp2p bench all --quick                  # < 10 minutes on a 2-core machine

      hp2p bench all --out /tmp/results --limit 900

      hp2p bench all --quick --only wire --only tree
    """
    console = Console()
    wanted = list(only or FAMILIES)
    unknown = sorted(set(wanted) - set(FAMILIES))
    if unknown:
        console.print(f"hp2p bench all: unknown families {unknown}; choose from {list(FAMILIES)}")
        raise typer.Exit(2)
    if limit <= 0:
        console.print("hp2p bench all: --limit must be positive")
        raise typer.Exit(2)
    options = available()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    outcome: list[tuple[str, str, float]] = []
    written: list[Path] = []
    for family in wanted:
        target = out / f"{family}-{stamp}.json"
        args = [sys.executable, "-m", "hp2p", "bench", family, "--json", str(target)]
        if quick and "--quick" in options[family]:
            args.append("--quick")
        console.rule(f"hp2p bench {family}{' --quick' if quick else ''}")
        start = time.monotonic()
        try:
            code = subprocess.run(args, timeout=limit, check=False).returncode
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"stopped after {limit:g} s"
        elapsed = time.monotonic() - start
        if status == "ok" and target.exists():
            written.append(target)
        outcome.append((family, status, elapsed))
    table = Table(title="hp2p bench all")
    table.add_column("family")
    table.add_column("status")
    table.add_column("wall s", justify="right")
    for family, status, elapsed in outcome:
        table.add_row(family, status, f"{elapsed:.0f}")
    console.print(table)
    if written:
        from hp2p.bench.report import load, render

        report_path = out / f"report-{stamp}.md"
        report_path.write_text(render(load(written)))
        console.print(f"report: {report_path}")
    if any(s.startswith(("failed", "stopped")) for _, s, _ in outcome):
        raise typer.Exit(1)
