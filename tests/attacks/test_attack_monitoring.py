"""WebSocket monitoring needs a credential: the operator token, or an overlay's admin key.

Before the fix anyone who could reach the HOMS could subscribe to the monitoring feed and see
every overlay's members, addresses and links, closed overlays included.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from homp_bodies import create, join
from hp2p.homs.launch import HomsProcess, start_homs
from test_homs_ws import Sock, sock, wait_status

pytestmark = pytest.mark.slow

CLOSED = {"type": "closed", "admin_key": "closed-admin", "access_key": "door"}


@pytest.fixture(scope="module")
def homs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomsProcess]:
    with start_homs(tmp_path_factory.mktemp("monitoring")) as process:
        with httpx.Client(base_url=process.url, timeout=10) as client:
            assert client.post("/homs", json=create("open-ov", title="o")).status_code == 200
            closed = create("closed-ov", title="c", auth=CLOSED)
            assert client.post("/homs", json=closed).status_code == 200
        yield process


@pytest.fixture
async def http(homs: HomsProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=homs.url, timeout=10) as client:
        yield client


async def _error(s: Sock) -> dict[str, str]:
    answer: dict[str, str] = await s.next()
    assert answer["action"] == "error", answer
    return answer


def test_the_operator_token_is_printed_and_kept_0600(homs: HomsProcess) -> None:
    assert homs.operator_token
    path = homs.workdir / "hp2p-operator-token"
    assert path.read_text().strip() == homs.operator_token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_monitor_without_credentials_is_refused(homs: HomsProcess) -> None:
    async with sock(f"ws://127.0.0.1:{homs.port}/ws") as spy:
        await spy.send({"server": "ui", "action": "hello"})
        assert (await _error(spy))["field"] == "$.token"
        await spy.send({"server": "ui", "action": "hello", "token": "guess"})
        assert (await _error(spy))["field"] == "$.token"
        await spy.send({"server": "ui", "action": "get", "overlay_id": "closed-ov"})
        assert (await _error(spy))["field"] == "$.overlay_id"
        hello = {"server": "ui", "action": "hello", "overlay_id": "open-ov", "admin_key": "x"}
        await spy.send(hello)
        assert (await _error(spy))["field"] == "$.admin_key"


async def test_an_admin_key_monitors_its_overlay_only(
    homs: HomsProcess, http: httpx.AsyncClient
) -> None:
    url = f"ws://127.0.0.1:{homs.port}/ws"
    owner = {"server": "ui", "action": "hello", "overlay_id": "open-ov", "admin_key": "admin"}
    async with sock(url) as watcher:
        await watcher.send(owner)
        await wait_status(homs.url, monitors=1)  # the key is checked (scrypt), then subscribed
        joined = await http.post("/peer", json=join("closed-ov", "secret", access_key="door"))
        assert joined.status_code == 202
        assert (await http.post("/peer", json=join("open-ov", "visible"))).status_code == 202
        event = await watcher.next()  # the closed overlay's join was not sent to it
        assert (event["overlay_id"], event["action"]) == ("open-ov", "add_peer")
        await watcher.send({"server": "ui", "action": "get", "overlay_id": "closed-ov"})
        while (answer := await watcher.next()).get("action") != "error":  # its own log line
            assert answer["overlay_id"] == "open-ov"
        assert answer["field"] == "$.overlay_id"


async def test_the_operator_sees_every_overlay(homs: HomsProcess, http: httpx.AsyncClient) -> None:
    async with sock(f"ws://127.0.0.1:{homs.port}/ws") as operator:
        await operator.send({"server": "ui", "action": "hello", "token": homs.operator_token})
        await operator.send({"server": "ui", "action": "get", "overlay_id": "closed-ov"})
        assert (await operator.next())["action"] == "current_cost_map"  # after the hello
        joined = await http.post("/peer", json=join("closed-ov", "late", access_key="door"))
        assert joined.status_code == 202
        event = await operator.next()
        assert (event["overlay_id"], event["action"]) == ("closed-ov", "add_peer")
