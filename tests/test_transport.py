"""TCP links and the fault-injecting transport, on real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from hp2p.transport.base import LinkEvents, LinkStats
from hp2p.transport.faults import FaultPlan, FaultyLink, LinkFaults
from hp2p.transport.tcp import TcpLink, connect, listen, parse_tcp_address
from hp2p.wire import r2
from hp2p.wire.r2.messages import BroadcastData, Heartbeat, Message


class Inbox:
    """Collects what a link delivers and lets a test wait for a count, with a deadline."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.closed = asyncio.Event()
        self.errors: list[Exception] = []
        self._changed = asyncio.Event()

    def events(self) -> LinkEvents:
        def on_message(link: object, message: Message) -> None:
            self.messages.append(message)
            self._changed.set()

        def on_closed(link: object, exc: BaseException | None) -> None:
            self.closed.set()

        def on_error(link: object, err: Exception) -> None:
            self.errors.append(err)

        return LinkEvents(on_message=on_message, on_closed=on_closed, on_protocol_error=on_error)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()


async def _pair(inbox: Inbox) -> tuple[asyncio.Server, TcpLink, list[TcpLink]]:
    accepted: list[TcpLink] = []

    def on_accept(link: TcpLink) -> LinkEvents:
        accepted.append(link)
        return inbox.events()

    server = await listen("127.0.0.1", 0, on_accept)
    port = server.sockets[0].getsockname()[1]
    client = await connect(f"tcp://127.0.0.1:{port}", Inbox().events())
    return server, client, accepted


def test_parse_tcp_address() -> None:
    assert parse_tcp_address("tcp://127.0.0.1:7000") == ("127.0.0.1", 7000)
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        parse_tcp_address("ws://127.0.0.1:8082")
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        parse_tcp_address("tcp://127.0.0.1")


async def test_frames_cross_a_real_connection_whole_and_in_order() -> None:
    inbox = Inbox()
    server, client, _ = await _pair(inbox)
    try:
        sent = [BroadcastData("src", seq, bytes([seq % 256]) * 700) for seq in range(1, 201)]
        blob = b"".join(r2.encode(m) for m in sent)
        # One write of many frames, then frames split at awkward places.
        assert client.send_frame(blob[:1001])
        assert client.send_frame(blob[1001:])
        await inbox.wait_for(200)
        assert inbox.messages == sent
        assert client.stats.frames_sent == 2
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_malformed_stream_closes_the_link_with_a_reported_error() -> None:
    inbox = Inbox()
    server, client, accepted = await _pair(inbox)
    try:
        assert client.send_frame(b"\x01\x01\x00\x05{oops")
        async with asyncio.timeout(5):
            await inbox.closed.wait()
        assert len(inbox.errors) == 1
        assert accepted[0].stats.protocol_errors == 1
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_slow_receiver_gets_bounded_queue_and_counted_overflow() -> None:
    inbox = Inbox()
    accepted: list[TcpLink] = []
    got_one = asyncio.Event()

    def on_accept(link: TcpLink) -> LinkEvents:
        accepted.append(link)
        got_one.set()
        return inbox.events()

    server = await listen("127.0.0.1", 0, on_accept)
    port = server.sockets[0].getsockname()[1]
    client = await connect(f"tcp://127.0.0.1:{port}", Inbox().events(), max_queue_bytes=256 * 1024)
    try:
        async with asyncio.timeout(5):
            await got_one.wait()
        transport = accepted[0]._transport
        assert transport is not None
        transport.pause_reading()  # a peer that stops reading
        frame = r2.encode(BroadcastData("src", 1, b"x" * 60_000))
        results = [client.send_frame(frame) for _ in range(2_000)]  # ~120 MB offered
        assert results.count(False) > 0
        assert client.stats.overflow_drops == results.count(False)
        assert client._transport is not None
        assert client._transport.get_write_buffer_size() <= 256 * 1024
    finally:
        client.close()
        server.close()
        await server.wait_closed()


class RecordingLink:
    """The inner side of a FaultyLink in unit tests: records when frames leave."""

    def __init__(self) -> None:
        self.stats = LinkStats()
        self.remote = "tcp://127.0.0.1:1"
        self.closed = False
        self.sent: list[tuple[float, bytes]] = []
        self.arrived = asyncio.Event()
        self.expect = 0

    def send_frame(self, frame: bytes) -> bool:
        self.sent.append((asyncio.get_running_loop().time(), frame))
        if len(self.sent) >= self.expect:
            self.arrived.set()
        return True

    def close(self) -> None:
        self.closed = True


