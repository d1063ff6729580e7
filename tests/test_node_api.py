"""The application interface: the Python ``Peer`` API and the local HTTP/WebSocket API."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from hp2p.homs.launch import running_homs
from hp2p.peer.api import Peer
from hp2p.peer.local_api import LocalApi
from hp2p.peer.node import NodeError
from node_helpers import FAST, collect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def homs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_homs(tmp_path_factory.mktemp("homs")) as homs:
        yield homs.url


async def test_python_api_publish_subscribe_scan_status(homs_url: str) -> None:
    async with (
        Peer(homs_url, create="py-api", peer_id="a", config=FAST) as a,
        Peer(homs_url, join="py-api", peer_id="b", config={"scan_timeout": 1.0}) as b,
    ):
        assert a.overlay_id == b.overlay_id
        inbox = b.messages()
        sequence = await a.publish(b"hello b", app_id="chat")
        (msg,) = await collect(inbox, 1, within=10)
        assert (msg.source, msg.sequence, msg.data, msg.app_id) == (
            "a",
            sequence,
            b"hello b",
            "chat",
        )
        scan = await b.scan_tree()
        assert [[hop[0] for hop in path.hops] for path in scan.paths] == [["a"]]
        status = a.status()
        assert status["paths"]["primary"] == ["b"]
        assert status["core"]["published"] == 1
    with pytest.raises(NodeError, match="not running"):
        await a.publish(b"after leaving")


def test_python_api_needs_exactly_one_of_create_or_join() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        Peer("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="exactly one of"):
        Peer("http://127.0.0.1:1", create="a", join="b")


async def test_local_api_http_and_websocket(homs_url: str) -> None:
    async with (
        Peer(homs_url, create="local-api", peer_id="a", config=FAST) as a,
        Peer(homs_url, join="local-api", peer_id="b", config=FAST) as b,
        LocalApi(a.node, "127.0.0.1:0") as api_a,
        LocalApi(b.node, "127.0.0.1:0") as api_b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        status = (await http.get(f"{api_a.url}/status", headers=api_a.headers)).json()
        assert status["peer_id"] == "a"
        assert status["state"] == "attached"
        ws_url = api_a.url.replace("http://", "ws://") + "/subscribe"
        async with connect(ws_url, open_timeout=10, additional_headers=api_a.headers) as ws:
            # the subscription exists once the server has accepted: publish from b over HTTP
            answer = (
                await http.post(
                    f"{api_b.url}/publish?app_id=iot", content=b"\xff\x00raw", headers=api_b.headers
                )
            ).json()
            assert answer == {"source": "b", "sequence": 1}
            got = json.loads(await ws.recv(decode=True))
            assert got["source"] == "b"
            assert got["app_id"] == "iot"
            assert base64.b64decode(got["data_b64"]) == b"\xff\x00raw"
            inbox = b.messages()
            await ws.send("from a's websocket")
            (msg,) = await collect(inbox, 1, within=10)
            assert (msg.source, msg.data) == ("a", b"from a's websocket")
        too_big = await http.post(
            f"{api_b.url}/publish", content=b"x" * (b.node.max_message + 1), headers=api_b.headers
        )
        assert too_big.status_code == 413
        assert "larger than" in too_big.json()["detail"]
        assert b.status()["core"]["published"] == 1  # the refused message was not numbered
        tree = (await http.get(f"{api_b.url}/tree", headers=api_b.headers)).json()
        assert [[hop["peer_id"] for hop in path] for path in tree["paths"]] == [["a"]]
