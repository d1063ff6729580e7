"""``hp2p media viewer``: a tree member (CoreTree, or a SubTree fed by the bridge) that plays
every stream it receives through its own HLS endpoint.

Chunks from the tree go through the :class:`~hp2p.apps.media.assembler.ChunkAssembler` (whole,
verified segments) into the :class:`~hp2p.apps.media.live.LiveWindow` (what the playlist
lists, what is given up). Lost chunks are the tree's to recover (GET_DATA from neighbours'
caches) while the window waits; a single timer wakes the window at its next deadline, so a
segment that cannot come is skipped on time even when nothing else arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import typer

from hp2p.apps.console import EventSink, printer, until_stopped
from hp2p.apps.media.assembler import ChunkAssembler
from hp2p.apps.media.chunk import APP_ID
from hp2p.apps.media.live import LivePolicy, LiveWindow
from hp2p.peer.config import PeerConfig
from hp2p.peer.node import Delivery, NodeError, PeerNode
from hp2p.peer.settings import NodeSettings

__all__ = ["EPILOG", "MediaViewer", "command"]

#: Longest sleep (s) of the window timer when no deadline is pending.
_TICK = 1.0


class MediaViewer:
    """``await start()`` (joins and subscribes), then serve; ``await close()``."""

    def __init__(
        self,
        node: PeerNode,
        *,
        policy: LivePolicy | None = None,
        assembler: ChunkAssembler | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.node = node
        self.window = LiveWindow(policy)
        self.assembler = assembler or ChunkAssembler()
        self.on_event = on_event
        self.other_apps = 0
        self.joined_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    async def start(self) -> None:
        subscription = self.node.subscribe(4096)  # before joining: nothing is missed
        await self.node.start()
        self.joined_at = time.monotonic()
        m = self.node.membership
        self._emit(
            "joined",
            {"peer_id": self.node.peer_id, "overlay_id": m.overlay_id if m else ""},
        )
        self._tasks.append(asyncio.create_task(self._pump(subscription), name="media-pump"))
        self._tasks.append(asyncio.create_task(self._timer(), name="media-window-timer"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.node.close()

    async def _pump(self, subscription: Any) -> None:
        async for delivery in subscription:  # ends with the node
            self.receive(delivery)

    def receive(self, delivery: Delivery) -> None:
        """One tree message: a chunk of ours, or something else on the tree (ignored)."""
        if delivery.app_id != APP_ID:
            self.other_apps += 1
            return
        segment = self.assembler.add(delivery.data, time.monotonic(), delivery.source)
        if segment is None:
            return
        if not segment.end:
            self._emit(
                "segment",
                {
                    "stream": segment.stream,
                    "sequence": segment.sequence,
                    "size": len(segment.data),
                    "sha256": segment.sha256.hex(),
                },
            )
        self._events(self.window.add(segment, time.monotonic(), time.time(), delivery.source))
        self._wake.set()

    async def _timer(self) -> None:
        while True:  # ends with the viewer (cancelled)
            due = self.window.next_deadline()
            wait = _TICK if due is None else min(_TICK, max(0.0, due - time.monotonic()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._events(self.window.advance(time.monotonic(), time.time()))
            self.assembler.expire(time.monotonic())

    def _events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, fields in events:
            self._emit(kind, fields)

    # --- what the HTTP API serves ------------------------------------------------------------
    def playlist(self, stream: str) -> str | None:
        live = self.window.streams.get(stream)
        if live is None or not live.entries:
            return None
        return live.playlist()

    def segment(self, stream: str, sequence: int) -> bytes | None:
        live = self.window.streams.get(stream)
        held = live.segment(sequence) if live is not None else None
        return held.data if held is not None else None

    def status(self) -> dict[str, Any]:
        streams = {}
        for name, live in self.window.streams.items():
            st = live.status()
            first = live.stats.first_published
            if first is not None and self.joined_at is not None:
                st["startup_s"] = round(max(0.0, first - self.joined_at), 3)
            streams[name] = st
        node = self.node.status()
        return {
            "peer_id": self.node.peer_id,
            "state": self.node.state,
            "streams": streams,
            "assembler": vars(self.assembler.stats),
            "other_apps": self.other_apps,
            "tree": {"parent": node.get("parent"), "depth": node.get("depth")},
        }

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields)


EPILOG = """
Examples:

  # watch the streams of CoreTree 'media' through this peer
  hp2p media viewer --homs http://127.0.0.1:8081 --join media --api 127.0.0.1:8700
  ffplay http://127.0.0.1:8700/live/cam1/index.m3u8

  # on the SubTree a bridge feeds (hp2p media bridge --core media --id b1)
  hp2p media viewer --join media-live --api 127.0.0.1:8701 --json-events

GET /live/STREAM/index.m3u8 is the live playlist, /live/STREAM/SEQ.ts a segment, /watch/STREAM
a page that plays it in a browser (hls.js, served by this peer), /status the window's figures
(continuity, latency, missing segments). See docs/media.md.
"""


def command(
    join: Annotated[str, typer.Option("--join", help="Tree overlay-id or title to join.")],
    homs: Annotated[str, typer.Option("--homs", help="HOMS URL.")] = "http://127.0.0.1:8081",
    api: Annotated[
        str, typer.Option("--api", help="Loopback HOST:PORT of the HLS endpoint (0: any port).")
    ] = "127.0.0.1:0",
    playlist_size: Annotated[
        int, typer.Option("--playlist-size", help="Segments in the live playlist.")
    ] = 6,
    patience: Annotated[
        float | None,
        typer.Option("--patience", help="Seconds a missing segment is waited for."),
    ] = None,
    cache_mb: Annotated[
        int,
        typer.Option("--cache-mb", help="MiB of tree messages kept for neighbours' recovery."),
    ] = 16,
    peer_id: Annotated[str | None, typer.Option("--id", help="Peer-id.")] = None,
    json_events: Annotated[
        bool, typer.Option("--json-events", help="One JSON object per event on stdout.")
    ] = False,
) -> None:
    """Watch live streams: an HLS endpoint served by this tree peer."""
    import sys

    from hp2p.apps.media.http import MediaApi, MediaApiError, build_app
    from hp2p.peer.errors import SettingsError

    try:
        policy = LivePolicy(playlist_size, max(12, 2 * playlist_size), patience)
        if not 1 <= cache_mb <= 4096:
            raise ValueError("--cache-mb must be 1..4096")
        config = PeerConfig(cache_bytes=cache_mb * 1024 * 1024)
        node = PeerNode(NodeSettings(homs=homs, join=join, peer_id=peer_id), config)
        viewer = MediaViewer(node, policy=policy, on_event=printer(json_events, "viewer"))
        api_server = MediaApi(build_app(viewer, None, viewer.status), api)
    except (MediaApiError, NodeError, SettingsError, ValueError) as exc:
        print(f"hp2p media viewer: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(_run(viewer, api_server)))


async def _run(viewer: MediaViewer, api: Any) -> int:
    import sys

    from hp2p.apps.media.http import MediaApiError

    try:
        await viewer.start()
        url = await api.start()
    except (NodeError, MediaApiError) as exc:
        print(f"hp2p media viewer: {exc}", file=sys.stderr, flush=True)
        await viewer.close()
        return 1
    viewer._emit("api", {"url": url})

    def line() -> str:
        parts = [
            f"{n}: {s['published']} listed, {s['missing']} missing"
            for n, s in viewer.status()["streams"].items()
        ]
        return "viewer " + ("; ".join(parts) or "waiting for a stream")

    try:
        await until_stopped(line)
        return 0
    finally:
        await api.stop()
        await viewer.close()