async def test_loss_happens_at_the_configured_rate() -> None:
    inner = RecordingLink()
    plan = FaultPlan(seed=7, default=LinkFaults(loss=0.2))
    link = FaultyLink(inner, plan, local="a", remote="b")
    n = 5_000
    for i in range(n):
        assert link.send_frame(i.to_bytes(4, "big"))
    lost = n - len(inner.sent)
    assert inner.stats.injected_drops == lost
    # Binomial(5000, 0.2): mean 1000, sd ~28; 5 sd either side.
    assert 860 < lost < 1140


async def test_same_seed_same_faults_other_seed_other_faults() -> None:
    def survivors(seed: int) -> list[bytes]:
        inner = RecordingLink()
        link = FaultyLink(
            inner, FaultPlan(seed=seed, default=LinkFaults(loss=0.5)), local="a", remote="b"
        )
        for i in range(200):
            link.send_frame(i.to_bytes(2, "big"))
        return [frame for _, frame in inner.sent]

    assert survivors(1) == survivors(1)
    assert survivors(1) != survivors(2)


async def test_delay_and_jitter_keep_fifo_and_respect_the_minimum_delay() -> None:
    inner = RecordingLink()
    inner.expect = 50
    plan = FaultPlan(seed=3, default=LinkFaults(delay=0.02, jitter=0.01))
    link = FaultyLink(inner, plan, local="a", remote="b")
    start = asyncio.get_running_loop().time()
    for i in range(50):
        link.send_frame(i.to_bytes(2, "big"))
    async with asyncio.timeout(5):
        await inner.arrived.wait()
    frames = [frame for _, frame in inner.sent]
    assert frames == [i.to_bytes(2, "big") for i in range(50)]
    assert all(t - start >= 0.02 for t, _ in inner.sent)


async def test_reordering_happens_when_asked() -> None:
    inner = RecordingLink()
    inner.expect = 300
    plan = FaultPlan(seed=5, default=LinkFaults(reorder=0.3, reorder_delay=0.01))
    link = FaultyLink(inner, plan, local="a", remote="b")
    for i in range(300):
        link.send_frame(i.to_bytes(2, "big"))
    async with asyncio.timeout(5):
        await inner.arrived.wait()
    order = [int.from_bytes(frame, "big") for _, frame in inner.sent]
    assert sorted(order) == list(range(300))
    assert order != list(range(300))


async def test_partition_drops_everything_until_healed() -> None:
    inner = RecordingLink()
    plan = FaultPlan()
    link = FaultyLink(inner, plan, local="a", remote="b")
    plan.partition("b")
    assert link.send_frame(b"lost")
    assert inner.sent == []
    plan.heal()
    assert link.send_frame(b"kept")
    assert [frame for _, frame in inner.sent] == [b"kept"]
    assert inner.stats.injected_drops == 1


async def test_faulty_link_over_real_tcp_delivers_with_delay() -> None:
    inbox = Inbox()
    server, client, _ = await _pair(inbox)
    try:
        plan = FaultPlan(seed=1, default=LinkFaults(delay=0.03))
        link = FaultyLink(client, plan, local="a", remote="b")
        loop = asyncio.get_running_loop()
        start = loop.time()
        link.send_frame(r2.encode(Heartbeat()))
        await inbox.wait_for(1)
        assert loop.time() - start >= 0.03
        assert inbox.messages == [Heartbeat()]
    finally:
        client.close()
        server.close()
        await server.wait_closed()


def test_fault_plan_parse() -> None:
    plan = FaultPlan.parse("delay=0.02, jitter=0.005,loss=0.01", seed=4)
    assert plan.default == LinkFaults(delay=0.02, jitter=0.005, loss=0.01)
    with pytest.raises(ValueError, match="bad fault setting"):
        FaultPlan.parse("latency=3")
    with pytest.raises(ValueError, match="probability"):
        FaultPlan.parse("loss=2")


def test_frames_cross_a_real_connection_under_uvloop() -> None:
    """uvloop's transports are not asyncio.Transport subclasses; an R2 link must still work
    (an isinstance assert once killed every peer run under uvloop)."""
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> list[Message]:
        inbox = Inbox()
        server, client, _ = await _pair(inbox)
        try:
            sent = [BroadcastData("src", seq, b"x" * 300) for seq in range(1, 51)]
            for message in sent:
                assert client.send_frame(r2.encode(message))
            await inbox.wait_for(50)
            return inbox.messages
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    received = uvloop.run(exchange())
    assert [m.sequence for m in received] == list(range(1, 51))  # type: ignore[attr-defined]
