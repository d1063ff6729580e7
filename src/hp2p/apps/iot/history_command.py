"""``hp2p iot history``: a history member of the IoT SubMesh, with its query API."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from typing import Annotated, Any

import typer

EPILOG = """
Examples:

  # keep the history of SubMesh iot-history in iot.sqlite, query it on port 7400
  hp2p iot history --homs http://127.0.0.1:8081 --join iot-history --db iot.sqlite \\
      --api 127.0.0.1:7400

  # keep a week, at most 1 GB; print JSON events
  hp2p iot history --join iot-history --db iot.sqlite --retention-age 7d \\
      --retention-bytes 1GB --json-events

  # each segment on two members only (of six, each stores about a third)
  hp2p iot history --join iot-history --db h1.sqlite --replicas 2

  curl 'http://127.0.0.1:7400/history?topic=sensors/t1&from=1764860000&to=1764863600'

Without --replicas every member stores every segment (full replication). With --replicas R
(give every member the same R) each segment is stored by the R live members that rendezvous
hashing picks; a query to any member fetches the rest from the mesh. Restart with the same
--db to keep the history; a late joiner pulls what its neighbours hold. See docs/iot.md
(History).
"""

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_age(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` in seconds."""
    match = _AGE.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"--retention-age {text!r}: give a positive time such as 7d, 12h or 90s")
    return float(match[1]) * _AGE_UNITS[match[2].lower()]


def parse_size(text: str) -> int:
    """``1GB`` (10^9), ``1GiB`` (2^30), ``500MB``, ``800k``, ``123`` in bytes."""
    match = _SIZE.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"--retention-bytes {text!r}: give a size such as 1GB, 500MB or 2GiB")
    unit = match[2].lower().rstrip("b")
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    base = 1024 if unit.endswith("i") else 1000
    return int(float(match[1]) * base**power)


def command(
    join: Annotated[str, typer.Option("--join", help="Title or overlay-id of the SubMesh.")],
    db: Annotated[str, typer.Option("--db", help="SQLite file of this member's history.")],
    homs: Annotated[str, typer.Option("--homs", help="HOMS URL.")] = "http://127.0.0.1:8081",
    api: Annotated[
        str | None,
        typer.Option("--api", help="Serve GET /history and /status on this loopback HOST:PORT."),
    ] = None,
    retention_age: Annotated[
        str | None, typer.Option("--retention-age", help="Keep this long (7d, 12h, 90s).")
    ] = None,
    retention_bytes: Annotated[
        str | None, typer.Option("--retention-bytes", help="Keep at most this much (1GB, 2GiB).")
    ] = None,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            help="Members that store each segment (0: every member stores every segment).",
        ),
    ] = 0,
    peer_id: Annotated[str | None, typer.Option("--id", help="Peer-id on the SubMesh.")] = None,
    json_events: Annotated[
        bool, typer.Option("--json-events", help="One JSON object per event on stdout.")
    ] = False,
) -> None:
    """Keep the IoT history of a SubMesh in SQLite and answer queries about it."""
    from hp2p.apps.iot.history import HistoryError
    from hp2p.apps.iot.history_member import HistoryMember, HistorySettings

    try:
        settings = HistorySettings(
            homs=homs,
            join=join,
            db=db,
            peer_id=peer_id,
            retention_age=parse_age(retention_age) if retention_age else None,
            retention_bytes=parse_size(retention_bytes) if retention_bytes else None,
            replicas=replicas,
        )
        member = HistoryMember(settings, on_event=_printer(json_events))
    except (ValueError, HistoryError) as exc:
        _fail(str(exc), 2)
    raise typer.Exit(asyncio.run(_run(member, api, json_events)))


def _fail(message: str, code: int) -> None:
    print(f"hp2p iot history: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _printer(json_events: bool) -> Any:
    from hp2p.apps.console import printer

    shown = frozenset({"joined", "rejected", "retention", "error", "api", "placement"})
    return printer(json_events, "iot history", shown=shown)


async def _run(member: Any, api_listen: str | None, json_events: bool) -> int:
    from hp2p.apps.iot.history import HistoryError
    from hp2p.apps.iot.history_api import HistoryApi
    from hp2p.peer.mesh_node import MeshNodeError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api = None
    try:
        if api_listen is not None:
            api = HistoryApi(member, api_listen)  # checked before joining
        await member.start()
        if api is not None:
            url = await api.start()
            member.emit("api", {"url": url})
    except (MeshNodeError, HistoryError, ValueError) as exc:
        print(f"hp2p iot history: {exc}", file=sys.stderr, flush=True)
        await member.close()
        return 1
    try:
        await _progress(member, stop, json_events)
        return 0
    finally:
        if api is not None:
            await api.stop()
        await member.close()


async def _progress(member: Any, stop: asyncio.Event, json_events: bool) -> None:
    """Until stopped: a status line every 10 s (rich), unless JSON events are printed."""
    from rich.console import Console

    console = Console(highlight=False)
    while not stop.is_set():  # ends on SIGINT/SIGTERM
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 10.0)
        if not json_events and not stop.is_set():
            s = member.status()
            placed = s.get("placement")
            replicas = (
                f"  replicas {placed['replicas']} of {len(placed['members'])} members  fetched "
                f"{s['stats']['fetched']}"
                if placed
                else ""
            )
            console.print(
                f"[dim]history[/dim] segments {s['store']['segments']}  readings "
                f"{s['store']['readings']}  rejected {s['store']['rejected']}  neighbours "
                f"{len(s['mesh']['neighbours'] or [])}{replicas}"
            )
