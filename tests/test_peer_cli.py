"""``hp2p peer`` as a user runs it: help, clear one-line errors, the joined line, clean leave."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hp2p.homs.launch import HomsProcess
from hp2p.trust.keys import SigningKey
from peer_procs import PeerProc, create_core_overlay, readline

pytestmark = pytest.mark.slow


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hp2p", "peer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there any more


def test_help_documents_options_examples_and_every_setting() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for option in ("--homs", "--create", "--join", "--listen", "--api", "--id", "--config"):
        assert option in text
    for option in ("--json-events", "--stdin", "--faults", "--fault-seed", "--set"):
        assert option in text
    assert "Examples" in text
    for key in ("max_children", "heartbeat_interval", "subscriber_queue", "expires"):
        assert key in text


def test_unreachable_homs_is_one_clear_line_and_status_1() -> None:
    port = _closed_port()
    out = _run("--homs", f"http://127.0.0.1:{port}", "--join", "x", "--set", "homs_attempts=2")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("hp2p peer: cannot connect to the HOMS")
    assert "Check --homs" in lines[0]
    assert out.stdout == ""


def test_unknown_overlay_is_one_clear_line_and_status_1(homs: HomsProcess) -> None:
    out = _run("--homs", homs.url, "--join", "does-not-exist")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"hp2p peer: no overlay with id or title 'does-not-exist' on {homs.url} "
        "(create it with --create TITLE, or check the spelling)"
    )


def test_usage_errors_exit_2() -> None:
    assert "give --create TITLE or --join" in _run("--homs", "http://x:1").stderr
    both = _run("--create", "a", "--join", "b")
    assert both.returncode == 2
    assert "not both" in both.stderr
    bad = _run("--join", "a", "--faults", "delay=abc")
    assert bad.returncode == 2
    assert "bad number in fault setting" in bad.stderr
    bad = _run("--join", "a", "--set", "max_children=lots")
    assert bad.returncode == 2
    assert "max_children: expected an integer" in bad.stderr


@pytest.mark.parametrize(
    ("peer_id", "words"),
    [
        ("\udcff", "a peer-id must be UTF-8 text"),  # the byte 0xff on the command line
        ("a\x07b", "a peer-id may not contain control characters"),
        ("", "a peer-id must be 1 to 256 characters, got 0"),
        ("x" * 257, "a peer-id must be 1 to 256 characters, got 257"),
    ],
)
def test_an_invalid_peer_id_is_one_settings_line_and_status_2(peer_id: str, words: str) -> None:
    done = _run("--homs", "http://127.0.0.1:1", "--join", "chat", "--id", peer_id)
    assert done.returncode == 2
    assert done.stderr.startswith("hp2p peer: peer_id (--id): ")
    assert words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_listen_and_api_name_the_address_a_port_in_use_or_a_foreign_address(
    homs: HomsProcess,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = _run("--homs", homs.url, "--create", "busy", "--listen", f"127.0.0.1:{port}")
        api = _run("--homs", homs.url, "--create", "busy-api", "--api", f"127.0.0.1:{port}")
    assert busy.returncode == 1
    assert busy.stderr.strip() == (
        f"hp2p peer: R2: cannot listen on 127.0.0.1:{port}: port {port} is already in use on "
        "127.0.0.1 (another process listens there); choose another port for --listen"
    )
    assert api.returncode == 1
    assert (
        f"hp2p peer: local API: cannot listen on 127.0.0.1:{port}: port {port} is already in use"
        in (api.stderr)
    )
    assert "choose another port for --api" in api.stderr
    for option, label in (("--listen", "R2"), ("--api", "local API")):
        foreign = _run(
            "--homs", homs.url, "--create", "far", option, "203.0.113.9:7000", "--api-public"
        )
        assert foreign.returncode == 1
        assert foreign.stderr.strip() == (
            f"hp2p peer: {label}: cannot listen on 203.0.113.9:7000: 203.0.113.9 is not an "
            f"address of this machine; give {option} an address of one of its interfaces "
            "(e.g. 127.0.0.1, or 0.0.0.0 for all)"
        )


def test_joined_line_api_and_clean_leave_on_sigterm(homs: HomsProcess, tmp_path: Path) -> None:
    """The human line names ids, ticket and addresses; the local API works; SIGTERM leaves."""
    args = [sys.executable, "-m", "hp2p", "peer", "--homs", homs.url, "--create", "cli"]
    args += ["--id", "alice", "--api", "127.0.0.1:0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = readline(proc, 60)
        assert line.startswith("hp2p peer: joined peer-id=alice overlay-id="), line
        fields = dict(item.split("=", 1) for item in line.split()[3:])
        assert fields["ticket"] == "1"
        assert fields["r2"].startswith("tcp://127.0.0.1:")
        assert fields["api"].startswith("http://127.0.0.1:")
        api = fields["api"]
        auth = {"Authorization": f"Bearer {fields['api-token']}"}
        assert httpx.get(f"{api}/status", timeout=10).status_code == 401
        status = httpx.get(f"{api}/status", headers=auth, timeout=10).json()
        assert status["peer_id"] == "alice"
        assert status["state"] == "attached"
        answer = httpx.post(f"{api}/publish", content=b"hello", headers=auth, timeout=10).json()
        assert answer == {"source": "alice", "sequence": 1}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == ""  # exactly one line on stdout
        overlay = httpx.get(
            f"{homs.url}/api/OverlayStatus", params={"overlay_id": fields["overlay-id"]}, timeout=10
        ).json()
        assert overlay["peers"] == []  # the HOMP leave happened
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_stdin_commands_and_json_events(homs: HomsProcess, tmp_path: Path) -> None:
    root = PeerProc(tmp_path, homs.url, "root", "--create", "events")
    assert root.wait_joined()["parent"] is None
    before = time.time()
    child = PeerProc(tmp_path, homs.url, "child", "--join", "events")
    try:
        # the root's path event for its new child carries the root's own time of it
        path = root.next_event({"path"}, 60)
        assert before <= path["t"] <= time.time()
        joined = child.wait_joined()
        assert joined["parent"] == "root"
        assert joined["depth"] == 1
        child.command("publish hi there")
        published = child.next_event({"published"}, 30)
        got = root.next_event({"deliver"}, 30)
        assert (got["source"], got["sequence"]) == ("child", published["sequence"])
        root.command("bogus")
        assert "unknown command 'bogus'" in root.next_event({"error"}, 30)["reason"]
        root.command("status")
        status = root.next_event({"status"}, 30)
        assert status["paths"]["primary"] == ["child"]
        json.dumps(status)  # plain JSON all the way down
    finally:
        for p in (child, root):
            p.leave()
        codes = (child.stop(), root.stop())
    assert codes == (0, 0)


def _ghost_town(homs: HomsProcess, title: str = "ghost-town") -> str:
    """An overlay whose only entry peer is unreachable: a peer joining it keeps trying."""
    from hp2p.wire import homp

    create = homp.CreateRequest(
        overlay=homp.CreateOverlay(
            title=title,
            type="core",
            sub_type="tree",
            owner_id="ghost",
            description="",
            heartbeat_interval=1,
            heartbeat_timeout=3,
            auth=homp.CreateAuth(type="open", admin_key="admin-key"),
        )
    )
    headers = {"content-type": "application/json"}
    made = httpx.post(f"{homs.url}/homs", content=homp.encode(create), headers=headers)
    overlay_id = made.json()["overlay"]["overlay-id"]
    ghost = homp.JoinRequest(
        overlay=homp.JoinOverlay(overlay_id=overlay_id, type="core", sub_type="tree"),
        peer=homp.JoinPeer(
            peer_id="ghost",
            address=f"tcp://127.0.0.1:{_closed_port()}",
            auth=homp.PeerAuth(password="secret-secret"),
            public_key=SigningKey.generate().public_text,  # the overlay needs credentials
        ),
    )
    assert httpx.post(f"{homs.url}/peer", content=homp.encode(ghost), headers=headers).is_success
    return str(overlay_id)


def test_sigterm_while_still_joining_leaves_the_homs_at_once(homs: HomsProcess) -> None:
    """The only entry peer is unreachable, so the peer keeps trying; SIGTERM ends it cleanly."""
    overlay_id = _ghost_town(homs)
    args = [sys.executable, "-m", "hp2p", "peer", "--homs", homs.url, "--join", overlay_id]
    args += ["--id", "stuck", "--set", "join_timeout=120"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def members() -> list[str]:
        status = httpx.get(
            f"{homs.url}/api/OverlayStatus", params={"overlay_id": overlay_id}, timeout=10
        ).json()
        return sorted(p["peer-id"] for p in status["peers"])

    try:
        end = time.monotonic() + 60
        while members() != ["ghost", "stuck"]:  # bounded poll: the HOMP join happened
            assert time.monotonic() < end, "the peer never joined the HOMS"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)  # polling interval of a bounded loop, not a synchronisation point
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert members() == ["ghost"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_submesh_options_are_refused_on_a_coretree() -> None:
    refused = _run("--create", "a", "--require-signatures", "--homs", "http://127.0.0.1:1")
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "hp2p peer: require_signatures is a SubMesh setting and --create makes a CoreTree "
        "(no --parent): drop it"
    )
    refused = _run("--create", "a", "--store", "/tmp/x", "--set", "piece_size=2")
    assert refused.returncode == 2
    assert "piece_size is a SubMesh setting" in refused.stderr
    assert "store is a SubMesh setting" in refused.stderr


def test_hp2p_peer_hands_the_pinned_source_key_to_the_submesh_runtime(
    homs: HomsProcess, tmp_path: Path
) -> None:
    core = create_core_overlay(homs.url, "core")
    sub = httpx.post(
        f"{homs.url}/homs",
        json={"overlay": {"overlay-id": "blocks", "title": "blocks", "type": "sub",
                          "sub-type": "mesh", "owner-id": "o", "description": "",
                          "heartbeat-interval": 1, "heartbeat-timeout": 3,
                          "auth": {"type": "open", "admin_key": "admin-key-1234",
                                   "parent-admin-key": "admin"},
                          "parent-overlay-id": core,
                          "source-peer-id": "src"}},
        timeout=10,
    )  # fmt: skip
    assert sub.status_code == 200, sub.text
    pinned = "ed25519:" + "ab" * 32
    peer = PeerProc(
        tmp_path, homs.url, "m1", "--join", "blocks", "--require-signatures",
        "--source-key", pinned,
    )  # fmt: skip
    try:
        joined = peer.inbox.get(60)
        assert joined is not None
        assert joined["event"] == "joined"
        assert joined["mesh"] is True
        assert joined["source_key"] == pinned
    finally:
        peer.leave()
        assert peer.stop() == 0, peer.err_path.read_text()


def test_the_local_api_answers_503_with_retry_after_while_the_peer_is_joining(
    homs: HomsProcess,
) -> None:
    """The API listens before the peer has joined, and says it is starting (docs/peer.md)."""
    from hp2p.peer.api_guard import runtime_dir, token_file_name

    overlay_id = _ghost_town(homs, "ghost-api")
    port = _closed_port()
    args = [sys.executable, "-m", "hp2p", "peer", "--homs", homs.url, "--join", overlay_id]
    args += ["--id", "early", "--api", f"127.0.0.1:{port}", "--set", "join_timeout=120"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    token_file = runtime_dir() / token_file_name("early", port)
    try:
        end = time.monotonic() + 60
        while not token_file.exists():  # bounded poll: the API has started (it writes the file)
            assert time.monotonic() < end, "the API never started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)  # polling interval of a bounded loop
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/status", timeout=10).status_code == 401  # the guard first
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        for method, route in (("GET", "/status"), ("POST", "/publish"), ("GET", "/tree")):
            answer = httpx.request(method, url + route, headers=headers, timeout=10)
            assert answer.status_code == 503, (route, answer.text)
            assert answer.headers["retry-after"] == "1"
            body = answer.json()
            assert body["error"] == "starting"
            assert body["state"] in ("starting", "joining")
            assert "not joined" in body["detail"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not token_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_print_writes_one_line_per_delivery_and_events_payload_carries_it(
    homs: HomsProcess, tmp_path: Path
) -> None:
    root = PeerProc(tmp_path, homs.url, "root", "--create", "printed")
    reader: subprocess.Popen[str] | None = None
    try:
        root.wait_joined()
        events = PeerProc(tmp_path, homs.url, "ev", "--join", root.overlay_id, "--events-payload")
        events.wait_joined()
        args = [sys.executable, "-m", "hp2p", "peer", "--homs", homs.url, "--id", "reader"]
        args += ["--join", root.overlay_id, "--print"]
        reader = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert readline(reader, 60).startswith("hp2p peer: joined peer-id=reader ")
        long = "y" * 300
        for text in ("hello wörld", "tab\there", long):
            root.command(f"publish {text}")
        lines = [readline(reader, 60).rstrip("\n") for _ in range(3)]
        assert lines[0] == "root #1 (12 bytes): hello wörld"
        assert lines[1] == f"root #2 (8 bytes): hex {b'tab'.hex()}09{b'here'.hex()}"
        assert lines[2] == f"root #3 (300 bytes): {'y' * 200}… (100 more characters)"
        got = [events.next_event("deliver", 60) for _ in range(3)]
        assert got[0]["text"] == "hello wörld"
        assert base64.b64decode(got[0]["data_b64"]) == "hello wörld".encode()
        assert got[0]["app_id"] == "etri_data"
        assert got[0]["payload_type"] == "text/plain"
        assert got[2]["text"] == long
        events.leave()
        assert events.stop() == 0
    finally:
        if reader is not None:
            reader.send_signal(signal.SIGTERM)
            assert reader.wait(timeout=30) == 0
        root.leave()
        root.stop()


def test_print_and_events_payload_need_the_right_output() -> None:
    both = _run("--join", "x", "--print", "--json-events")
    assert both.returncode == 2
    assert "give one" in both.stderr
    alone = _run("--join", "x", "--events-payload")
    assert alone.returncode == 2
    assert "give --json-events too" in alone.stderr
