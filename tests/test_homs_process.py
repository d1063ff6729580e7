"""`hp2p homs` as a real process on a real port: conformance replay, kill -9 and restart, CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from homp_bodies import create, join, report
from hp2p.cli import app as cli_app
from hp2p.homs.db import scratch_database
from hp2p.homs.launch import HomsProcess, free_port, running_homs

pytestmark = pytest.mark.slow

# The HOMP replay against a real process runs in tests/test_homs_ws.py, with the WebSocket
# monitor and signalling steps interleaved.


def _join(overlay_id: str, peer_id: str) -> dict[str, Any]:
    """A join whose password is ``pw-<peer-id>``."""
    pw = f"pw-{peer_id}"
    return join(overlay_id, peer_id, password=pw, address="tcp://127.0.0.1:1", expires=600)


async def test_kill9_mid_traffic_loses_nothing(tmp_path: Path) -> None:
    """Acknowledged overlays, peers, tickets, liveness and reports survive a kill -9."""
    acked: dict[str, int] = {}
    enough = asyncio.Event()
    homs = HomsProcess(tmp_path, "sqlite:///restart.db")
    try:
        homs.wait_ready()
        async with httpx.AsyncClient(base_url=homs.url, timeout=5.0) as client:
            assert (await client.post("/homs", json=create("ov"))).status_code == 200
            r = await client.post("/peer", json=_join("ov", "root"))
            assert r.status_code == 202
            acked["root"] = r.json()["peer"]["ticket-id"]
            sent = report("ov", "root", "pw-root", ["x"])
            assert (await client.post("/peer/report", json=sent)).status_code == 200

            async def traffic() -> None:
                for i in range(10_000):  # bounded; the kill ends it long before
                    try:
                        r = await client.post("/peer", json=_join("ov", f"p{i}"))
                    except httpx.TransportError:
                        return
                    if r.status_code == 202:
                        acked[f"p{i}"] = r.json()["peer"]["ticket-id"]
                    if len(acked) >= 30:
                        enough.set()

            task = asyncio.create_task(traffic())
            await asyncio.wait_for(enough.wait(), timeout=30)
            before = (await client.get("/api/OverlayStatus", params={"overlay_id": "ov"})).json()
            homs.kill9()
            await asyncio.wait_for(task, timeout=30)
    finally:
        homs.stop()

    with running_homs(tmp_path, "sqlite:///restart.db") as again:
        async with httpx.AsyncClient(base_url=again.url, timeout=5.0) as client:
            after = (await client.get("/api/OverlayStatus", params={"overlay_id": "ov"})).json()
            by_id = {p["peer-id"]: p for p in after["peers"]}
            for peer_id, ticket in acked.items():
                assert by_id[peer_id]["ticket-id"] == ticket, peer_id
            # Liveness and the last report are as they were, not reset by the restart.
            for p in before["peers"]:
                assert by_id[p["peer-id"]] == p
            assert by_id["root"]["num_primary"] == 1
            tickets = [p["ticket-id"] for p in after["peers"]]
            assert len(set(tickets)) == len(tickets)
            r = await client.post("/peer", json=_join("ov", "late"))
            assert r.status_code == 202
            assert r.json()["peer"]["ticket-id"] == max(tickets) + 1
            # num_primary survived, so the root is still the entry point (not a fallback).
            assert [e["peer-id"] for e in r.json()["overlay"]["status"]["peer_info_list"]] == [
                "root"
            ]


def test_homs_help_has_examples() -> None:
    result = CliRunner().invoke(cli_app, ["homs", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for option in ("--database", "--expiry-sweep", "--delete-empty-overlays", "--tls-cert"):
        assert option in result.output
    assert "Examples" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--database", "mysql://x/y"], "unsupported database 'mysql'"),
        (["--database", "sqlite://"], "in-memory SQLite"),
        (["--tls-cert", "nope.pem"], "give both --tls-cert and --tls-key"),
        (["--expiry-sweep", "0"], "--expiry-sweep must be > 0"),
        (["--log-level", "loud"], "--log-level must be"),
    ],
)
def test_homs_refuses_bad_options_clearly(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_app, ["homs", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "hp2p", "homs", "--port", str(free_port())),
            *("--database", f"postgresql://postgres@127.0.0.1:{port}/none"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 1
    assert "cannot open or migrate the database" in proc.stderr


def _homs_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hp2p", "homs", "--database", f"sqlite:///{tmp_path}/h.db", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_port_in_use_and_an_address_not_of_this_machine_are_told_apart(
    tmp_path: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = _homs_run(tmp_path, "--port", str(port))
        busy_ws = _homs_run(tmp_path, "--port", "0", "--ws-port", str(port))
    assert busy.returncode == 1
    assert f"hp2p homs: cannot listen on 127.0.0.1:{port}: port {port} is already in use" in (
        busy.stderr
    )
    assert "choose another port for --port" in busy.stderr
    assert "choose another port for --ws-port" in busy_ws.stderr
    foreign = _homs_run(tmp_path, "--host", "203.0.113.9", "--port", "7000")  # TEST-NET-3
    assert foreign.returncode == 1
    assert (
        "hp2p homs: cannot listen on 203.0.113.9:7000: 203.0.113.9 is not an address of this "
        "machine; give --host an address" in foreign.stderr
    )
    assert "in use" not in foreign.stderr


async def _signalling_spans_instances(
    first: HomsProcess, second: HomsProcess, a: httpx.AsyncClient
) -> None:
    """A monitor on one instance sees a join made on the other; relays cross instances."""
    from test_homs_ws import sock, wait_status

    ws_a, ws_b = (f"ws://127.0.0.1:{h.port}/ws" for h in (first, second))
    async with sock(ws_b) as monitor, sock(ws_a) as on_a, sock(ws_b) as on_b:
        token = second.operator_token  # secure monitoring needs the operator token
        await monitor.send({"server": "ui", "action": "hello", "token": token})
        await wait_status(second.url, monitors=1)
        joined = await a.post("/peer", json=_join("shared", "late"))
        assert joined.status_code == 202
        assert await monitor.next() == {
            "overlay_id": "shared",
            "type": "peer",
            "action": "add_peer",
            "node": {"id": "late", "ticket_id": 61},
        }
        # p1 holds its socket on B; p2 on A relays to it (secure profile: passwords).
        await on_b.send({"action": "hello", "peer-id": "p1", "password": "pw-p1"})
        await on_a.send({"action": "hello", "peer-id": "p2", "password": "pw-p2"})
        await wait_status(second.url, registered=1)
        await wait_status(first.url, registered=1)
        await on_a.send({"toid": "p1", "type": "candidate", "candidate": "c"})
        assert await on_b.next() == {
            "toid": "p1",
            "type": "candidate",
            "candidate": "c",
            "fromid": "p2",
        }
        # Larger than one NOTIFY payload (8000 bytes): chunked and reassembled.
        sdp = "v=0\r\n" + "a=x-filler:" + "é" * 20_000
        await on_a.send({"toid": "p1", "type": "offer", "sdp": {"type": "offer", "sdp": sdp}})
        got = await on_b.next()
        assert got["sdp"]["sdp"] == sdp
        assert got["fromid"] == "p2"


@pytest.mark.postgres
async def test_two_homs_processes_on_one_postgresql_issue_unique_tickets(tmp_path: Path) -> None:
    base = os.environ.get("HP2P_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set HP2P_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres")
    async with scratch_database(base, "hp2p_test") as url:
        # Both start (and migrate the empty database) at the same time.
        first, second = HomsProcess(tmp_path, url), HomsProcess(tmp_path, url)
        try:
            first.wait_ready()
            second.wait_ready()
            async with (
                httpx.AsyncClient(base_url=first.url, timeout=10.0) as a,
                httpx.AsyncClient(base_url=second.url, timeout=10.0) as b,
            ):
                assert (await a.post("/homs", json=create("shared"))).status_code == 200
                answers = await asyncio.gather(
                    *(
                        (a if i % 2 else b).post("/peer", json=_join("shared", f"p{i}"))
                        for i in range(60)
                    )
                )
                assert all(r.status_code == 202 for r in answers)
                tickets = sorted(r.json()["peer"]["ticket-id"] for r in answers)
                assert tickets == list(range(1, 61))
                for client in (a, b):
                    status = await client.get("/api/OverlayStatus", params={"overlay_id": "shared"})
                    assert status.json()["overlay"]["num_peers"] == 60
                await _signalling_spans_instances(first, second, a)
        finally:
            first.stop()
            second.stop()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_serves_https_only(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    verify = ssl.create_default_context(cafile=str(cert))
    homs = HomsProcess(tmp_path, "sqlite:///tls.db", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        homs.wait_ready()
        assert homs.stdout_path.read_text().startswith(
            f"hp2p homs: serving https://127.0.0.1:{homs.port}"
        )
        r = httpx.get(f"{homs.url}/homs", verify=verify, timeout=5.0)
        assert (r.status_code, r.json()) == (200, [])
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port is not served
            httpx.get(f"http://127.0.0.1:{homs.port}/homs", timeout=5.0)
    finally:
        homs.stop()


async def test_listening_sockets_give_connections_without_nagle_delay() -> None:
    """Accepted connections have TCP_NODELAY: headers and body are two writes, and with
    Nagle on, the body would wait ~40 ms for the client's delayed ACK on every response."""
    from hp2p.homs.cli import _listen

    listener = _listen("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=listener)
    async with server:
        port = listener.getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(accepted, 10.0) != 0
        writer.close()
