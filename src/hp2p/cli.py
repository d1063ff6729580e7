"""The `hp2p` command: one entry point, one sub-command per job.

Each sub-command lives next to the code it runs (``hp2p.homs.cli``, ``hp2p.bench.cli`` …) and
is only mounted here, so the CLI never grows logic of its own.

The full command tree imports the HOMS (FastAPI, SQLAlchemy, uvicorn) and the benchmarks. A
peer process must stay small (≤ 30 MB RSS per peer, BENCHMARKS.md metric 7), so ``hp2p peer``
is dispatched by :func:`main` to a tree holding only that command, and ``app`` is built on
first use.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from hp2p import __version__
from hp2p.peer import cli as peer_cli


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hp2p {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Hybrid peer-to-peer communications (ITU-T Q.4100-Q.4103)."""


def _new_app() -> typer.Typer:
    return typer.Typer(
        name="hp2p",
        help=(
            "Hybrid peer-to-peer communications (ITU-T Q.4100-Q.4103).\n\n"
            "Examples:\n\n"
            "  hp2p demo                      # a HOMS and 12 peers on this machine\n\n"
            "  hp2p homs --port 8081          # run an overlay management server\n\n"
            "  hp2p overlay list              # the overlays of a HOMS (docs/operate.md)\n\n"
            "  hp2p bench wire --json w.json  # codec micro-benchmark"
        ),
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_show_locals=False,
    )


def _mount_peer(target: typer.Typer) -> None:
    target.callback()(_root)
    target.command(name="peer", epilog=peer_cli.EPILOG)(peer_cli.peer)


def build_app() -> typer.Typer:
    """The whole ``hp2p`` command tree."""
    from hp2p.bench.cli import app as bench_app
    from hp2p.demo import EPILOG as DEMO_EPILOG
    from hp2p.demo import demo
    from hp2p.homs import cli as homs_cli
    from hp2p.sim import cli as sim_cli

    full = _new_app()
    _mount_peer(full)
    full.command(name="demo", epilog=DEMO_EPILOG)(demo)

    full.command(name="sim", epilog=sim_cli.EPILOG)(sim_cli.sim)
    full.command(name="homs", epilog=homs_cli.EPILOG)(homs_cli.homs)
    full.add_typer(bench_app, name="bench")
    from hp2p.apps import bridge as bridge_cli

    full.command(name="bridge", **bridge_cli.COMMAND_SETTINGS)(bridge_cli.command)
    from hp2p.apps.iot.cli import app as iot_app

    full.add_typer(iot_app, name="iot")
    from hp2p.apps.chain.cli import app as chain_app

    full.add_typer(chain_app, name="chain")
    from hp2p.admin.cli import app as overlay_app

    full.add_typer(overlay_app, name="overlay")
    from hp2p.apps.media.cli import app as media_app

    full.add_typer(media_app, name="media")
    return full


_built: dict[str, typer.Typer] = {}


def __getattr__(name: str) -> Any:
    if name == "app":
        if "app" not in _built:
            _built["app"] = build_app()
        return _built["app"]
    raise AttributeError(name)


def main() -> None:
    if sys.argv[1:2] == ["peer"]:
        small = _new_app()
        _mount_peer(small)
        small()
        return
    __getattr__("app")()
