"""SubMesh peers as real processes (``hp2p peer``, the one peer runtime) over real TCP on
127.0.0.1, with a real ``hp2p homs`` process.

A 1 MiB object reaches every peer with its SHA-256 verified; killing 20 % of the peers right
after the object is published (SIGKILL), the rest still complete; a late joiner gets the
history. The 50-peer versions of these runs are in ``test_mesh_sim.py`` (harness); here 5
processes keep the test inside the time box on a 2-core machine (``test_bridge_process.py``
runs 20 SubMesh processes). Settings reach a SubMesh peer through the same pipeline as a tree
peer's: they apply, or are refused with what to do.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import MeshProc, PeerProc, Procs, create_core_overlay, readline

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture(autouse=True)
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sources create their signing key files here, not in the user's state directory."""
    keys = tmp_path / "keys"
    monkeypatch.setenv("HP2P_KEY_DIR", str(keys))
    return keys


def _start_mesh(
    tmp_path: Path, homs: HomsProcess, peers: int, *source_args: str
) -> tuple[MeshProc, list[MeshProc]]:
    core = create_core_overlay(homs.url, "core-for-mesh")
    source = MeshProc(
        tmp_path, homs.url, "src", "--create", "blocks", "--parent", core, *source_args
    )
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
        codes = Procs(alive + ([late] if late else [])).stop_all()
    assert all(code == 0 for code in codes.values()), codes


def test_joining_a_mesh_that_does_not_exist_says_so(tmp_path, homs):
    proc = _peer("--homs", homs.url, "--join", "nope")
    assert proc.returncode == 1
    assert "no overlay with id or title 'nope'" in proc.stderr


def test_help_has_the_submesh_options_and_examples():
    proc = _peer("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Examples:" in text
    for option in ("--standby", "--store", "--parent", "--unsigned", "--signing-key", "--seed"):
        assert option in text
    for key in ("piece_size", "target_neighbours", "takeover_after", "store"):
        assert key in text


def _peer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hp2p", "peer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def test_hp2p_peer_join_runs_a_submesh_peer_in_one_process_with_its_settings(tmp_path, homs):
    """Issue #10: ``--set piece_size=65536`` on a SubMesh join applies (it failed with "unknown
    setting"), and the peer is this very process: no second runtime, no child."""
    source, _ = _start_mesh(tmp_path, homs, 0, "--set", "piece_size=65536")
    peer = MeshProc(tmp_path, homs.url, "m1", "--join", "blocks", "--set", "piece_size=65536")
    try:
        joined = peer.wait_joined(deadline=90)
        assert joined["mesh"] is True
        cmdline = Path(f"/proc/{peer.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"hp2p.peer.daemon" in cmdline  # the one runtime, same pid as started
        assert _children(peer.proc.pid) == []
        peer.command("status")
        assert peer.next_event({"status"}, 30)["config"]["piece_size"] == 65536
        # the source's piece size is what goes on the wire: 1 MiB is 16 pieces of 64 KiB,
        # plus piece 0, the manifest (32 KiB pieces, the default, would make 33)
        source.command(f"publish-random {MiB} 7")
        published = source.next_event({"published"}, 30)
        got = peer.next_event({"delivered"}, 60)
        assert got["sha256"] == published["sha256"]
        peer.command("status")
        assert peer.next_event({"status"}, 30)["mesh"]["pieces"] == MiB // 65536 + 1
    finally:
        codes = Procs([peer, source]).stop_all()
    assert codes == {"m1": 0, "src": 0}


def test_settings_that_do_not_apply_to_a_submesh_are_refused(tmp_path, homs):
    source, _ = _start_mesh(tmp_path, homs, 0)
    try:
        refused = _peer("--homs", homs.url, "--join", "blocks", "--set", "max_children=2")
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            "hp2p peer: max_children is a tree (CoreTree/SubTree) setting and overlay "
            "'blocks' is a SubMesh: drop it, or give it as tree.max_children (TOML table "
            "[tree]) to apply it to tree (CoreTree/SubTree) peers only"
        )
        unknown = _peer("--homs", homs.url, "--join", "blocks", "--set", "piece_sise=2")
        assert unknown.returncode == 2
        assert "unknown setting 'piece_sise' (did you mean piece_size or" in unknown.stderr
        # and the other way round: a SubMesh setting on the CoreTree
        tree = _peer("--homs", homs.url, "--join", "core-for-mesh", "--store", str(tmp_path))
        assert tree.returncode == 2
        assert "store is a SubMesh setting and overlay 'core-for-mesh' is a CoreTree" in (
            tree.stderr
        )
    finally:
        codes = Procs([source]).stop_all()
    assert codes == {"src": 0}


def test_the_local_api_serves_a_submesh_peer(tmp_path, homs):
    source, _ = _start_mesh(tmp_path, homs, 0, "--api", "127.0.0.1:0")
    peer = MeshProc(tmp_path, homs.url, "m1", "--join", "blocks", "--api", "127.0.0.1:0")
    try:
        joined = peer.wait_joined(deadline=90)
        api = joined["api"]
        auth = {"Authorization": f"Bearer {joined['api_token']}"}
        assert source.joined is not None
        source_api = source.joined["api"]
        source_auth = {"Authorization": f"Bearer {source.joined['api_token']}"}
        with httpx.Client(timeout=30) as http:
            assert http.get(f"{api}/status", headers=auth).json()["source_id"] == "src"
            assert http.get(f"{api}/status", headers=source_auth).status_code == 401
            refused = http.post(f"{api}/publish", content=b"not the source", headers=auth)
            assert refused.status_code == 403
            assert "only the source peer 'src'" in refused.json()["detail"]
            assert http.get(f"{api}/tree", headers=auth).status_code == 404
            answer = http.post(
                f"{source_api}/publish",
                content=b"one object",
                params={"app_id": "a"},
                headers=source_auth,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"source": "src", "object": 1}
        got = peer.next_event({"delivered"}, 60)
        assert got["sha256"] == hashlib.sha256(b"one object").hexdigest()
    finally:
        codes = Procs([peer, source]).stop_all()
    assert codes == {"m1": 0, "src": 0}


def test_the_joined_line_without_json_events(tmp_path, homs):
    source, _ = _start_mesh(tmp_path, homs, 0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hp2p", "peer", "--homs", homs.url, "--join", "blocks", "--id", "h"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = readline(proc, 60)
        assert line.startswith("hp2p peer: joined SubMesh peer-id=h "), line
        assert "source=src" in line
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        codes = Procs([source]).stop_all()
    assert codes == {"src": 0}
