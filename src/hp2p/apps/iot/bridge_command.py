"""``hp2p iot bridge``: the R3 bridge for IoT, readings to a SubTree, segments to a SubMesh.

It is :class:`hp2p.apps.bridge.Bridge` with two targets selecting app-id ``hp2p-iot``: a
SubTree that gets every reading as it is (live state), and a SubMesh that gets them packed
into time segments (:class:`hp2p.apps.iot.segments.SegmentPacker`) for history members.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Annotated, Any

import typer

EPILOG = """
Examples:

  # readings of CoreTree 'iot' live on SubTree iot-live, in 10 s segments on SubMesh iot-history
  hp2p iot bridge --homs http://127.0.0.1:8081 --core iot --id b1

  # only the history, 30 s segments, JSON events
  hp2p iot bridge --core iot --id b1 --subtree '' --submesh iot-history \\
      --segment-seconds 30 --json-events

A missing sub-overlay is created under the CoreTree (source peer-id ID-TITLE), which needs the
CoreTree's admin key (--core-admin-key or $HP2P_CORE_ADMIN_KEY). Give '' to leave a target
out. Standby bridges (hp2p bridge --standby-for) do not take segment targets. See docs/iot.md.
"""


def command(
    core: Annotated[str, typer.Option("--core", help="CoreTree overlay-id or title to join.")],
    homs: Annotated[str, typer.Option("--homs", help="HOMS URL.")] = "http://127.0.0.1:8081",
    subtree: Annotated[
        str, typer.Option("--subtree", help="SubTree title for live readings ('' for none).")
    ] = "iot-live",
    submesh: Annotated[
        str, typer.Option("--submesh", help="SubMesh title for history segments ('' for none).")
    ] = "iot-history",
    segment_seconds: Annotated[
        float, typer.Option("--segment-seconds", help="Time slice of one segment (seconds).")
    ] = 10.0,
    grace: Annotated[
        float, typer.Option("--grace", help="Seconds a slice stays open after it ends.")
    ] = 2.0,
    bridge_id: Annotated[
        str | None, typer.Option("--id", help="Bridge id (names the source peers).")
    ] = None,
    core_admin_key: Annotated[
        str | None,
        typer.Option(
            "--core-admin-key",
            help="The CoreTree's admin key (default $HP2P_CORE_ADMIN_KEY), to create targets.",
        ),
    ] = None,
    json_events: Annotated[
        bool, typer.Option("--json-events", help="One JSON object per event on stdout.")
    ] = False,
) -> None:
    """R3 bridge for IoT readings: live on a SubTree, segmented history on a SubMesh."""
    from hp2p.apps.bridge import Bridge, BridgeError, BridgeTarget
    from hp2p.apps.iot.reading import APP_ID
    from hp2p.apps.iot.segments import SegmentPacker, SegmentPolicy

    name = bridge_id or "iot-bridge"
    try:
        targets = []
        if subtree:
            targets.append(BridgeTarget("tree", subtree, f"{name}-{subtree}", frozenset({APP_ID})))
        packer = None
        if submesh:
            hold = max(60.0, segment_seconds + grace)
            policy = SegmentPolicy(slice_seconds=segment_seconds, grace=grace, max_hold=hold)
            packer = SegmentPacker(policy)
            targets.append(
                BridgeTarget(
                    "mesh", submesh, f"{name}-{submesh}", frozenset({APP_ID}), packer=packer
                )
            )
        bridge = Bridge(
            homs,
            core,
            targets,
            bridge_id=name,
            on_event=_printer(json_events),
            core_admin_key=core_admin_key or os.environ.get("HP2P_CORE_ADMIN_KEY"),
        )
    except (BridgeError, ValueError) as exc:
        print(f"hp2p iot bridge: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(_run(bridge, packer, json_events)))


def _printer(json_events: bool) -> Any:
    from rich.console import Console

    console = Console(highlight=False)

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if json_events:
            with contextlib.suppress(BrokenPipeError, ValueError):
                print(json.dumps({"event": kind, **fields}, default=str), flush=True)
        elif kind in ("joined", "error", "warning"):
            console.print(f"[bold]{kind}[/bold] {fields}")

    return on_event


async def _run(bridge: Any, packer: Any, json_events: bool) -> int:
    from rich.console import Console

    from hp2p.apps.bridge import BridgeError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bridge.start()
    except BridgeError as exc:
        print(f"hp2p iot bridge: {exc}", file=sys.stderr, flush=True)
        return 1
    console = Console(highlight=False)
    try:
        while not stop.is_set():  # ends on SIGINT/SIGTERM; a status line every 10 s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 10.0)
            if not json_events and not stop.is_set():
                stats = bridge.stats
                line = f"CoreTree messages {stats.received}  published {stats.forwarded}"
                if packer is not None:
                    s = packer.status()
                    line += f"  segments {s['segments']}  bad {s['bad_readings']}"
                console.print(f"[dim]iot bridge[/dim] {line}")
        return 0
    finally:
        await bridge.close()
