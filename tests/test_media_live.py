"""Live media end to end on 127.0.0.1: a real HOMS, an ffmpeg test-pattern source on a
CoreTree, viewers serving HLS; every segment byte-identical to the source's, ffprobe reads
what is served, a late viewer starts at the live edge, a clean end closes the playlist."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from hp2p.apps.media.http import MediaApi, build_app
from hp2p.apps.media.live import LivePolicy
from hp2p.apps.media.source import MediaSource
from hp2p.apps.media.viewer import MediaViewer
from hp2p.homs.launch import HomsProcess
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from media_helpers import Events, ffprobe_streams, needs_ffmpeg, small_clip
from peer_procs import create_core_overlay

pytestmark = [pytest.mark.slow, needs_ffmpeg]


def viewer(homs: str, core: str, name: str) -> tuple[MediaViewer, Events]:
    events = Events()
    node = PeerNode(NodeSettings(homs=homs, join=core, peer_id=name))
    return MediaViewer(node, policy=LivePolicy(patience=3.0), on_event=events), events


async def test_source_to_viewers_byte_identical_playable_and_late_viewer_at_the_edge(
    tmp_path: Path, homs: HomsProcess
) -> None:
    core = create_core_overlay(homs.url, "media")
    src_events = Events()
    node = PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="cam"))
    # 16 KiB chunks: each ~40 KB segment travels as several broadcasts
    source = MediaSource(node, "cam1", small_clip(8.0), chunk_size=16 * 1024, on_event=src_events)
    early, early_events = viewer(homs.url, core, "v1")
    late, late_events = viewer(homs.url, core, "v2")
    api = MediaApi(build_app(early, None, early.status), "127.0.0.1:0")
    try:
        await source.start()
        await early.start()
        url = await api.start()
        running = asyncio.ensure_future(source.run())
        await src_events.wait(lambda: len(src_events.of("segment")) >= 3, "3 source segments")
        await late.start()
        await asyncio.wait_for(running, 60)
        await early_events.wait(lambda: bool(early_events.of("ended")), "the end at v1")
        await late_events.wait(lambda: bool(late_events.of("ended")), "the end at v2")

        sent = {e["sequence"]: e["sha256"] for e in src_events.of("segment")}
        assert len(sent) >= 7
        assert any(e["chunks"] > 1 for e in src_events.of("segment"))
        listed = [e["sequence"] for e in early_events.of("listed")]
        assert listed == sorted(sent)  # every segment, in order, none missing
        assert not early_events.of("missing")
        late_listed = [e["sequence"] for e in late_events.of("listed")]
        assert late_listed
        assert late_listed[0] >= 2
        assert late_listed == list(range(late_listed[0], max(sent) + 1))

        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            text = (await client.get("/live/cam1/index.m3u8")).text
            assert text.startswith("#EXTM3U")
            assert "#EXT-X-ENDLIST" in text
            names = [line for line in text.splitlines() if line.endswith(".ts")]
            assert names
            for name in names:
                body = (await client.get(f"/live/cam1/{name}")).content
                assert hashlib.sha256(body).hexdigest() == sent[int(name[:-3])]
            (tmp_path / "seg.ts").write_bytes(body)
            assert (await client.get("/live/cam1/99999.ts")).status_code == 404
            assert (await client.get("/live/cam1/\u00b2.ts")).status_code == 404
            assert (await client.get("/live/cam1/1.mp4")).status_code == 404
            assert (await client.get("/live/..%2Fetc/index.m3u8")).status_code in (400, 404)
            status = (await client.get("/status")).json()
        assert status["streams"]["cam1"]["continuity"] == 1.0
        probe = await asyncio.to_thread(ffprobe_streams, tmp_path / "seg.ts")
        assert "h264" in probe
        assert "aac" in probe
    finally:
        await api.stop()
        for v in (early, late):
            await v.close()
        await source.close()
