"""A peer the HOMS forgot (expired while hung, or a HOMS that lost its records) joins again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hp2p.peer.homs_client import HomsClient
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from node_helpers import FAST, client_for, collect, homs_app, start_node


async def test_a_forgotten_peer_joins_again_with_a_new_ticket_and_keeps_receiving(
    tmp_path: Path,
) -> None:
    async with homs_app(tmp_path) as app:
        events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        a = await start_node(app, create="forget", peer_id="a")
        b = PeerNode(
            NodeSettings(
                homs="http://homs", join="forget", peer_id="b", expires=1, join_timeout=15.0
            ),
            FAST,
            homs_client=client_for(app),
            on_event=lambda kind, fields: events.put_nowait((kind, fields)),
        )
        await b.start()
        try:
            assert b.membership is not None
            old_ticket = b.membership.ticket
            overlay_id = b.membership.overlay_id
            # The HOMS forgets b: its membership is removed behind its back.
            other: HomsClient = client_for(app)
            other.membership = b.membership
            await other.leave()
            await other.aclose()
            assert [p.peer_id for p in await app.state.store.peers(overlay_id)] == ["a"]

            seen: list[str] = []
            async with asyncio.timeout(20):  # b refreshes every 0.8 s
                for _ in range(10_000):  # bounded: the events until b is attached again
                    kind, fields = await events.get()
                    seen.append(kind)
                    if kind == "forgotten":
                        assert fields["ticket"] == old_ticket
                        assert "not a member" in fields["reason"]
                    if kind == "attached" and "forgotten" in seen:
                        break
            members = {p.peer_id: p.ticket for p in await app.state.store.peers(overlay_id)}
            assert set(members) == {"a", "b"}
            assert members["b"] > old_ticket
            status = b.status()
            assert status["node"]["forgotten"] == 1
            assert status["node"]["rejoins"] == 0  # not spent from the JoinFailed budget
            assert status["homs_client"]["forgotten"] == 1
            inbox = b.subscribe()
            a.publish(b"still here")
            (msg,) = await collect(inbox, 1, within=10)
            assert msg.data == b"still here"
        finally:
            await b.close()
            await a.close()
