"""An application's R3 bridge: one app-id, live on a SubTree, packed objects on a SubMesh.

``hp2p iot bridge`` and ``hp2p media bridge`` are the same thing with another app-id and
another packer (segments of readings, whole media segments): a
:class:`~hp2p.apps.bridge.Bridge` with a SubTree target that gets every selected message as
it is and a SubMesh target whose :class:`~hp2p.apps.bridge.Packer` makes the objects.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from hp2p.apps.bridge import Bridge, BridgeError, BridgeTarget, Packer, running_line
from hp2p.apps.console import EventSink, printer, until_stopped

__all__ = ["bridge_printer", "build_app_bridge", "run_app_bridge"]


def build_app_bridge(
    homs: str,
    core: str,
    name: str,
    app_id: str,
    subtree: str,
    submesh: str,
    packer: Packer | None,
    *,
    core_admin_key: str | None,
    on_event: EventSink | None,
) -> Bridge:
    """The bridge ``name`` selecting ``app_id``; '' leaves a target out (then no packer)."""
    apps = frozenset({app_id})
    targets = []
    if subtree:
        targets.append(BridgeTarget("tree", subtree, f"{name}-{subtree}", apps))
    if submesh:
        targets.append(BridgeTarget("mesh", submesh, f"{name}-{submesh}", apps, packer=packer))
    return Bridge(
        homs, core, targets, bridge_id=name, on_event=on_event, core_admin_key=core_admin_key
    )


def bridge_printer(json_events: bool, command: str) -> EventSink:
    """JSON events, or the bridge's one running line and its warnings for a person."""
    return printer(json_events, command, human={"joined": running_line})


async def run_app_bridge(bridge: Bridge, command: str, status: Callable[[], str] | None) -> int:
    """Start ``bridge``, run until SIGINT/SIGTERM with a status line every 10 s, close it."""
    try:
        await bridge.start()
    except BridgeError as exc:
        print(f"hp2p {command}: {exc}", file=sys.stderr, flush=True)
        await bridge.close()
        return 1
    try:
        await until_stopped(status)
        return 0
    finally:
        await bridge.close()
