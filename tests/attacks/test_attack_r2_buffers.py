"""Attacks on a peer's R2 port: memory held by partial frames, slow frames, idle sockets.

Issue #11: 60 connections that each start a 16 MiB frame and never finish it took a peer from
56 MB to over 1 GB in three seconds, because the only bound was per frame. These tests attack a
real listening socket on 127.0.0.1 and assert on the process-wide budget
(``hp2p.transport.limits``): what it held at most, what it closed and why, and that an honest
connection keeps working through the attack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings, SettingsError, merge
from hp2p.transport.base import LinkEvents
from hp2p.transport.limits import R2Budget, R2Limits
from hp2p.transport.tcp import TcpLink, connect, listen
from hp2p.wire import r2
from hp2p.wire.r2.messages import BroadcastData, Heartbeat, Message
from node_helpers import FAST, client_for, homs_app

MiB = 1024 * 1024
#: The first 512 KiB of a frame that announces a 15 MiB payload (under the 16 MiB frame limit).
BIG_FRAME = r2.encode(BroadcastData("attacker", 1, bytes(15 * MiB)))
PARTIAL = BIG_FRAME[: 512 * 1024]


class Server:
    """A listening R2 socket with a budget; counts what it accepted, received and refused."""

    def __init__(self, budget: R2Budget) -> None:
        self.budget = budget
        self.accepted: list[TcpLink] = []
        self.messages: list[Message] = []
        self.refused: list[str] = []
        self.closed: set[int] = set()
        self._changed = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await listen("127.0.0.1", 0, self._on_accept, budget=self.budget)
        self.port = self.server.sockets[0].getsockname()[1]

    def _on_accept(self, link: TcpLink) -> LinkEvents:
        index = len(self.accepted)
        self.accepted.append(link)
        self._poke()

        def on_message(_link: object, message: Message) -> None:
            self.messages.append(message)
            self._poke()

        def on_closed(_link: object, _exc: BaseException | None) -> None:
            self.closed.add(index)
            self._poke()

        def on_refused(_link: object, reason: str) -> None:
            self.refused.append(reason)
            self._poke()

        return LinkEvents(on_message=on_message, on_closed=on_closed, on_refused=on_refused)

    def _poke(self) -> None:
        self._changed.set()

    async def until(self, condition: Callable[[], bool], within: float = 20.0) -> None:
        """Wait for ``condition``, re-checked on every event of the server; bounded."""
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """Read until the peer closes (EOF or reset); True when it did."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


async def test_partial_big_frames_stay_within_the_budget_and_honest_frames_pass() -> None:
    budget = R2Budget(R2Limits(buffered_bytes=4 * MiB, frame_deadline=3.0, max_unidentified=100))
    server = Server(budget)
    await server.start()
    writers: list[asyncio.StreamWriter] = []
    honest: TcpLink | None = None
    try:
        readers = []
        for _ in range(60):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(PARTIAL)
            readers.append(reader)
            writers.append(writer)
        # 60 x 512 KiB = 30 MiB offered; 4 MiB (8 of them) held at most: 52 are closed
        await server.until(lambda: budget.stats.budget_closes >= 52)
        assert budget.stats.peak_buffered <= 4 * MiB
        assert budget.buffered <= 4 * MiB
        assert all("R2 buffer budget full" in reason for reason in server.refused)

        # an honest link, while the survivors still hold the budget: frames split in two
        honest = await connect(
            f"tcp://127.0.0.1:{server.port}",
            LinkEvents(on_message=lambda _l, _m: None, on_closed=lambda _l, _e: None),
        )
        sent = [Heartbeat() for _ in range(50)]
        for message in sent:
            frame = r2.encode(message)
            assert honest.send_frame(frame[:3])
            assert honest.send_frame(frame[3:])
        await server.until(lambda: len(server.messages) == 50)

        # every attacker is gone in the end (budget or deadline); the honest link is not
        async with asyncio.timeout(30):
            await asyncio.gather(*(closed_by_peer(reader) for reader in readers))
        assert budget.stats.budget_closes + budget.stats.deadline_closes == 60
        assert budget.buffered == 0
        assert budget.stats.peak_buffered <= 4 * MiB
        honest_server_side = len(server.accepted) - 1
        assert honest_server_side not in server.closed
        assert honest.send_frame(r2.encode(Heartbeat()))
        await server.until(lambda: len(server.messages) == 51)
    finally:
        for writer in writers:
            writer.close()
        if honest is not None:
            honest.close()
        server.close()


