"""Attacks on a peer's local HTTP/WebSocket API: no token, DNS rebinding, cross-site, 1 GB bodies.

Issue #11: the local API published into the overlay for whoever reached 127.0.0.1: every local
user, and every web page in a local browser (through DNS rebinding, or a cross-site WebSocket).
These tests serve the API of a real peer on a real socket and attack it from outside, as a
local program or a browser would.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from hp2p.homs.launch import HomsProcess
from hp2p.peer.local_api import LocalApi
from hp2p.peer.node import NodeError, PeerNode
from node_helpers import homs_app, start_node
from peer_procs import PeerProc

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[PeerNode]:
    async with homs_app(tmp_path) as app:
        peer = await start_node(app, create="api-attacks", peer_id="target")
        try:
            yield peer
        finally:
            await peer.close()


@pytest.fixture
async def api(node: PeerNode, tmp_path: Path) -> AsyncIterator[LocalApi]:
    async with LocalApi(node, "127.0.0.1:0", token_dir=str(tmp_path)) as served:
        yield served


def ws_url(api: LocalApi, query: str = "") -> str:
    return api.url.replace("http://", "ws://") + "/subscribe" + query


async def ws_status(url: str, **kwargs: object) -> int:
    """The HTTP status a WebSocket handshake gets: 101 when accepted."""
    try:
        async with connect(url, open_timeout=10, **kwargs):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_every_route_needs_the_token(api: LocalApi, node: PeerNode) -> None:
    wrong = {"Authorization": "Bearer " + "x" * len(api.token)}
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        for headers in ({}, wrong, {"Authorization": api.token}):  # no "Bearer": wrong too
            assert (await http.get("/status", headers=headers)).status_code == 401
            assert (await http.get("/tree", headers=headers)).status_code == 401
            refused = await http.post("/publish", content=b"forged", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "token" in refused.json()["detail"]
        assert (await http.get("/docs")).status_code == 401
        # a refused body the size of a real message is read and dropped: the client gets 401
        assert (await http.post("/publish", content=bytes(2 * MiB))).status_code == 401
        assert node.status()["core"]["published"] == 0  # nothing got through
        ok = await http.get("/status", headers=api.headers)
        assert ok.status_code == 200
        assert ok.json()["peer_id"] == "target"
        published = await http.post("/publish", content=b"mine", headers=api.headers)
        assert published.json() == {"source": "target", "sequence": 1}
    assert await ws_status(ws_url(api)) == 401
    assert await ws_status(ws_url(api), additional_headers=wrong) == 401
    assert await ws_status(ws_url(api, "?token=wrong")) == 401
    assert await ws_status(ws_url(api), additional_headers=api.headers) == 101
    # a browser cannot set headers: the token as a query parameter or as a subprotocol
    assert await ws_status(ws_url(api, f"?token={api.token}")) == 101
    offered = ["hp2p", f"hp2p-token.{api.token}"]
    async with connect(ws_url(api), subprotocols=offered, open_timeout=10) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "hp2p"


async def test_dns_rebinding_and_cross_site_requests_are_refused(api: LocalApi) -> None:
    port = api.port
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=10) as http:
        for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.nip.io:{port}"):
            refused = await http.get("/status", headers={"Host": host})
            assert refused.status_code == 421, host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            assert (await http.get("/status", headers={"Host": host})).status_code == 200
        foreign = await http.post(
            "/publish", content=b"csrf", headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        assert "Origin" in foreign.json()["detail"]
        same = await http.get("/status", headers={"Origin": f"http://127.0.0.1:{port}"})
        assert same.status_code == 200
    assert api.guard is not None
    assert api.guard.stats.bad_host == 3
    assert api.guard.stats.bad_origin == 1
    # the same for a WebSocket: a page elsewhere opening ws://127.0.0.1:PORT/subscribe
    url = ws_url(api, f"?token={api.token}")
    assert await ws_status(url, origin="http://evil.example") == 403  # type: ignore[arg-type]
    assert await ws_status(url, origin=f"http://127.0.0.1:{port}") == 101  # type: ignore[arg-type]
    # a second Host header (the client adds its own) is refused as malformed
    rebound = {"Host": f"evil.example:{port}"}
    assert await ws_status(url, additional_headers=rebound) == 400
    assert await raw_ws_handshake(api, f"evil.example:{port}") == b"421"
    assert await raw_ws_handshake(api, f"127.0.0.1:{port}") == b"101"


async def raw_ws_handshake(api: LocalApi, host: str) -> bytes:
    """The status code of a WebSocket handshake sent with this exact Host header."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(
            f"GET /subscribe HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {api.token}\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            status_line = await reader.readline()
        return status_line.split()[1]
    finally:
        writer.close()


