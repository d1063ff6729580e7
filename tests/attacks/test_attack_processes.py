"""Issue #11 finding 1 on real processes: a raw TCP client with R2 reach but no membership.

A real ``hp2p homs`` (credentials by default) and two real ``hp2p peer`` processes; the
attacker speaks the R2 framing by hand (no hp2p code on its side), as a stranger on the
network would: an ESTAB with ticket 0 (a data path on main before the fix), then a forged
BROADCAST_DATA "from" the root. The peer answers AUTH refused (12401) and closes; the
members still deliver each other's messages exactly once, and nothing forged.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import Procs

pytestmark = pytest.mark.slow


def _frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Version 1, type 1, big-endian header length, JSON header, then the payload bytes."""
    raw = json.dumps(header).encode()
    return struct.pack(">BBH", 1, 1, len(raw)) + raw + payload


def _answers(sock: socket.socket) -> list[dict[str, Any]]:
    """Every frame header the peer sends until it closes the connection (bounded by 15 s)."""
    sock.settimeout(15)
    data = b""
    while len(data) < 1 << 20:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    headers = []
    while len(data) >= 4:
        length = struct.unpack(">H", data[2:4])[0]
        header = json.loads(data[4 : 4 + length])
        headers.append(header)
        params = header.get("rsp-params") or header.get("req-params") or {}
        extra = params.get("ext-header-len", 0) if isinstance(params, dict) else 0
        payload = params.get("payload", {}) if isinstance(params, dict) else {}
        data = data[4 + length + extra + int(payload.get("length", 0)) :]
    return headers


def test_a_stranger_with_tcp_reach_gets_no_path_and_forges_nothing(
    tmp_path: Path, homs: HomsProcess
) -> None:
    procs = Procs()
    try:
        root, member = procs.start_tree(tmp_path, homs.url, ["root", "member"], "guarded")
        assert root.joined is not None
        host, port = root.joined["r2"].removeprefix("tcp://").rsplit(":", 1)
        estab = {
            "req-code": 2,
            "req-params": {
                "operation": {"overlay-id": root.overlay_id},
                "peer": {"peer-id": "mallory", "address": "tcp://127.0.0.1:9", "ticket-id": 0},
                "allow-primary-req": True,
            },
        }
        forged = {
            "req-code": 6,
            "req-params": {
                "operation": {"ack": False},
                "peer": {"peer-id": "root", "sequence": 1},
                "payload": {"length": 6, "payload-type": "text/plain"},
                "ext-header-len": 0,
            },
        }
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(_frame(estab) + _frame(forged, b"forged"))
            answers = _answers(sock)
        codes = [a.get("rsp-code") for a in answers]
        assert 12401 in codes, answers
        assert not [c for c in codes if c in (2200, 4200)], answers

        member.command("publish real message")
        published = member.next_event({"published"}, deadline=30)
        delivered = root.next_event({"deliver"}, deadline=30)
        assert (delivered["source"], delivered["sequence"]) == ("member", published["sequence"])
        root.command("status")
        status = root.next_event({"status"}, deadline=30)
        assert status["core"]["delivered"] == 1
        admission = status["core_status"]["admission"]
        assert admission["refused"] >= 1
        assert admission["required"] is True
        assert admission["admitted"] >= 1  # the member's links
        assert not [e for e in root.seen if e["event"] == "deliver"]
    finally:
        procs.stop_all()
