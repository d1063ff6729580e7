"""``hp2p media source``: a CoreTree member that broadcasts one stream cut by ffmpeg.

Each segment ffmpeg completes (:class:`~hp2p.apps.media.ffmpeg.Segmenter`) is split into
chunks (:func:`~hp2p.apps.media.chunk.split_segment`) no larger than a link carries, and each
chunk is one broadcast with app-id ``hp2p-media``: the tree's duplicate window, cache and data
recovery then work per chunk. When the input ends (or the command is stopped) the source
broadcasts the end marker, so viewers close their playlist and recorders mark the recording
complete. Several members of one CoreTree may be sources, each with its own ``--stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from hp2p.apps.console import EventSink, printer, until_stopped
from hp2p.apps.media.chunk import (
    APP_ID,
    CHUNK_PAYLOAD_TYPE,
    DEFAULT_CHUNK,
    MAX_CHUNK,
    encode_chunk,
    end_marker,
    split_segment,
)
from hp2p.apps.media.ffmpeg import FfmpegError, Segmenter, SegmenterSettings, ffmpeg_path
from hp2p.peer.node import NodeError, PeerNode
from hp2p.peer.settings import NodeSettings

__all__ = ["EPILOG", "MediaSource", "SourceStats", "command"]

#: Bytes of a chunk message besides its payload (room kept under the link's limit).
_CHUNK_ROOM = 1024


@dataclass
class SourceStats:
    segments: int = 0
    chunks: int = 0
    bytes: int = 0
    refused: int = 0
    sizes: list[int] = field(default_factory=list)


class MediaSource:
    """A stream source on a CoreTree: ``await start()``, ``await run()``, ``await close()``."""

    def __init__(
        self,
        node: PeerNode,
        stream: str,
        segmenter: SegmenterSettings,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        on_event: EventSink | None = None,
    ) -> None:
        from hp2p.apps.media.chunk import check_stream_name

        self.node = node
        self.stream = check_stream_name(stream)
        self.settings = segmenter
        if not 1024 <= chunk_size <= MAX_CHUNK:
            raise ValueError(f"--chunk must be 1024..{MAX_CHUNK} bytes")
        self.chunk_size = chunk_size
        self.on_event = on_event
        self.stats = SourceStats()
        self.next_sequence = 0
        self._ended = False
        self._tmp = tempfile.TemporaryDirectory(prefix="hp2p-media-")
        self._segmenter = Segmenter(segmenter, Path(self._tmp.name))

    async def start(self) -> None:
        await self.node.start()
        self.chunk_size = min(self.chunk_size, self.node.max_message - _CHUNK_ROOM)
        m = self.node.membership
        self._emit(
            "joined",
            {
                "peer_id": self.node.peer_id,
                "overlay_id": m.overlay_id if m else "",
                "stream": self.stream,
                "chunk": self.chunk_size,
            },
        )

    async def run(self) -> None:
        """Cut and broadcast until the input ends; then broadcast the end marker."""
        await self._segmenter.start()
        try:
            async for produced in self._segmenter.segments():
                self.publish_segment(produced.data, produced.duration, produced.captured)
        finally:
            await self._segmenter.stop()
            self.publish_end()

    def publish_segment(self, data: bytes, duration: float, captured: float) -> int:
        """Broadcast one segment as chunks; its sequence number."""
        sequence = self.next_sequence
        self.next_sequence += 1
        chunks = split_segment(self.stream, sequence, duration, captured, data, self.chunk_size)
        for chunk in chunks:
            try:
                self.node.publish(
                    encode_chunk(chunk), app_id=APP_ID, payload_type=CHUNK_PAYLOAD_TYPE
                )
            except NodeError as exc:
                self.stats.refused += 1
                self._emit("error", {"sequence": sequence, "reason": str(exc)})
        self.stats.segments += 1
        self.stats.chunks += len(chunks)
        self.stats.bytes += len(data)
        self._emit(
            "segment",
            {
                "stream": self.stream,
                "sequence": sequence,
                "size": len(data),
                "chunks": len(chunks),
                "duration": round(duration, 3),
                "captured": captured,
                "sha256": chunks[0].sha256.hex(),
            },
        )
        return sequence

    def publish_end(self) -> None:
        """Broadcast the end marker (once the node runs); viewers close their playlist."""
        if (
            self._ended
            or self.node.core is None
            or self.node.state in ("starting", "left", "failed")
        ):
            return
        self._ended = True
        marker = end_marker(self.stream, self.next_sequence, time.time())
        try:
            self.node.publish(encode_chunk(marker), app_id=APP_ID, payload_type=CHUNK_PAYLOAD_TYPE)
        except NodeError:
            return
        self._emit("ended", {"stream": self.stream, "sequence": self.next_sequence})

    async def close(self) -> None:
        await self._segmenter.stop()
        await self.node.close()
        self._tmp.cleanup()

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "stream": self.stream,
            "segments": s.segments,
            "chunks": s.chunks,
            "bytes": s.bytes,
            "refused": s.refused,
            "node": self.node.status(),
        }

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields)


EPILOG = """
Examples:

  # a test pattern (640x360, 1 Mbit/s, 2 s segments) as stream 'cam1' on a new CoreTree
  hp2p media source --homs http://127.0.0.1:8081 --create media --input testsrc --stream cam1

  # a file, looped, on an existing CoreTree, with JSON events
  hp2p media source --overlay media --input talk.mp4 --loop --stream talk --json-events