async def test_a_1_gb_body_is_refused_early_and_never_read(api: LocalApi) -> None:
    assert api.guard is not None
    limit = api.max_body
    assert limit < 16 * MiB
    request = (
        f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n"
        f"Authorization: Bearer {api.token}\r\n"
    )
    # declared: refused from the Content-Length, before any of the body is sent or read
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(f"{request}Content-Length: {GiB}\r\n\r\n".encode())
        async with asyncio.timeout(10):
            declared = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()
    finally:
        writer.close()
    assert declared.startswith(b"HTTP/1.1 413"), declared
    assert b"connection: close" in declared.lower()  # the connection ends with the answer
    assert b"larger than" in body
    assert api.guard.stats.body_bytes_read == 0

    # streamed (chunked, no length): refused as soon as the limit is passed
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(f"{request}Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk = f"{MiB:x}\r\n".encode() + bytes(MiB) + b"\r\n"
    response = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    try:
        async with asyncio.timeout(60):
            while not response.done() and sent < GiB:
                writer.write(chunk)
                drained = asyncio.ensure_future(writer.drain())
                await asyncio.wait([drained, response], return_when=asyncio.FIRST_COMPLETED)
                if not drained.done():
                    drained.cancel()  # the answer came while the server stopped reading
                elif drained.exception() is not None:
                    break  # the server closed the connection
                sent += MiB
            head = await response
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head
    assert sent < GiB  # the client was still sending when the answer came
    assert limit < api.guard.stats.body_bytes_read <= limit + MiB


async def test_a_non_loopback_address_needs_api_public(node: PeerNode) -> None:
    for address in ("0.0.0.0:0", "[::]:0", "192.0.2.7:8700", "peer.example:8700"):
        with pytest.raises(NodeError, match="--api-public"):
            LocalApi(node, address)
    LocalApi(node, "0.0.0.0:0", public=True)  # allowed when asked for (not started here)
    LocalApi(node, "localhost:0")


def test_the_cli_refuses_a_public_api_address_without_api_public() -> None:
    args = [sys.executable, "-m", "hp2p", "peer", "--homs", "http://127.0.0.1:9", "--join", "x"]
    out = subprocess.run([*args, "--api", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not a loopback address" in out.stderr
    assert "--api-public" in out.stderr


async def test_the_token_file_is_private_and_goes_with_the_api(
    node: PeerNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beside_state = LocalApi(node, "127.0.0.1:0", token_dir=str(tmp_path))
    await beside_state.start()
    path = beside_state.token_file
    assert path is not None
    assert path.parent == tmp_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == beside_state.token
    await beside_state.stop()
    assert not path.exists()

    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    async with LocalApi(node, "127.0.0.1:0") as no_state:
        assert no_state.token_file is not None
        assert no_state.token_file.parent == runtime / "hp2p"
        assert stat.S_IMODE((runtime / "hp2p").stat().st_mode) == 0o700
        assert stat.S_IMODE(no_state.token_file.stat().st_mode) == 0o600
    # a shared directory someone else could enter is refused, not used
    os.chmod(runtime / "hp2p", 0o777)
    with pytest.raises(NodeError, match="not a private directory"):
        await LocalApi(node, "127.0.0.1:0").start()


def test_a_peer_process_prints_its_token_and_keeps_it_0600(
    tmp_path: Path, homs: HomsProcess
) -> None:
    peer = PeerProc(tmp_path, homs.url, "p", "--create", "tokens", "--api", "127.0.0.1:0")
    try:
        joined = peer.wait_joined()
        token, token_file = joined["api_token"], Path(joined["api_token_file"])
        assert len(token) >= 40
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().strip() == token
        api = joined["api"]
        assert httpx.get(f"{api}/status", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{api}/status", headers=auth, timeout=10).json()["peer_id"] == "p"
    finally:
        peer.leave()
        assert peer.stop() == 0
    assert not token_file.exists()  # removed when the peer left
