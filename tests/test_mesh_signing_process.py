"""Signed SubMesh manifests with real processes on 127.0.0.1: a ``hp2p homs``, a source and
three SubMesh peers (``hp2p peer``), and one impostor.

The impostor is a real SubMesh member over real TCP, run in the test process so that the test
can make it lie: it claims to be the source and "publishes" objects 1-3 first, signed with its
own key, so every honest peer asks it for those manifests (it is their only holder). Honest
peers must refuse each forgery (counted, reported), then complete with the source's real
objects, verified against the key the HOMS recorded when the source created the SubMesh.
A restarted source keeps its key (key file); a source with another key is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
import sys

import httpx
import pytest

from hp2p.peer.mesh_node import MeshNode, MeshSettings
from hp2p.peer.mesh_objects import ManifestSigner
from peer_procs import MeshProc, create_core_overlay

pytestmark = pytest.mark.slow

SIZE = 300_000


async def _event(proc: MeshProc, kinds: set[str], deadline: float = 60) -> dict:
    return await asyncio.to_thread(proc.next_event, kinds, deadline)


async def _refused_by(proc: MeshProc, deadline: float = 60) -> dict:
    """The first error event that reports a refused manifest (other errors are skipped)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        error = await _event(proc, {"error"}, max(0.1, end - loop.time()))
        if "refused: the manifest" in error["reason"]:
            return error
    raise AssertionError(f"{proc.name}: no refused manifest within {deadline} s")


async def test_honest_peers_refuse_an_impostors_manifests_and_complete_verified(tmp_path, homs):
    core = create_core_overlay(homs.url, "core-for-signed-mesh")
    key_file = tmp_path / "src.ed25519.pem"
    source = MeshProc(
        tmp_path, homs.url, "src", "--create", "blocks", "--parent", core,
        "--signing-key", str(key_file),
    )  # fmt: skip
    procs = [source]
    impostor: MeshNode | None = None
    try:
        joined = await asyncio.to_thread(source.wait_joined)
        key = joined["signing_key"]
        assert key.startswith("ed25519:")
        assert joined["source_key"] == key
        assert key_file.stat().st_mode & 0o777 == 0o600
        # the HOMS records the key given with the create, and answers it to every query
        async with httpx.AsyncClient(base_url=homs.url) as client:
            query = await client.get("/homs", params={"overlay-id": joined["overlay_id"]})
        assert query.json()[0]["overlay"]["source-key"] == key

        impostor = MeshNode(MeshSettings(homs=homs.url, join="blocks", peer_id="impostor"))
        await impostor.start()
        assert impostor.core is not None
        impostor.core.is_source = True  # the lie: it publishes as if it were "src"
        impostor.core.signer = ManifestSigner.generate()
        for i in range(3):
            impostor.publish(b"forged object %d " % i * 10_000)

        honest = [
            MeshProc(tmp_path, homs.url, "h0", "--join", "blocks"),
            MeshProc(tmp_path, homs.url, "h1", "--join", "blocks"),
            # pins the key itself and takes nothing unsigned
            MeshProc(
                tmp_path, homs.url, "h2", "--join", "blocks", "--source-key", key,
                "--require-signatures",
            ),
        ]  # fmt: skip
        procs += honest
        for peer in honest:
            assert (await asyncio.to_thread(peer.wait_joined, 90))["source_key"] == key
        # each honest peer asks the impostor (the only holder) and refuses what it gets
        for peer in honest:
            error = await _refused_by(peer)
            assert "does not verify against the source key" in error["reason"]

        expected = {}
        for i in range(3):
            source.command(f"publish-random {SIZE} {i}")
            published = await _event(source, {"published"})
            expected[published["object"]] = published["sha256"]
            assert published["sha256"] == (
                hashlib.sha256(random.Random(i).randbytes(SIZE)).hexdigest()
            )
        for peer in honest:
            delivered = {}
            for _ in range(3):
                got = await _event(peer, {"delivered"}, 90)
                delivered[got["object"]] = got["sha256"]
            assert delivered == expected
            peer.command("status")
            status = await _event(peer, {"status"})
            counters = status["mesh"]["counters"]
            assert counters["bad_signatures"] >= 1
            assert counters["manifests_verified"] == 3
            assert counters["manifests_unverified"] == 0
            assert status["mesh"]["signatures"]["source-key"] == key
    finally:
        if impostor is not None:
            await impostor.close()
        for proc in procs:
            proc.leave()
        codes = {p.name: await asyncio.to_thread(p.stop) for p in procs}
    assert all(code == 0 for code in codes.values()), codes

    # A restarted source keeps its key file, so the HOMS lets it back as the source...
    again = MeshProc(tmp_path, homs.url, "src", "--join", "blocks", "--signing-key", str(key_file))
    try:
        assert (await asyncio.to_thread(again.wait_joined))["signing_key"] == key
    finally:
        again.leave()
        assert await asyncio.to_thread(again.stop) == 0
    # ...and a source with another key is refused with what to do about it.
    other = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "hp2p", "peer", "--homs", homs.url,
            "--join", "blocks", "--id", "src", "--signing-key", str(tmp_path / "other.pem"),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert other.returncode == 1
    assert "records another source key" in other.stderr


