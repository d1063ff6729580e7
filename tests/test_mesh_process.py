"""SubMesh peers as real processes (``python -m hp2p.peer.mesh_daemon``) over real TCP on
127.0.0.1, with a real ``hp2p homs`` process.

A 1 MiB object reaches every peer with its SHA-256 verified; killing 20 % of the peers right
after the object is published (SIGKILL), the rest still complete; a late joiner gets the
history. The 50-peer versions of these runs are in ``test_mesh_sim.py`` (harness); here 5
processes keep the test inside the time box on a 2-core machine (``test_bridge_process.py``
runs 20 SubMesh processes).
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import MeshProc, PeerProc, Procs, create_core_overlay

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture(autouse=True)
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sources create their signing key files here, not in the user's state directory."""
    keys = tmp_path / "keys"
    monkeypatch.setenv("HP2P_KEY_DIR", str(keys))
    return keys


def _start_mesh(tmp_path: Path, homs: HomsProcess, peers: int) -> tuple[MeshProc, list[MeshProc]]:
    core = create_core_overlay(homs.url, "core-for-mesh")
    source = MeshProc(tmp_path, homs.url, "src", "--create", "blocks", "--parent", core)
    source.wait_joined()
    receivers = [
        MeshProc(tmp_path, homs.url, f"m{i:02d}", "--join", "blocks") for i in range(peers)
    ]
    for r in receivers:
        r.wait_joined(deadline=90)
    return source, receivers


def test_one_mib_to_5_processes_with_20_percent_killed_and_a_late_joiner(tmp_path, homs, key_dir):
    source, receivers = _start_mesh(tmp_path, homs, 5)
    everyone = [source, *receivers]
    late: PeerProc | None = None
    try:
        source.command(f"publish-random {MiB} 42")
        published = source.next_event({"published"}, 30)
        expected = hashlib.sha256(random.Random(42).randbytes(MiB)).hexdigest()
        assert published["sha256"] == expected
        # 20 %: SIGKILL as soon as the source reports the publish, i.e. while the pieces are
        # being pulled (on a fast loopback not guaranteed; test_mesh_sim.py guarantees it)
        victims = receivers[:1]
        for v in victims:
            v.proc.kill()
        survivors = receivers[1:]
        for r in survivors:
            got = r.next_event({"delivered"}, 60)
            assert got["object"] == published["object"]
            assert got["sha256"] == expected
        # the late joiner is a plain `hp2p peer --join`: it finds out the overlay is a SubMesh
        late = PeerProc(tmp_path, homs.url, "late", "--join", "blocks")
        assert late.wait_joined()["mesh"] is True
        got = late.next_event({"delivered"}, 60)
        assert got["sha256"] == expected
        # a receiver may not publish: a clear error, and the peer keeps running
        survivors[0].command("publish nope")
        error = survivors[0].next_event({"error"}, 30)
        assert "only the source peer 'src'" in error["reason"]
        survivors[0].command("status")
        status = survivors[0].next_event({"status"}, 30)
        assert status["mesh"]["counters"]["forged"] == 0
        # the source signed with the key file it created, and every peer verified with it
        assert source.joined is not None
        assert list(key_dir.iterdir()) == [key_dir / "src.ed25519.pem"]
        assert status["mesh"]["counters"]["manifests_verified"] == 1
        assert status["source_key"] == source.joined["signing_key"]
    finally:
        for v in receivers[:1]:
            v.proc.kill()
            v.proc.wait(timeout=30)
        alive = [p for p in everyone if p not in receivers[:1]]
        codes = Procs([*alive, *([late] if late else [])]).stop_all()
    assert all(code == 0 for code in codes.values()), codes


def _mesh_daemon(*args: str) -> subprocess.CompletedProcess[str]:
    """The SubMesh runtime run to its end, its output captured."""
    cmd = [sys.executable, "-m", "hp2p.peer.mesh_daemon", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_joining_a_mesh_that_does_not_exist_says_so(tmp_path, homs):
    proc = _mesh_daemon("--homs", homs.url, "--join", "nope")
    assert proc.returncode == 1
    assert "no overlay with id or title 'nope'" in proc.stderr


def test_help_has_examples():
    proc = _mesh_daemon("--help")
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout
    assert "--standby" in proc.stdout
