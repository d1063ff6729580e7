"""The asyncio peer shell on real loopback TCP, with an in-process HOMS."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from hp2p.peer.node import NodeError, PeerNode
from hp2p.peer.settings import NodeSettings
from hp2p.wire.r2 import HELLO_ACCEPTED, StreamDecoder
from node_helpers import client_for, collect, homs_app, start_node


async def _close_all(nodes: list[PeerNode]) -> None:
    await asyncio.gather(*(n.close() for n in reversed(nodes)), return_exceptions=True)


async def test_five_peers_attach_and_every_message_is_delivered_once(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        nodes = [await start_node(app, create="five", peer_id="p0")]
        try:
            for i in range(1, 5):
                nodes.append(await start_node(app, join="five", peer_id=f"p{i}"))
            assert all(n.state == "attached" for n in nodes)
            assert nodes[0].core is not None
            assert nodes[0].core.parent is None
            assert all(n.core is not None and n.core.parent for n in nodes[1:])
            subs = [n.subscribe() for n in nodes]
            sources = [nodes[0], nodes[2], nodes[4]]
            for round_ in range(4):
                for src in sources:
                    src.publish(f"{src.peer_id}:{round_}".encode())
            expected = {(s.peer_id, seq) for s in sources for seq in range(1, 5)}
            for node, sub in zip(nodes, subs, strict=True):
                others = {k for k in expected if k[0] != node.peer_id}
                got = await collect(sub, len(others), within=10)
                keys = Counter((d.source, d.sequence) for d in got)
                assert set(keys) == others, node.peer_id
                assert max(keys.values()) == 1
                assert sub.get_nowait() is None  # nothing more: no duplicate behind them
            status = nodes[1].status()
            assert status["state"] == "attached"
            assert status["node"]["frames_refused"] == 0
            assert status["ticket"] == 2
        finally:
            await _close_all(nodes)


async def test_scan_tree_sees_every_peer_once_and_no_loop(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        nodes = [await start_node(app, create="scan", peer_id="r")]
        try:
            for i in range(6):
                nodes.append(await start_node(app, join="scan", peer_id=f"s{i}"))
            result = await nodes[0].scan_tree()
            seen: set[str] = set()
            for path in result.paths:
                ids = [hop[0] for hop in path.hops]
                assert len(ids) == len(set(ids)), f"loop in {ids}"
                assert "r" not in ids
                seen.update(ids)
            assert seen == {f"s{i}" for i in range(6)}
        finally:
            await _close_all(nodes)


async def test_leave_releases_paths_and_the_homs_forgets_the_peer(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        root = await start_node(app, create="leave", peer_id="root")
        child = await start_node(app, join="leave", peer_id="child")
        try:
            assert child.core is not None
            assert child.core.parent == "root"
            await child.close()
            assert child.state == "left"
            # The root learns it from the RELEASE (or the closed connection): wait for it.
            async with asyncio.timeout(5):
                while root.core is not None and root.core.paths.by_peer("child") is not None:
                    await root._links_changed.wait()
                    root._links_changed.clear()
            assert root.core is not None
            members = await app.state.store.peers(root.core.overlay_id)
            assert [m.peer_id for m in members] == ["root"]
        finally:
            await _close_all([root, child])


async def test_unknown_overlay_is_a_clear_error(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        node = PeerNode(
            NodeSettings(homs="http://homs", join="no-such-overlay"), homs_client=client_for(app)
        )
        with pytest.raises(NodeError, match="no overlay with id or title 'no-such-overlay'"):
            await node.start()


async def test_listen_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        async with homs_app(tmp_path) as app:
            node = PeerNode(
                NodeSettings(homs="http://homs", create="x", listen=f"127.0.0.1:{port}"),
                homs_client=client_for(app),
            )
            in_use = rf"R2: cannot listen on 127.0.0.1:{port}: port {port} is already in use"
            with pytest.raises(NodeError, match=in_use):
                await node.start()
    finally:
        blocker.close()


async def test_garbage_on_r2_is_counted_and_the_peer_keeps_working(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        root = await start_node(app, create="garbage", peer_id="root")
        try:
            host, port = root.address.removeprefix("tcp://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"\x07\x01\xff\xffnot a frame at all")
            await writer.drain()
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # the peer closed this connection
            writer.close()
            assert root.stats.wire_errors == 1
            child = await start_node(app, join="garbage", peer_id="child")
            try:
                sub = child.subscribe()
                root.publish(b"still alive")
                (got,) = await collect(sub, 1, within=5)
                assert got.data == b"still alive"
            finally:
                await child.close()
        finally:
            await root.close()


async def test_hello_gets_1202_on_a_raw_connection(tmp_path: Path) -> None:
    """The HELLO leg of wire conformance, in-process (the full one is in test_integration_*)."""
    from hp2p.wire.r2 import Hello, Message, encode

    async with homs_app(tmp_path) as app:
        # a raw HELLO with no credential: only a reference-compat overlay takes it
        root = await start_node(app, create="raw", peer_id="root", security="reference-compat")
        try:
            assert root.core is not None
            host, port = root.address.removeprefix("tcp://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            hello = Hello(
                overlay_id=root.core.overlay_id,
                peer_id="raw",
                address="tcp://127.0.0.1:1",
                ticket_id=99,
            )
            writer.write(encode(hello))
            decoder = StreamDecoder()
            async with asyncio.timeout(5):
                messages: list[Message] = []
                while not messages:
                    messages = decoder.feed(await reader.read(65536))
            assert getattr(messages[0], "code", None) == HELLO_ACCEPTED
            writer.close()
        finally:
            await root.close()


async def test_fault_injection_delays_every_frame(tmp_path: Path) -> None:
    """--faults wraps every link in FaultyLink: a 40 ms delay can only make delivery slower."""
    async with homs_app(tmp_path) as app:
        root = await start_node(app, create="faults", peer_id="root", faults="delay=0.04")
        child = await start_node(app, join="faults", peer_id="child", faults="delay=0.04")
        try:
            sub = child.subscribe()
            loop = asyncio.get_running_loop()
            sent = loop.time()
            root.publish(b"slow")
            (got,) = await collect(sub, 1, within=10)
            assert got.data == b"slow"
            assert loop.time() - sent >= 0.04
            assert child.fault_plan is not None
        finally:
            await _close_all([root, child])


async def test_join_failed_leads_to_a_bounded_fresh_join_then_a_clear_error(
    tmp_path: Path,
) -> None:
    """Entry peer unreachable: the core gives up, the shell joins afresh (new ticket), once."""
    import socket

    from hp2p.peer.config import PeerConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    async with homs_app(tmp_path) as app:
        owner = client_for(app)
        await owner.create_overlay("ghost", "o", "admin", heartbeat_interval=1, heartbeat_timeout=3)
        overlay = await owner.find_overlay("ghost")
        await owner.join(overlay, peer_id="ghost", address=dead, password="p" * 8, expires=30)
        config = PeerConfig(join_attempts=1, rejoins=1, hello_timeout=0.5, backoff_initial=0.01)
        events: list[tuple[str, dict[str, object]]] = []
        node = PeerNode(
            NodeSettings(homs="http://homs", join="ghost", join_timeout=20),
            config,
            homs_client=client_for(app),
            on_event=lambda kind, fields: events.append((kind, fields)),
        )
        with pytest.raises(NodeError, match="could not attach to its tree"):
            await node.start()
        assert node.stats.rejoins == 1
        assert [kind for kind, _ in events].count("join_failed") == 2
        members = await app.state.store.peers(overlay.overlay_id)
        assert [m.peer_id for m in members] == ["ghost"]  # it left the HOMS each time
        last = await app.state.store.get_overlay(overlay.overlay_id)
        assert last.last_ticket == 3  # ghost 1, first join 2, the fresh join 3
        await owner.aclose()