async def test_a_peer_that_joined_before_the_source_recorded_its_key_asks_the_homs(tmp_path, homs):
    """The R3 bridge's order: the SubMesh is created without a key, members may join before
    its source does; the source's own join records the key. The early peer meets a signed
    manifest without a key, asks the HOMS once, and verifies. A peer pinned to another key
    is told at start that the HOMS records a different one, and refuses the source's
    manifests."""
    core = create_core_overlay(homs.url, "core-for-late-key")
    body = {
        "overlay": {
            "overlay-id": "blocks",
            "title": "blocks",
            "type": "sub",
            "sub-type": "mesh",
            "owner-id": "bridge",
            "description": "",
            "heartbeat-interval": 1,
            "heartbeat-timeout": 3,
            "auth": {"type": "open", "admin_key": "admin-key-1234", "parent-admin-key": "admin"},
            "parent-overlay-id": core,
            "source-peer-id": "src",
        }
    }
    async with httpx.AsyncClient(base_url=homs.url) as client:
        assert (await client.post("/homs", json=body)).status_code == 200
    wrong = ManifestSigner.generate().public_text
    early = MeshProc(tmp_path, homs.url, "early", "--join", "blocks")
    procs = [early]
    try:
        assert (await asyncio.to_thread(early.wait_joined))["source_key"] is None
        source = MeshProc(
            tmp_path, homs.url, "src", "--join", "blocks",
            "--signing-key", str(tmp_path / "src.pem"),
        )  # fmt: skip
        procs.append(source)
        key = (await asyncio.to_thread(source.wait_joined))["signing_key"]
        pinned = MeshProc(tmp_path, homs.url, "pinned", "--join", "blocks", "--source-key", wrong)
        procs.append(pinned)
        assert (await asyncio.to_thread(pinned.wait_joined))["source_key"] == wrong
        told = await _event(pinned, {"error"})
        assert (
            f"pinned source key {wrong} is not the one the HOMS records ({key})" in (told["reason"])
        )
        source.command(f"publish-random {SIZE} 5")
        published = await _event(source, {"published"})
        assert (await _event(early, {"source_key"}))["source_key"] == key
        got = await _event(early, {"delivered"})
        assert got["sha256"] == published["sha256"]
        early.command("status")
        counters = (await _event(early, {"status"}))["mesh"]["counters"]
        assert counters["key_requests"] == 1
        assert counters["manifests_verified"] == 1
        assert counters["manifests_unverified"] == 0
        # the pinned peer refuses the source's manifest: it does not verify with the pin
        error = await _refused_by(pinned)
        assert "does not verify" in error["reason"]
        pinned.command("status")
        status = await _event(pinned, {"status"})
        assert status["mesh"]["objects"] == 0
        assert status["mesh"]["counters"]["bad_signatures"] >= 1
    finally:
        for proc in procs:
            proc.leave()
        codes = {p.name: await asyncio.to_thread(p.stop) for p in procs}
    assert all(code == 0 for code in codes.values()), codes
