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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from peer_procs import HomsProc, PeerProc

pytestmark = pytest.mark.slow

MiB = 1 << 20


class MeshProc(PeerProc):
    """A SubMesh peer process followed through its JSON event lines."""

    def __init__(self, workdir: Path, homs_url: str, name: str, *args: str) -> None:
        self.name = name
        self.err_path = workdir / f"{name}.err"
        cmd = [sys.executable, "-m", "hp2p.peer.mesh_daemon", "--homs", homs_url, "--id", name]
        cmd += ["--json-events", "--stdin", "--seed", "1", *args]
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=err, text=True, bufsize=1
            )
        self._start_reader()

    def _start_reader(self) -> None:
        import queue
        import threading

        self.events = queue.Queue()
        self.joined = None
        self.seen = []
        threading.Thread(target=self._read, daemon=True, name=f"read-{self.name}").start()


def create_core_overlay(homs_url: str, title: str) -> str:
    """A CoreTree for the sub-overlays to hang off (HOMP create over HTTP)."""
    body = {
        "overlay": {
            "title": title,
            "type": "core",
            "sub-type": "tree",
            "owner-id": "owner",
            "description": "",
            "heartbeat-interval": 1,
            "heartbeat-timeout": 3,
            "auth": {"type": "open", "admin_key": "admin-key-1234"},
        }
    }
    answer = httpx.post(f"{homs_url}/homs", json=body, timeout=10)
    answer.raise_for_status()
    overlay_id: str = answer.json()["overlay"]["overlay-id"]
    return overlay_id


@pytest.fixture(autouse=True)
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sources create their signing key files here, not in the user's state directory."""
    keys = tmp_path / "keys"
    monkeypatch.setenv("HP2P_KEY_DIR", str(keys))
    return keys


@pytest.fixture
def homs(tmp_path: Path) -> Iterator[HomsProc]:
    proc = HomsProc(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


def _start_mesh(tmp_path: Path, homs: HomsProc, peers: int) -> tuple[MeshProc, list[MeshProc]]:
    core = create_core_overlay(homs.url, "core-for-mesh")
    source = MeshProc(tmp_path, homs.url, "src", "--create", "blocks", "--parent", core)
    source.wait_joined()
    receivers = [
        MeshProc(tmp_path, homs.url, f"m{i:02d}", "--join", "blocks") for i in range(peers)
    ]
    for r in receivers:
        r.wait_joined(deadline=90)
    return source, receivers


def _stop_all(procs: list[MeshProc]) -> dict[str, int | None]:
    for p in procs:
        p.leave()
    return {p.name: p.stop() for p in procs}


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
        codes = _stop_all(alive + ([late] if late else []))
    assert all(code == 0 for code in codes.values()), codes


def test_joining_a_mesh_that_does_not_exist_says_so(tmp_path, homs):
    proc = subprocess.run(
        [sys.executable, "-m", "hp2p.peer.mesh_daemon", "--homs", homs.url, "--join", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "no overlay with id or title 'nope'" in proc.stderr


def test_help_has_examples():
    proc = subprocess.run(
        [sys.executable, "-m", "hp2p.peer.mesh_daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout
    assert "--standby" in proc.stdout
