"""Media under attack and failure on 127.0.0.1: malformed and oversized chunk messages on the
tree (and a bad object on the SubMesh) are refused and counted while the stream plays on; a
viewer whose parent peer is SIGKILLed keeps its playlist advancing with no segment missing."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from hp2p.apps.media.chunk import (
    APP_ID,
    SEGMENT_APP_ID,
    MediaChunk,
    encode_chunk,
    split_segment,
)
from hp2p.apps.media.live import LivePolicy
from hp2p.apps.media.recorder import MediaRecorder
from hp2p.apps.media.source import MediaSource
from hp2p.apps.media.viewer import MediaViewer
from hp2p.homs.launch import HomsProcess
from hp2p.peer.config import PeerConfig
from hp2p.peer.mesh_node import MeshNode, MeshSettings
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from media_helpers import DEADLINE, Events, needs_ffmpeg, small_clip
from peer_procs import CORE_ADMIN_KEY, PeerProc, create_core_overlay

pytestmark = [pytest.mark.slow]


async def test_malformed_and_oversized_media_messages_are_refused_and_counted(
    tmp_path: Path, homs: HomsProcess
) -> None:
    from hp2p.apps.media.bridge_command import build_bridge

    core = create_core_overlay(homs.url, "media")
    cam = PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="cam"))
    attacker = PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="mallory"))
    events = Events()
    viewer = MediaViewer(
        PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="v1")), on_event=events
    )
    bridge, packer = build_bridge(
        homs.url, core, "b1", "", "media-rec", core_admin_key=CORE_ADMIN_KEY, on_event=None
    )
    rec_events = Events()
    recorder = MediaRecorder(
        MeshNode(MeshSettings(homs=homs.url, join="media-rec", peer_id="r1")),
        tmp_path / "rec",
        on_event=rec_events,
    )
    try:
        for peer in (cam, attacker):
            await peer.start()
        await viewer.start()
        await bridge.start()
        await recorder.start()
        good = split_segment("cam1", 0, 1.0, time.time(), b"\x47" * 5000, 2048)
        # mallory's chunk claiming to be part of cam's segment 0, sent before cam's own
        forged = MediaChunk("cam1", 0, 1.0, good[0].captured, 5000, good[0].sha256, 1, 3, b"x")
        attacks = [
            b"\x93garbage",
            b"",
            b"\xff" * (1024 * 1024 + 4096),  # over the chunk limit: refused before decoding
            encode_chunk(MediaChunk("../etc", 0, 1.0, 1.0, 1, bytes(32), 0, 1, b"x")),
            encode_chunk(MediaChunk("cam1", 9, 1.0, 1.0, 1, bytes(32), 0, 1, b"x")),  # bad hash
            encode_chunk(forged),
        ]
        for data in attacks:
            attacker.publish(data, app_id=APP_ID)
        for chunk in good:
            cam.publish(encode_chunk(chunk), app_id=APP_ID)
        await events.wait(lambda: bool(events.of("listed")), "cam's segment listed")
        # a whole, well-formed segment under cam's stream name, from mallory: refused
        fake = split_segment("cam1", 1, 1.0, time.time(), b"\x47" * 100, 2048)
        attacker.publish(encode_chunk(fake[0]), app_id=APP_ID)
        attacker.publish(b"chat, not media", app_id="etri_data")
        await events.wait(lambda: viewer.other_apps == 1, "the non-media message")
        await events.wait(lambda: bool(events.of("refused")), "the foreign segment refused")
        stats = viewer.assembler.stats
        assert stats.refused == 4
        assert stats.corrupt == 1
        assert viewer.segment("cam1", 0) == b"\x47" * 5000
        assert viewer.segment("cam1", 1) is None
        assert viewer.window.streams["cam1"].stats.foreign == 1
        await rec_events.wait(lambda: bool(rec_events.of("recorded")), "the good segment")
        assert packer is not None
        assert packer.assembler.stats.refused == 4
        await rec_events.wait(lambda: packer.foreign == 1, "the foreign segment at the bridge")

        mesh = bridge._running[0].mesh  # the SubMesh's source: publishes a bad object
        assert mesh is not None
        mesh.publish(b"not a segment", app_id=SEGMENT_APP_ID)
        await rec_events.wait(lambda: recorder.refused == 1, "the bad object refused")
        assert recorder.index.status()["cam1"]["segments"] == 1
    finally:
        await recorder.close()
        await bridge.close()
        await viewer.close()
        for peer in (attacker, cam):
            await peer.close()


@needs_ffmpeg
async def test_viewer_plays_on_across_a_parent_crash_without_missing_a_segment(
    tmp_path: Path, homs: HomsProcess
) -> None:
    core = create_core_overlay(homs.url, "media")
    src_events = Events()
    # one child at the root: the relay; the viewer must hang below it
    node = PeerNode(
        NodeSettings(homs=homs.url, join=core, peer_id="cam"),
        PeerConfig(max_children=1, recovery_children=2),
    )
    source = MediaSource(node, "cam1", small_clip(16.0, 2.0), on_event=src_events)
    relay = PeerProc(tmp_path, homs.url, "relay", "--join", core)
    events = Events()
    viewer = MediaViewer(
        PeerNode(NodeSettings(homs=homs.url, join=core, peer_id="v1")),
        policy=LivePolicy(patience=4.0),
        on_event=events,
    )
    try:
        await source.start()
        await asyncio.to_thread(relay.wait_joined, DEADLINE)
        await viewer.start()
        assert viewer.node.status()["parent"] == "relay"
        running = asyncio.ensure_future(source.run())
        await events.wait(lambda: len(events.of("listed")) >= 2, "2 segments listed")
        relay.proc.kill()  # SIGKILL: no RELEASE, the viewer finds out by heartbeats
        await asyncio.wait_for(running, DEADLINE)
        await events.wait(lambda: bool(events.of("ended")), "the end of the stream")
        sent = sorted(e["sequence"] for e in src_events.of("segment"))
        listed = [e["sequence"] for e in events.of("listed")]
        assert listed == sent
        assert not events.of("missing")
        assert viewer.node.status()["parent"] == "cam"
        stamps = events.times_of("listed")
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        # a player at the live edge holds 3 target durations (6 s): no longer pause, no stall
        assert max(gaps) < 6.0, gaps
        assert viewer.assembler.stats.refused == 0
    finally:
        relay.terminate()
        await viewer.close()
        await source.close()
