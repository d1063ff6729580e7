"""The `hp2p` command: one entry point, one sub-command per job.

Each sub-command lives next to the code it runs (``hp2p.homs.cli``, ``hp2p.bench.cli`` …) and
is only mounted here, so the CLI never grows logic of its own.
"""

from __future__ import annotations

import typer

from hp2p import __version__
from hp2p.bench.cli import app as bench_app
from hp2p.clistubs import not_yet
from hp2p.homs import cli as homs_cli

app = typer.Typer(
    name="hp2p",
    help=(
        "Hybrid peer-to-peer communications (ITU-T Q.4100-Q.4103).\n\n"
        "Examples:\n\n"
        "  hp2p demo                      # a HOMS and 12 peers on this machine\n\n"
        "  hp2p homs --port 8081          # run an overlay management server\n\n"
        "  hp2p bench wire --json w.json  # codec micro-benchmark"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hp2p {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Hybrid peer-to-peer communications (ITU-T Q.4100-Q.4103)."""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def peer() -> None:
    """Run a hybrid peer. Not built yet: issue #4."""
    not_yet("hp2p peer", 4)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo() -> None:
    """Start a HOMS and a handful of peers on this machine. Not built yet: issue #4."""
    not_yet("hp2p demo", 4)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sim() -> None:
    """Discrete-event simulator of thousands of peers. Not built yet: issue #6."""
    not_yet("hp2p sim", 6)


app.command(name="homs", epilog=homs_cli.EPILOG)(homs_cli.homs)
app.add_typer(bench_app, name="bench")


def main() -> None:
    app()
