"""Live streaming of Q.4100 §9.3 on this machine, in one command.

    python examples/media/run.py                 # or: make media-demo; 20 viewers until Ctrl-C
    python examples/media/run.py --viewers 5 --seconds 30

It starts, each as its own process on 127.0.0.1: a HOMS (SQLite in a temporary folder), a
peer creating the CoreTree ``media``, the media bridge (SubTree ``media-live``, SubMesh
``media-rec``), a recorder on the SubMesh, N viewers on the SubTree, each serving HLS on its
own port, and last a test-pattern source (ffmpeg) on the CoreTree. It prints the page to
open (``/watch/cam1`` on the first viewer), shows every viewer's figures as they change, and
at the end (the source's ``--seconds``, or Ctrl-C) a summary. Everything it started is
stopped on the way out.

Needs ffmpeg (``apt-get install ffmpeg`` or ``make media-deps``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hp2p.apps.processes import ProcessGroup
from hp2p.homs.launch import start_homs

console = Console()
DEADLINE = 60.0
KEY = "media-example"


async def statuses(client: httpx.AsyncClient, urls: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, url in urls.items():
        with contextlib.suppress(httpx.HTTPError, ValueError):
            out[name] = (await client.get(f"{url}/status", timeout=2.0)).json()
    return out


def viewer_table(found: dict[str, Any]) -> Table:
    table = Table(title="viewers on the SubTree (GET /status of each)")
    for column in ("viewer", "parent", "depth", "listed", "missing", "continuity", "latency p50"):
        table.add_column(column)
    for name, status in found.items():
        s = status.get("streams", {}).get("cam1", {})
        tree = status.get("tree", {})
        cont = s.get("continuity")
        lat = s.get("latency_p50_s")
        table.add_row(
            name,
            str(tree.get("parent")),
            str(tree.get("depth")),
            str(s.get("published", 0)),
            str(s.get("missing", 0)),
            "–" if cont is None else f"{100 * cont:.1f} %",
            "–" if lat is None else f"{lat:.2f} s",
        )
    return table


async def start_all(procs: ProcessGroup, homs: str, args: argparse.Namespace) -> dict[str, str]:
    """The source, the bridge, the recorder and the viewers; the viewers' API URLs."""
    # the CoreTree's first peer creates it; the source joins last, once everyone listens
    core = ["peer", "--homs", homs, "--create", "media", "--id", "core"]
    await procs.start("core", *core, "--set", f"admin_key={KEY}", "--json-events")
    await procs.wait_event("core", "joined")
    bridge = ["media", "bridge", "--homs", homs, "--core", "media", "--id", "b1"]
    await procs.start("bridge", *bridge, "--core-admin-key", KEY, "--json-events")
    await procs.wait_event("bridge", "joined")
    recorder = ["media", "recorder", "--homs", homs, "--join", "media-rec", "--id", "rec1"]
    await procs.start("recorder", *recorder, "--dir", str(procs.workdir / "rec"), "--json-events")
    urls = {"recorder": str((await procs.wait_event("recorder", "api"))["url"])}
    for i in range(1, args.viewers + 1):
        name = f"viewer-{i}"
        viewer = ["media", "viewer", "--homs", homs, "--join", "media-live", "--id", name]
        await procs.start(name, *viewer, "--json-events")
    for i in range(1, args.viewers + 1):
        urls[f"viewer-{i}"] = str((await procs.wait_event(f"viewer-{i}", "api"))["url"])
    source = ["media", "source", "--homs", homs, "--overlay", "media", "--id", "cam"]
    source += ["--input", "testsrc", "--stream", "cam1", "--size", args.size]
    source += ["--bitrate", args.bitrate]
    if args.seconds:
        source += ["--duration", str(args.seconds)]
    await procs.start("source", *source, "--json-events")
    await procs.wait_event("source", "joined")
    return urls


async def main(args: argparse.Namespace) -> int:
    if shutil.which("ffmpeg") is None:
        console.print("ffmpeg is not installed: apt-get install ffmpeg (or make media-deps)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hp2p-media-example-"))
    with start_homs(workdir, log_level="error") as homs:
        procs = ProcessGroup(workdir, DEADLINE)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            urls = await start_all(procs, homs.url, args)
            first = urls["viewer-1"]
            console.print(
                f"[bold]open[/bold] {first}/watch/cam1   (or: ffplay {first}/live/cam1/index.m3u8)"
            )
            console.print(f"recording: {urls['recorder']}/vod/cam1/index.m3u8")
            viewers = {k: v for k, v in urls.items() if k.startswith("viewer")}
            found = await watch(procs, viewers, stop, args)
            await summary(urls["recorder"], found)
        finally:
            await procs.stop()
    if not os.environ.get("HP2P_KEEP"):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        console.print(f"kept {workdir}")
    return 0


async def watch(
    procs: ProcessGroup, viewers: dict[str, str], stop: asyncio.Event, args: argparse.Namespace
) -> dict[str, Any]:
    """The viewers' table every 2 s until Ctrl-C, or the stream's end has reached them."""
    found: dict[str, Any] = {}
    async with httpx.AsyncClient() as client:
        with Live(viewer_table(found), console=console, refresh_per_second=2) as live:
            while not stop.is_set():  # ends on Ctrl-C or once every viewer saw the end
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
                found = await statuses(client, viewers)
                live.update(viewer_table(found))
                ended = [s.get("streams", {}).get("cam1", {}).get("ended") for s in found.values()]
                if args.seconds and found and all(ended):
                    break
    return found


async def summary(recorder: str, found: dict[str, Any]) -> None:
    conts = [
        s["streams"]["cam1"]["continuity"]
        for s in found.values()
        if s.get("streams", {}).get("cam1", {}).get("continuity") is not None
    ]
    mean = sum(conts) / len(conts) if conts else 0.0
    console.print()
    console.print(f"viewers: {len(found)}, continuity {100 * mean:.1f} %")
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:  # the recorder pulls the last segments
            answer = await client.get(f"{recorder}/vod/cam1/index.m3u8", timeout=2.0)
            text = answer.text if answer.status_code == 200 else ""
            if "#EXT-X-ENDLIST" in text:
                break
            await asyncio.sleep(0.5)
    segments = text.count(".ts")
    state = "complete" if "#EXT-X-ENDLIST" in text else "still recording"
    console.print(f"recording: {segments} segments, {state}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--viewers", type=int, default=20, help="viewer processes (default 20)")
    p.add_argument("--seconds", type=float, default=0, help="stream length (default: until Ctrl-C)")
    p.add_argument("--size", default="640x360", help="video size (default 640x360)")
    p.add_argument("--bitrate", default="1000k", help="video bitrate (default 1000k)")
    args = p.parse_args(argv)
    if args.viewers < 1:
        p.error("--viewers must be at least 1")
    return args


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
