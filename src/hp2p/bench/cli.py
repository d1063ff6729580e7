"""`hp2p bench …`: one sub-command per metric family of BENCHMARKS.md, then `all` and `report`."""

from __future__ import annotations

import typer

from hp2p.bench.all import FAMILIES, run_all
from hp2p.bench.media import media as _media
from hp2p.bench.report import report

app = typer.Typer(
    help=(
        "Benchmarks (see BENCHMARKS.md). Each prints a table and, with --json FILE, writes "
        "the result file.\n\nExamples:\n\n  hp2p bench wire\n\n  hp2p bench wire --json "
        "bench-results/wire.json"
    ),
    no_args_is_help=True,
)

for _name, _command in FAMILIES.items():
    app.command(name=_name)(_command)
app.command(name="all")(run_all)
# not a family of `bench all`: it needs ffmpeg and runs minutes (docs/media.md)
app.command(name="media")(_media)
app.command(name="report")(report)
