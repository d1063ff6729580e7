"""Peers addressed by peer-id: the shell dials through a registry keyed by address scheme."""

from __future__ import annotations

import socket

import pytest

from hp2p.transport.base import Link, LinkEvents
from hp2p.transport.registry import (
    NoTransportError,
    TransportRegistry,
    default_registry,
    scheme_of,
)
from hp2p.transport.tcp import TcpLink, listen
from test_transport import Inbox


def test_scheme_of() -> None:
    assert scheme_of("tcp://127.0.0.1:7000") == "tcp"
    assert scheme_of("WebRTC://peer-a") == "webrtc"
    assert scheme_of("127.0.0.1:7000") == ""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_addresses_are_tried_in_order_skipping_unknown_schemes_and_dead_ones() -> None:
    accepted: list[TcpLink] = []

    def on_accept(link: TcpLink) -> LinkEvents:
        accepted.append(link)
        return Inbox().events()

    server = await listen("127.0.0.1", 0, on_accept)
    live = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    dead = f"tcp://127.0.0.1:{_closed_port()}"
    try:
        link, used = await default_registry().dial(
            "peer-a", ["ws://127.0.0.1:8082", dead, live], Inbox().events(), 1 << 20
        )
        assert used == live
        link.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_no_usable_address_is_a_clear_error() -> None:
    with pytest.raises(NoTransportError, match=r"no transport for peer 'go-1'.*tcp://"):
        await default_registry().dial("go-1", ["ws://10.0.0.1:8082"], Inbox().events(), 1024)


async def test_every_address_failing_raises_the_last_failure() -> None:
    dead = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConnectionRefusedError):
        await default_registry().dial("peer-b", [dead], Inbox().events(), 1024)


async def test_a_registered_scheme_is_used_for_its_addresses() -> None:
    dialled: list[str] = []

    async def dial(address: str, events: LinkEvents, max_queue_bytes: int) -> Link:
        dialled.append(address)
        raise ConnectionRefusedError("test transport: nobody there")

    registry = TransportRegistry()
    registry.register("mem", dial)
    assert registry.schemes == ("mem",)
    with pytest.raises(ConnectionRefusedError):
        await registry.dial("p", ["tcp://127.0.0.1:1", "mem://p"], Inbox().events(), 1024)
    assert dialled == ["mem://p"]
