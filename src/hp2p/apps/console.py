"""What the application commands (iot, media, their bridges) share: an event printer (JSON
lines or a rich line) and a run loop until SIGINT/SIGTERM with a periodic status line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from typing import Any

EventSink = Callable[[str, dict[str, Any]], None]

#: Events a person sees without --json-events.
SHOWN = frozenset({"joined", "api", "missing", "ended", "error", "warning", "refused"})


def printer(
    json_events: bool,
    command: str,
    human: dict[str, Callable[[dict[str, Any]], str]] | None = None,
    shown: frozenset[str] = SHOWN,
) -> EventSink:
    """JSON lines on stdout (``--json-events``), else the notable events through rich;
    ``human`` gives an event its own line (e.g. a bridge's ``joined``)."""
    formats = human or {}
    from rich.console import Console

    console = Console(highlight=False)

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if json_events:
            with contextlib.suppress(BrokenPipeError, ValueError):
                print(json.dumps({"event": kind, **fields}, default=str), flush=True)
        elif kind in formats:
            with contextlib.suppress(BrokenPipeError, ValueError):
                console.print(formats[kind](fields), markup=False)
        elif kind in shown:
            with contextlib.suppress(BrokenPipeError, ValueError):
                console.print(f"[bold]{command}[/bold] {kind} {fields}")

    return on_event


async def until_stopped(
    status: Callable[[], str] | None,
    done: asyncio.Future[Any] | None = None,
    every: float = 10.0,
) -> None:
    """Wait for SIGINT/SIGTERM (or ``done``), printing ``status()`` every ``every`` s."""
    from rich.console import Console

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if done is not None:
        done.add_done_callback(lambda _f: stop.set())
    console = Console(highlight=False, stderr=True)
    while not stop.is_set():  # ends on a signal or when ``done`` completes
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if status is not None and not stop.is_set():
            with contextlib.suppress(BrokenPipeError, ValueError):
                console.print(f"[dim]{status()}[/dim]")


def command_group(help_text: str, package: str, commands: dict[str, str]) -> Any:
    """A ``typer`` group of one application (``hp2p iot``, ``hp2p media``): each sub-command
    is the ``command`` (and ``EPILOG``) of a module of ``package``, named in ``commands``."""
    import importlib

    import typer

    app = typer.Typer(help=help_text, no_args_is_help=True)
    for name, module_name in commands.items():
        module = importlib.import_module(f"{package}.{module_name}")
        app.command(name=name, epilog=module.EPILOG)(module.command)
    return app