async def test_idle_connections_past_the_unidentified_limit_are_refused() -> None:
    budget = R2Budget(R2Limits(buffered_bytes=MiB, frame_deadline=30.0, max_unidentified=4))
    server = Server(budget)
    await server.start()
    writers: list[asyncio.StreamWriter] = []
    try:
        idle = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            idle.append((reader, writer))
            writers.append(writer)
        await server.until(lambda: len(server.accepted) == 4)
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(writer)
            async with asyncio.timeout(10):
                assert await closed_by_peer(reader)
        assert budget.stats.unidentified_refused == 3
        assert len(server.accepted) == 4  # the refused ones never reached the shell
        # one idle connection identifies itself with a whole frame: a slot frees up
        idle[0][1].write(r2.encode(Heartbeat()))
        await server.until(lambda: len(server.messages) == 1)
        assert budget.unidentified == 3
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writers.append(writer)
        await server.until(lambda: len(server.accepted) == 5)
    finally:
        for writer in writers:
            writer.close()
        server.close()


async def test_a_frame_begun_after_identification_must_complete_in_time() -> None:
    budget = R2Budget(R2Limits(buffered_bytes=MiB, frame_deadline=0.5, max_unidentified=4))
    server = Server(budget)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        frame = r2.encode(Heartbeat())
        writer.write(frame + frame[:5])  # one whole frame (identified), then one begun
        async with asyncio.timeout(10):
            assert await closed_by_peer(reader)
        writer.close()
        assert len(server.messages) == 1
        assert budget.stats.deadline_closes == 1
        (reason,) = server.refused
        assert reason.startswith("frame not complete within r2_frame_deadline=0.5 s (5 bytes")
        assert budget.buffered == 0
    finally:
        server.close()


async def test_a_peer_closes_a_frame_past_its_deadline_and_says_why(tmp_path: Path) -> None:
    """On a running peer: the settings reach the transport, the close is an event and a count."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with homs_app(tmp_path) as app:
        node = PeerNode(
            NodeSettings(
                homs="http://homs",
                create="deadline",
                peer_id="root",
                join_timeout=15.0,
                leave_timeout=3.0,
                r2_frame_deadline=0.5,
            ),
            FAST,
            on_event=lambda kind, fields: events.append((kind, fields)),
            homs_client=client_for(app),
        )
        await node.start()
        writers: list[asyncio.StreamWriter] = []
        try:
            host, port = node.address.removeprefix("tcp://").split(":")
            slow_reader, slow = await asyncio.open_connection(host, int(port))
            writers.append(slow)
            slow.write(r2.encode(Heartbeat())[:5])  # a frame begun, never finished
            idle_reader, idle = await asyncio.open_connection(host, int(port))
            writers.append(idle)  # never sends anything
            async with asyncio.timeout(10):
                await closed_by_peer(slow_reader)
                await closed_by_peer(idle_reader)
            limits = node.status()["r2_limits"]
            assert limits["deadline_closes"] == 2
            assert limits["frame_deadline"] == 0.5
            assert limits["buffered_bytes"] == 0
            reasons = [fields["reason"] for kind, fields in events if kind == "r2_limit"]
            assert len(reasons) == 2
            assert all(
                reason.startswith("no complete first frame within r2_frame_deadline=0.5 s")
                for reason in reasons
            )
            assert node.stats.limit_closes == 2
            assert node.state == "attached"  # the peer itself is unharmed
        finally:
            for writer in writers:
                writer.close()
            await node.close()


def test_the_limits_are_settings_and_must_be_positive() -> None:
    settings = merge(
        environ={"HP2P_R2_BUFFERED_BYTES": "1048576"},
        flags={"join": "x", "r2_frame_deadline": "2.5", "r2_max_unidentified": "8"},
    )
    limits = settings.node.r2_limits()
    assert (limits.buffered_bytes, limits.frame_deadline, limits.max_unidentified) == (
        MiB,
        2.5,
        8,
    )
    for key in ("r2_buffered_bytes", "r2_frame_deadline", "r2_max_unidentified"):
        with pytest.raises(SettingsError, match=f"{key} must be greater than 0"):
            merge(environ={}, flags={"join": "x", key: "0"})
