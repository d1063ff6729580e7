"""Media through the R3 bridge on 127.0.0.1: a test-pattern source on a CoreTree, ``hp2p media
bridge`` logic feeding a SubTree (live viewer process) and a SubMesh (recorder processes). The
recording is complete and byte-identical, survives a recorder killed mid-stream, and a
recorder that joins after the end fetches the whole history."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from pathlib import Path

import httpx
import pytest

from hp2p.apps.media.bridge_command import build_bridge
from hp2p.apps.media.source import MediaSource
from hp2p.homs.launch import HomsProcess
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from media_helpers import DEADLINE, Events, ffprobe_streams, needs_ffmpeg, small_clip
from peer_procs import CORE_ADMIN_KEY, EventProc, create_core_overlay

pytestmark = [pytest.mark.slow, needs_ffmpeg]


class MediaProc(EventProc):
    """``hp2p media viewer|recorder --json-events`` on a free loopback port."""

    def __init__(self, workdir: Path, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "hp2p", "media", *args, "--json-events", "--id", name]
        super().__init__(workdir, name, [*cmd, "--api", "127.0.0.1:0"])
        self.url = ""

    async def ready(self) -> str:
        await asyncio.to_thread(self.wait_joined, DEADLINE)
        self.url = str((await asyncio.to_thread(self.next_event, "api", DEADLINE))["url"])
        return self.url


async def vod(url: str, stream: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        answer = await client.get(f"/vod/{stream}/index.m3u8")
    return answer.text if answer.status_code == 200 else ""


async def until_vod_complete(url: str, stream: str, count: int) -> str:
    text = ""

    def complete() -> bool:
        return "#EXT-X-ENDLIST" in text and text.count(".ts") == count

    async def poll() -> None:
        nonlocal text
        while not complete():  # bounded by wait_for below
            text = await vod(url, stream)
            await asyncio.sleep(0.2)

    await asyncio.wait_for(poll(), DEADLINE)
    assert "DISCONTINUITY" not in text
    return text


async def fetch_all(url: str, prefix: str, text: str) -> dict[int, str]:
    names = [line for line in text.splitlines() if line.endswith(".ts")]
    out: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for name in names:
            body = (await client.get(f"/{prefix}/cam1/{name}")).content
            out[int(name[:-3])] = hashlib.sha256(body).hexdigest()
    return out


async def test_bridge_feeds_live_viewers_and_recorders_that_survive_a_kill_and_backfill(
    tmp_path: Path, homs: HomsProcess
) -> None:
    core = create_core_overlay(homs.url, "media")
    src_events = Events()
    node = PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="cam"))
    source = MediaSource(node, "cam1", small_clip(10.0), chunk_size=16 * 1024, on_event=src_events)
    bridge_events = Events()
    bridge, packer = build_bridge(
        homs.url,
        core,
        "b1",
        "media-live",
        "media-rec",
        core_admin_key=CORE_ADMIN_KEY,
        on_event=bridge_events,
    )
    procs: list[MediaProc] = []
    try:
        await source.start()
        await bridge.start()
        live = MediaProc(tmp_path, "v1", "viewer", "--homs", homs.url, "--join", "media-live")
        rec1 = MediaProc(
            tmp_path,
            "r1",
            "recorder",
            "--homs",
            homs.url,
            "--join",
            "media-rec",
            "--dir",
            str(tmp_path / "r1"),
        )
        rec2 = MediaProc(
            tmp_path,
            "r2",
            "recorder",
            "--homs",
            homs.url,
            "--join",
            "media-rec",
            "--dir",
            str(tmp_path / "r2"),
        )
        procs += [live, rec1, rec2]
        live_url = await live.ready()
        await rec1.ready()
        rec2_url = await rec2.ready()
        running = asyncio.ensure_future(source.run())
        await asyncio.to_thread(rec1.next_event, "recorded", DEADLINE)
        rec1.proc.send_signal(signal.SIGKILL)  # one recorder dies mid-stream
        await asyncio.wait_for(running, DEADLINE)
        sent = {e["sequence"]: e["sha256"] for e in src_events.of("segment")}

        text = await until_vod_complete(rec2_url, "cam1", len(sent))
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in text
        assert await fetch_all(rec2_url, "vod", text) == sent

        await asyncio.to_thread(live.next_event, "ended", DEADLINE)
        listed = [e["sequence"] for e in live.seen if e["event"] == "listed"]
        assert listed == sorted(sent)  # the SubTree viewer: every segment, in order
        async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
            live_text = (await client.get("/live/cam1/index.m3u8")).text
        got = await fetch_all(live_url, "live", live_text)
        assert got
        assert all(sent[s] == h for s, h in got.items())

        late = MediaProc(
            tmp_path,
            "r3",
            "recorder",
            "--homs",
            homs.url,
            "--join",
            "media-rec",
            "--dir",
            str(tmp_path / "r3"),
        )
        procs.append(late)
        late_url = await late.ready()  # after the end: the whole history is pulled
        late_text = await until_vod_complete(late_url, "cam1", len(sent))
        assert await fetch_all(late_url, "vod", late_text) == sent
        last = tmp_path / "r3" / "cam1" / f"{max(sent)}.ts"
        assert "h264" in await asyncio.to_thread(ffprobe_streams, last)
        assert packer is not None
        assert packer.segments == len(sent) + 1
    finally:
        for proc in procs:
            proc.terminate()
        await bridge.close()
        await source.close()
