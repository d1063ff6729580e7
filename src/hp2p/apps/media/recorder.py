"""``hp2p media recorder``: a SubMesh member that stores every segment and serves the recording.

The bridge publishes each segment as one SubMesh object (:mod:`hp2p.apps.media.packer`); the
mesh replicates every object to every member, pulled in pieces from whichever neighbours hold
them, so a member that joins late fetches the whole history and one that dies costs nothing
the others do not still hold. Each object is decoded and its hash checked
(:func:`~hp2p.apps.media.chunk.decode_segment`) before it is written to
``DIR/STREAM/SEQ.ts`` (written aside, then renamed: a crash never leaves half a segment
served) and listed in ``DIR/STREAM/index.jsonl``; a restarted recorder reads its index back.
The mesh's own pieces live under ``DIR/.mesh`` (disk, not memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from hp2p.apps.console import EventSink, printer, until_stopped
from hp2p.apps.media.chunk import (
    SEGMENT_APP_ID,
    ChunkError,
    MediaSegment,
    check_stream_name,
    decode_segment,
)
from hp2p.apps.media.vod import RecordedSegment, RecordingIndex
from hp2p.peer.mesh_node import MeshDelivery, MeshNode, MeshNodeError, MeshSettings

__all__ = ["EPILOG", "MediaRecorder", "command"]

_INDEX = "index.jsonl"


class MediaRecorder:
    """``await start()`` (loads the directory, joins), serve, ``await close()``."""

    def __init__(self, node: MeshNode, directory: Path, *, on_event: EventSink | None = None):
        self.node = node
        self.directory = directory
        self.index = RecordingIndex()
        self.on_event = on_event
        self.refused = 0
        self.other_apps = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._load)
        subscription = self.node.subscribe(4096)
        await self.node.start()
        self._emit("joined", {"peer_id": self.node.peer_id, "overlay_id": self.node.overlay_id})
        self._task = asyncio.create_task(self._pump(subscription), name="media-recorder")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.node.close()

    async def _pump(self, subscription: Any) -> None:
        async for delivery in subscription:  # ends with the node
            await self.receive(delivery)

    async def receive(self, delivery: MeshDelivery) -> None:
        if delivery.app_id != SEGMENT_APP_ID:
            self.other_apps += 1
            return
        try:
            segment = decode_segment(delivery.data)
        except ChunkError as exc:
            self.refused += 1
            self._emit("refused", {"object": delivery.object_number, "reason": str(exc)})
            return
        if segment.end:
            self.index.end(segment.stream, segment.sequence)
            await asyncio.to_thread(self._append, segment.stream, {"end": segment.sequence})
            self._emit("ended", {"stream": segment.stream, "sequence": segment.sequence})
            return
        if self.index.get(segment.stream, segment.sequence) is not None:
            return
        record = RecordedSegment(
            segment.sequence,
            segment.duration,
            segment.captured,
            len(segment.data),
            segment.sha256.hex(),
        )
        await asyncio.to_thread(self._write, segment)
        if not self.index.add(segment.stream, record):  # on the loop: the API reads it
            self.refused += 1
            return
        await asyncio.to_thread(self._append, segment.stream, {"segment": _row(record)})
        self._emit(
            "recorded",
            {"stream": segment.stream, "sequence": segment.sequence, "size": record.size},
        )

    def _write(self, segment: MediaSegment) -> None:
        folder = self.directory / segment.stream
        folder.mkdir(exist_ok=True)
        aside = folder / f".{segment.sequence}.ts.part"
        aside.write_bytes(segment.data)
        os.replace(aside, folder / f"{segment.sequence}.ts")

    def _append(self, stream: str, row: dict[str, Any]) -> None:
        folder = self.directory / stream
        folder.mkdir(exist_ok=True)
        with (folder / _INDEX).open("a") as out:
            out.write(json.dumps(row) + "\n")

    def _load(self) -> None:
        """Read back what an earlier run recorded (rows whose file is missing are skipped)."""
        for folder in sorted(p for p in self.directory.iterdir() if p.is_dir()):
            try:
                stream = check_stream_name(folder.name)
            except ChunkError:
                continue
            index = folder / _INDEX
            if not index.is_file():
                continue
            for line in index.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    row = json.loads(line)
                    if "end" in row:
                        self.index.end(stream, int(row["end"]))
                        continue
                    s = row["segment"]
                    record = RecordedSegment(
                        int(s["sequence"]),
                        float(s["duration"]),
                        float(s["captured"]),
                        int(s["size"]),
                        str(s["sha256"]),
                    )
                    path = folder / f"{record.sequence}.ts"
                    if path.is_file() and path.stat().st_size == record.size:
                        self.index.add(stream, record)

    # --- what the HTTP API serves ------------------------------------------------------------
    def playlist(self, stream: str) -> str | None:
        return self.index.playlist(stream)

    def segment(self, stream: str, sequence: int) -> bytes | None:
        if self.index.get(stream, sequence) is None:
            return None
        try:
            return (self.directory / stream / f"{sequence}.ts").read_bytes()
        except OSError:
            return None

    def status(self) -> dict[str, Any]:
        return {
            "peer_id": self.node.peer_id,
            "state": self.node.state,
            "streams": self.index.status(),
            "refused": self.refused,
            "other_apps": self.other_apps,
        }

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields)


def _row(record: RecordedSegment) -> dict[str, Any]:
    return {
        "sequence": record.sequence,
        "duration": record.duration,
        "captured": record.captured,
        "size": record.size,
        "sha256": record.sha256,
    }


EPILOG = """
Examples:

  # record every stream of the SubMesh a bridge feeds (hp2p media bridge --id b1)
  hp2p media recorder --homs http://127.0.0.1:8081 --join media-rec --dir rec \\
      --api 127.0.0.1:8800
  ffplay http://127.0.0.1:8800/vod/cam1/index.m3u8

