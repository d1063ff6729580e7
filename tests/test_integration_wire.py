"""Wire conformance: a raw TCP client that knows only the R2 framing HELLOs a real peer.

The client builds its HELLO by hand from the reference's field names (etri-2023-protocol.md
§3.2/§3.4: version 1, type 1, big-endian header length, JSON header) and parses the answers the
same way, so hp2p's own codec is not on both ends of the check. It must get 1202 on the HELLO
connection, then an ESTAB on a *new* connection to the address it gave in its HELLO (§7.3).
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import PeerProc

pytestmark = pytest.mark.slow


def frame(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">BBH", 1, 1, len(raw)) + raw


def read_frame(sock: socket.socket) -> dict[str, Any]:
    """One frame without payload (HELLO/ESTAB answers carry none)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    version, kind, length = struct.unpack(">BBH", exactly(4))
    assert (version, kind) == (1, 1)
    header: dict[str, Any] = json.loads(exactly(length))
    return header


@pytest.fixture
def peer(tmp_path: Path, homs: HomsProcess) -> Iterator[PeerProc]:
    # a reference peer (which this raw client plays) joins only a reference-compat overlay
    args = ("--create", "conformance", "--security", "reference-compat")
    proc = PeerProc(tmp_path, homs.url, "hp2p-root", *args)
    try:
        proc.wait_joined()
        yield proc
    finally:
        proc.leave()
        proc.stop()


def test_raw_hello_gets_1202_and_an_estab_on_a_new_connection(peer: PeerProc) -> None:
    assert peer.joined is not None
    host, port = peer.joined["r2"].removeprefix("tcp://").rsplit(":", 1)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(15)
        my_port = listener.getsockname()[1]
        hello = {
            "req-code": 1,
            "req-params": {
                "operation": {
                    "overlay-id": peer.joined["overlay_id"],
                    "conn_num": 3,
                    "ttl": 3,
                },
                "peer": {
                    "peer-id": "raw-client",
                    "address": f"tcp://127.0.0.1:{my_port}",
                    "ticket-id": 1000,
                },
            },
        }
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(frame(hello))
            answer = read_frame(sock)
            assert answer["rsp-code"] == 1202
        conn, _ = listener.accept()  # the volunteer dials the address given in HELLO
        with conn:
            conn.settimeout(15)
            estab = read_frame(conn)
            assert estab["req-code"] == 2
            params = estab["req-params"]
            assert params["operation"]["overlay-id"] == peer.joined["overlay_id"]
            assert params["peer"]["peer-id"] == "hp2p-root"
            assert params["peer"]["ticket-id"] == 1
            assert params["allow-primary-req"] is True
            conn.sendall(frame({"rsp-code": 2200}))
            conn.sendall(frame({"req-code": 4}))  # SET_PRIMARY: become its child
            for _ in range(20):  # HEARTBEATs may come first on the new path
                answer = read_frame(conn)
                if "rsp-code" in answer:
                    break
                assert answer["req-code"] == 8, answer
            assert answer["rsp-code"] == 4200
