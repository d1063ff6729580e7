"""The viewer's `/watch/STREAM` page in a real headless Chromium: hls.js (vendored) plays the
live stream from the peer, the video time advances, a screenshot shows a decoded frame, and
the page shows the peer's figures. Skipped, saying so, without chromium or ffmpeg."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdp_browser import Browser, find_chromium
from hp2p.apps.media.http import MediaApi, build_app
from hp2p.apps.media.source import MediaSource
from hp2p.apps.media.viewer import MediaViewer
from hp2p.homs.launch import HomsProcess
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from media_helpers import Events, needs_ffmpeg, small_clip
from peer_procs import create_core_overlay

pytestmark = [
    pytest.mark.slow,
    needs_ffmpeg,
    pytest.mark.skipif(
        find_chromium() is None,
        reason="chromium not installed: run `make media-deps` (as root) or "
        "apt-get install chromium",
    ),
]

#: Colours in the decoded frame: testsrc draws a colour pattern, a blank frame has one or two.
FRAME_COLOURS = """(() => {
  const v = document.getElementById('video');
  if (!v.videoWidth) return 0;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4 * 7) {
    seen.add((d[i] >> 4) + '.' + (d[i + 1] >> 4) + '.' + (d[i + 2] >> 4));
  }
  return seen.size;
})()"""


#: The browser plays sound and video without a gesture, silently.
MEDIA_FLAGS = ("--mute-audio", "--autoplay-policy=no-user-gesture-required")


async def evaluate(page: Browser, expression: str) -> Any:
    """``page.evaluate`` off the event loop, which must go on serving the stream meanwhile."""
    return await asyncio.to_thread(page.evaluate, expression)


async def until(page: Browser, expression: str, test: Any, what: str, limit: float = 40) -> Any:
    deadline = time.monotonic() + limit
    guarded = f"(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()"
    while True:  # bounded by the deadline
        value = await evaluate(page, guarded)
        if value is not None and test(value):
            return value
        assert time.monotonic() < deadline, f"{what}: last {value!r}"
        await asyncio.sleep(0.25)


async def test_watch_page_plays_the_live_stream_in_chromium(
    tmp_path: Path, homs: HomsProcess
) -> None:
    core = create_core_overlay(homs.url, "media")
    src_events = Events()
    node = PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="cam"))
    source = MediaSource(node, "cam1", small_clip(40.0), on_event=src_events)
    viewer = MediaViewer(PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="v1")))
    api = MediaApi(build_app(viewer, None, viewer.status), "127.0.0.1:0")
    running: asyncio.Future[Any] | None = None
    try:
        await source.start()
        await viewer.start()
        url = await api.start()
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            page_answer = await client.get("/watch/cam1")
            assert page_answer.status_code == 200
            assert "script-src 'self'" in page_answer.headers["content-security-policy"]
            assert (await client.get("/static/../http.py")).status_code == 404
            assert (await client.get("/watch/..")).status_code in (400, 404)
        binary = find_chromium()
        assert binary is not None
        page = await asyncio.to_thread(Browser, binary, 1280, 720, MEDIA_FLAGS)
        try:
            # the page opens before the stream starts: it waits for the playlist, then plays
            await asyncio.to_thread(page.navigate, f"{url}/watch/cam1")
            running = asyncio.ensure_future(source.run())
            video = "document.getElementById('video')"
            first = await until(page, f"{video}.currentTime", lambda t: t > 0.5, "playback")
            later = await until(
                page, f"{video}.currentTime", lambda t: t >= first + 2.0, "video time advancing"
            )
            assert later >= first + 2.0
            assert await until(page, FRAME_COLOURS, lambda n: n >= 8, "a decoded frame") >= 8
            shown = await until(
                page,
                "document.getElementById('continuity').textContent",
                lambda s: s.endswith("%"),
                "continuity shown",
            )
            assert shown == "100.0 %"
            tree = await evaluate(page, "document.getElementById('tree').textContent")
            assert "parent cam" in tree
            watch = await evaluate(page, "window.hp2pWatch")
            assert watch["fatal"] == [], watch  # non-fatal ones (a stall at the edge) may come
            await asyncio.to_thread(page.screenshot, tmp_path / "watch.png")
            shot = (tmp_path / "watch.png").read_bytes()
            assert shot.startswith(b"\x89PNG")
            assert len(shot) > 10_000
        finally:
            await asyncio.to_thread(page.close)
    finally:
        if running is not None:
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
        await api.stop()
        await viewer.close()
        await source.close()
