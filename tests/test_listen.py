"""Listening sockets of the HTTP APIs: accepted connections without Nagle's delay."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from hp2p.transport.listen import listening_socket

SRC = Path(__file__).resolve().parents[1] / "src" / "hp2p"


async def test_accepted_connections_have_tcp_nodelay() -> None:
    listener = listening_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=listener)
    async with server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(accepted, 10.0) != 0
        writer.close()


def test_no_api_listens_on_a_socket_that_keeps_nagle_on() -> None:
    """``socket.create_server`` gives proto 0, so asyncio leaves Nagle on: every keep-alive
    answer then waited ~40 ms (the peer's local API served 23 requests/s). Every HTTP API
    listens through ``listening_socket`` instead."""
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "socket.create_server(" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
