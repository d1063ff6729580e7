"""``hp2p media bridge``: the R3 bridge for media, chunks to a SubTree, segments to a SubMesh.

It is :class:`hp2p.apps.bridge.Bridge` with two targets selecting app-id ``hp2p-media``: a
SubTree that gets every chunk as it is (live viewers), and a SubMesh that gets whole segments,
one object each (:class:`~hp2p.apps.media.packer.MediaPacker`), for recorders.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated, Any

import typer

from hp2p.apps.app_bridge import bridge_printer

EPILOG = """
Examples:

  # streams of CoreTree 'media' live on SubTree media-live, recorded on SubMesh media-rec
  hp2p media bridge --homs http://127.0.0.1:8081 --core media --id b1

  # only the recording, JSON events
  hp2p media bridge --core media --id b1 --subtree '' --json-events

A missing sub-overlay is created under the CoreTree (source peer-id ID-TITLE), which needs the
CoreTree's admin key (--core-admin-key or $HP2P_CORE_ADMIN_KEY). Give '' to leave a target
out. See docs/media.md.
"""


def build_bridge(
    homs: str,
    core: str,
    name: str,
    subtree: str,
    submesh: str,
    *,
    core_admin_key: str | None,
    on_event: Any,
) -> tuple[Any, Any]:
    """The bridge and its packer (None without a SubMesh target)."""
    from hp2p.apps.app_bridge import build_app_bridge
    from hp2p.apps.media.chunk import APP_ID
    from hp2p.apps.media.packer import MediaPacker

    packer = MediaPacker() if submesh else None
    bridge = build_app_bridge(
        homs, core, name, APP_ID, subtree, submesh, packer,
        core_admin_key=core_admin_key, on_event=on_event,
    )  # fmt: skip
    return bridge, packer


def command(
    core: Annotated[str, typer.Option("--core", help="CoreTree overlay-id or title to join.")],
    homs: Annotated[str, typer.Option("--homs", help="HOMS URL.")] = "http://127.0.0.1:8081",
    subtree: Annotated[
        str, typer.Option("--subtree", help="SubTree title for live viewers ('' for none).")
    ] = "media-live",
    submesh: Annotated[
        str, typer.Option("--submesh", help="SubMesh title for recorders ('' for none).")
    ] = "media-rec",
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
    """R3 bridge for media: chunks live on a SubTree, whole segments on a SubMesh."""
    from hp2p.apps.bridge import BridgeError

    try:
        bridge, packer = build_bridge(
            homs,
            core,
            bridge_id or "media-bridge",
            subtree,
            submesh,
            core_admin_key=core_admin_key or os.environ.get("HP2P_CORE_ADMIN_KEY"),
            on_event=bridge_printer(json_events, "media bridge"),
        )
    except (BridgeError, ValueError) as exc:
        print(f"hp2p media bridge: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(_run(bridge, packer)))


async def _run(bridge: Any, packer: Any) -> int:
    from hp2p.apps.app_bridge import run_app_bridge

    def line() -> str:
        s = bridge.stats
        text = f"media bridge: CoreTree messages {s.received}, published {s.forwarded}"
        return text + (f", segments {packer.segments}" if packer is not None else "")

    return await run_app_bridge(bridge, "media bridge", line)
