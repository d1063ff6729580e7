"""`hp2p bench …`: one sub-command per metric family of BENCHMARKS.md, then `all` and `report`."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

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


@app.callback()
def _bench_admin_keys() -> None:
    """Every overlay a benchmark creates is thrown away with it: the admin keys its peers
    store go to a temporary folder (removed at exit), not the user's state directory."""
    if "HP2P_ADMIN_KEY_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="hp2p-bench-admin-keys-")
        os.environ["HP2P_ADMIN_KEY_DIR"] = folder
        atexit.register(shutil.rmtree, folder, True)


for _name, _command in FAMILIES.items():
    app.command(name=_name)(_command)
app.command(name="all")(run_all)
# not a family of `bench all`: it needs ffmpeg and runs minutes (docs/media.md)
app.command(name="media")(_media)
app.command(name="report")(report)
