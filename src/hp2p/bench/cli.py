"""`hp2p bench …`: one sub-command per metric family of BENCHMARKS.md."""

from __future__ import annotations

import typer

from hp2p.bench.all import run_all as _run_all
from hp2p.bench.churn import churn as _churn
from hp2p.bench.homs import homs as _homs
from hp2p.bench.mesh import mesh as _mesh
from hp2p.bench.report import report as _report
from hp2p.bench.tree import tree as _tree
from hp2p.bench.wire import wire as _wire
from hp2p.clistubs import not_yet

app = typer.Typer(
    help=(
        "Benchmarks (see BENCHMARKS.md). Each prints a table and, with --json FILE, writes "
        "the result file.\n\nExamples:\n\n  hp2p bench wire\n\n  hp2p bench wire --json "
        "bench-results/wire.json"
    ),
    no_args_is_help=True,
)

_STUBS: dict[str, int] = {}


def _stub(name: str, issue: int) -> None:
    @app.command(
        name=name,
        help=f"Not built yet: issue #{issue}.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def _cmd() -> None:
        not_yet(f"hp2p bench {name}", issue)


for _name, _issue in _STUBS.items():
    _stub(_name, _issue)

app.command(name="wire")(_wire)
app.command(name="homs")(_homs)
app.command(name="churn")(_churn)
app.command(name="tree")(_tree)
app.command(name="mesh")(_mesh)
app.command(name="all")(_run_all)
app.command(name="report")(_report)