The playlist is EVENT while the stream goes on and VOD (with ENDLIST) once it ended; a member
that joins late pulls the whole history from the others. See docs/media.md.
"""


def command(
    join: Annotated[str, typer.Option("--join", help="SubMesh overlay-id or title to join.")],
    directory: Annotated[Path, typer.Option("--dir", help="Directory of the recording.")],
    homs: Annotated[str, typer.Option("--homs", help="HOMS URL.")] = "http://127.0.0.1:8081",
    api: Annotated[
        str, typer.Option("--api", help="Loopback HOST:PORT of the VOD endpoint (0: any port).")
    ] = "127.0.0.1:0",
    peer_id: Annotated[str | None, typer.Option("--id", help="Peer-id.")] = None,
    json_events: Annotated[
        bool, typer.Option("--json-events", help="One JSON object per event on stdout.")
    ] = False,
) -> None:
    """Record streams from a SubMesh and serve them as VOD playlists."""
    import sys

    from hp2p.apps.media.http import MediaApi, MediaApiError, build_app

    try:
        settings = MeshSettings(
            homs=homs, join=join, peer_id=peer_id, store=str(directory / ".mesh")
        )
        recorder = MediaRecorder(
            MeshNode(settings), directory, on_event=printer(json_events, "recorder")
        )
        api_server = MediaApi(build_app(None, recorder, recorder.status), api)
    except (MediaApiError, MeshNodeError, ValueError) as exc:
        print(f"hp2p media recorder: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(_run(recorder, api_server)))


async def _run(recorder: MediaRecorder, api: Any) -> int:
    import sys

    from hp2p.apps.media.http import MediaApiError

    try:
        await recorder.start()
        url = await api.start()
    except (MeshNodeError, MediaApiError, OSError) as exc:
        print(f"hp2p media recorder: {exc}", file=sys.stderr, flush=True)
        await recorder.close()
        return 1
    recorder._emit("api", {"url": url})

    def line() -> str:
        parts = [f"{n}: {s['segments']} segments" for n, s in recorder.index.status().items()]
        return "recorder " + ("; ".join(parts) or "nothing recorded yet")

    try:
        await until_stopped(line)
        return 0
    finally:
        await api.stop()
        await recorder.close()
