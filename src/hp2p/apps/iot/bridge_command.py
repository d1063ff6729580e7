"""``hp2p iot bridge``: the R3 bridge for IoT, readings to a SubTree, segments to a SubMesh.

It is :class:`hp2p.apps.bridge.Bridge` with two targets selecting app-id ``hp2p-iot``: a
SubTree that gets every reading as it is (live state), and a SubMesh that gets them packed
into time segments (:class:`hp2p.apps.iot.segments.SegmentPacker`) for history members.
"""

from __future__ import annotations

import asyncio
import os
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
    from hp2p.apps.app_bridge import bridge_printer, build_app_bridge
    from hp2p.apps.bridge import BridgeError
    from hp2p.apps.iot.reading import APP_ID
    from hp2p.apps.iot.segments import SegmentPacker, SegmentPolicy

    name = bridge_id or "iot-bridge"
    try:
        packer = None
        if submesh:
            hold = max(60.0, segment_seconds + grace)
            policy = SegmentPolicy(slice_seconds=segment_seconds, grace=grace, max_hold=hold)
            packer = SegmentPacker(policy)
        bridge = build_app_bridge(
            homs, core, name, APP_ID, subtree, submesh, packer,
            core_admin_key=core_admin_key or os.environ.get("HP2P_CORE_ADMIN_KEY"),
            on_event=bridge_printer(json_events, "iot bridge"),
        )  # fmt: skip
    except (BridgeError, ValueError) as exc:
        print(f"hp2p iot bridge: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(_run(bridge, packer, json_events)))


async def _run(bridge: Any, packer: Any, json_events: bool) -> int:
    from hp2p.apps.app_bridge import run_app_bridge

    def line() -> str:
        stats = bridge.stats
        text = f"iot bridge: CoreTree messages {stats.received}  published {stats.forwarded}"
        if packer is not None:
            s = packer.status()
            text += f"  segments {s['segments']}  bad {s['bad_readings']}"
        return text

    return await run_app_bridge(bridge, "iot bridge", None if json_events else line)