Viewers: hp2p media viewer --join media --api 127.0.0.1:8700, then play
http://127.0.0.1:8700/live/cam1/index.m3u8 (ffplay, VLC). Needs ffmpeg (apt-get install ffmpeg).
"""


def command(
    input: Annotated[
        str, typer.Option("--input", help="testsrc (a test pattern), a media file, or a URL.")
    ] = "testsrc",
    homs: Annotated[str, typer.Option("--homs", help="HOMS URL.")] = "http://127.0.0.1:8081",
    overlay: Annotated[
        str | None, typer.Option("--overlay", help="CoreTree overlay-id or title to join.")
    ] = None,
    create: Annotated[
        str | None, typer.Option("--create", help="Create a CoreTree with this title.")
    ] = None,
    stream: Annotated[str, typer.Option("--stream", help="Stream name (URL path).")] = "live",
    segment: Annotated[float, typer.Option("--segment", help="Segment seconds.")] = 2.0,
    size: Annotated[str, typer.Option("--size", help="Video size WxH.")] = "640x360",
    bitrate: Annotated[str, typer.Option("--bitrate", help="Video bitrate.")] = "1000k",
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds.")
    ] = None,
    loop: Annotated[bool, typer.Option("--loop", help="Loop a file input.")] = False,
    chunk: Annotated[int, typer.Option("--chunk", help="Chunk payload bytes.")] = DEFAULT_CHUNK,
    peer_id: Annotated[str | None, typer.Option("--id", help="Peer-id.")] = None,
    admin_key: Annotated[
        str | None, typer.Option("--admin-key", help="Admin key of a created CoreTree.")
    ] = None,
    json_events: Annotated[
        bool, typer.Option("--json-events", help="One JSON object per event on stdout.")
    ] = False,
) -> None:
    """Broadcast a live stream (ffmpeg segments) on a CoreTree."""
    import sys

    from hp2p.peer.errors import SettingsError

    if (overlay is None) == (create is None):
        print("hp2p media source: give --overlay ID (join) or --create TITLE", file=sys.stderr)
        raise typer.Exit(2)
    try:
        settings = SegmenterSettings(input, segment, size, 25, bitrate, duration, loop)
        settings.input_args()
        ffmpeg_path()  # missing: say how to install it before joining anything
        node = PeerNode(
            NodeSettings(
                homs=homs, join=overlay, create=create, peer_id=peer_id, admin_key=admin_key
            )
        )
        source = MediaSource(
            node, stream, settings, chunk_size=chunk, on_event=printer(json_events, "source")
        )
    except (FfmpegError, NodeError, SettingsError, ValueError) as exc:
        print(f"hp2p media source: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(_run(source)))


async def _run(source: MediaSource) -> int:
    import sys

    try:
        await source.start()
    except NodeError as exc:
        print(f"hp2p media source: {exc}", file=sys.stderr, flush=True)
        await source.close()
        return 1
    task = asyncio.ensure_future(source.run())
    s = source.stats
    try:
        await until_stopped(lambda: f"source {source.stream}: {s.segments} segments", task)
        failure = task.exception() if task.done() and not task.cancelled() else None
        if failure is not None:
            raise failure
        return 0
    except FfmpegError as exc:
        print(f"hp2p media source: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        source.publish_end()
        await source.close()  # a clean leave flushes the links: the end marker goes out
