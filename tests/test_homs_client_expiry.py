"""A HOMS that no longer counts this peer: any refusal of a refresh or report means "join again".

The reference HOMS answers a refresh or report from a peer it expired (or never knew) with
``400 "BAD REQUEST"`` and no field; hp2p's HOMS names ``$.peer.peer-id``. Both must lead the
peer to a fresh join (``on_forgotten``), not to warnings for ever. The reference's answers come
from its recorded exchanges where they are present beside the repository.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from hp2p.peer.effects import Costmap
from hp2p.peer.homs_client import HomsClient, HomsError, Membership, PeerForgottenError
from recordings import HOMP_RECORDING, load


def _recorded(step: str) -> tuple[int, str]:
    for exchange in load(HOMP_RECORDING):
        if exchange["step"] == step:
            return int(exchange["response"]["status"]), str(exchange["response"]["body"])
    return 400, "BAD REQUEST"  # what the reference answers (the recording, when absent here)


REFERENCE_REFUSALS = [_recorded("refresh_unknown_peer"), _recorded("refresh_after_remove")]


def _client(status: int, body: str, calls: list[str]) -> HomsClient:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return httpx.Response(status, text=body)

    client = HomsClient("http://homs", transport=httpx.MockTransport(answer), attempts=1)
    client.membership = Membership(
        overlay_id="ov",
        overlay_type="core",
        sub_type="tree",
        peer_id="p1",
        address="tcp://127.0.0.1:7000",
        password="secret-pw",
        ticket=3,
        expires=30,
        peers=(),
        heartbeat_interval=2.0,
        heartbeat_timeout=6.0,
    )
    return client


@pytest.mark.parametrize(("status", "body"), REFERENCE_REFUSALS)
async def test_a_refused_refresh_means_forgotten(status: int, body: str) -> None:
    calls: list[str] = []
    client = _client(status, body, calls)
    with pytest.raises(PeerForgottenError):
        await client.refresh()
    assert calls == ["PUT /peer"]
    assert client.stats.forgotten == 1
    await client.aclose()


@pytest.mark.parametrize(("status", "body"), REFERENCE_REFUSALS)
async def test_a_refused_report_hands_the_peer_to_on_forgotten(status: int, body: str) -> None:
    calls: list[str] = []
    client = _client(status, body, calls)
    lost: list[Membership] = []
    done = asyncio.Event()

    def forgotten(membership: Membership, exc: PeerForgottenError) -> None:
        lost.append(membership)
        done.set()

    client.on_forgotten = forgotten
    client.report(Costmap(("parent",), (), ()))
    await asyncio.wait_for(done.wait(), 5)
    assert [m.ticket for m in lost] == [3]
    assert calls == ["POST /peer/report"]
    await client.aclose()


async def test_a_refused_join_is_not_taken_for_forgotten() -> None:
    calls: list[str] = []
    client = _client(400, "BAD REQUEST", calls)
    with pytest.raises(HomsError) as info:
        await client.find_overlay("ov")
    assert not isinstance(info.value, PeerForgottenError)
    await client.aclose()
