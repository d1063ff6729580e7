"""The chain on real overlays: a HOMS, 3 producers on a CoreTree, the R3 bridge and 2 full nodes
on the blocks SubMesh, every one a real process on 127.0.0.1 with its own API.

One network serves the tests of this module, in file order (the last one kills a producer).
Nothing sleeps to synchronise: every wait polls a node's API (or reads a process's JSON
events) against a deadline.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from hp2p.apps.chain.model import (
    Block,
    BlockHeader,
    Transaction,
    address_of,
    encode_block,
    encode_tx,
    merkle_root,
    sign_header,
    sign_tx,
)
from hp2p.apps.chain.service import BLOCK_APP_ID
from hp2p.apps.chain.state import Genesis
from hp2p.homs.launch import HomsProcess, start_homs
from hp2p.peer.api import Peer
from hp2p.trust.keys import SigningKey
from peer_procs import BridgeProc, EventProc, create_core_overlay

pytestmark = pytest.mark.slow

PRODUCERS = 3
INTERVAL = 1.0
FINALITY = 2


class ChainProc(EventProc):
    """``hp2p chain producer|node --json-events``; ready once it printed its API URL."""

    def __init__(self, workdir: Path, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "hp2p", "chain", *args, "--json-events", "--id", name]
        cmd += ["--api", "127.0.0.1:0", "--db", str(workdir / f"{name}.db")]
        super().__init__(workdir, name, cmd)
        ready = self.next_event("ready", 90)
        self.api = str(ready["api"])
        self.ready = ready


@dataclass
class Net:
    workdir: Path
    homs: HomsProcess
    genesis: Genesis
    keys: dict[str, SigningKey]
    producers: list[ChainProc]
    nodes: list[ChainProc]
    bridge: BridgeProc
    core_id: str
    blocks_id: str

    @property
    def alive(self) -> list[ChainProc]:
        return [p for p in [*self.producers, *self.nodes] if p.proc.poll() is None]

    def full_node(self, name: str) -> ChainProc:
        args = ("node", "--genesis", str(self.workdir / "chain" / "genesis.json"))
        return ChainProc(
            self.workdir, name, *args, "--homs", self.homs.url, "--join", self.blocks_id
        )


def get(api: str, path: str) -> Any:
    answer = httpx.get(f"{api}{path}", timeout=10)
    answer.raise_for_status()
    return answer.json()


def wait_for(what: str, check: Callable[[], bool], deadline: float = 60.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)  # polling with a deadline, not synchronising on a guess
    raise AssertionError(f"not within {deadline:g} s: {what}")


def transfer(net: Net, sender: str, to: str, amount: int, nonce: int, fee: int = 1) -> Transaction:
    key = net.keys[sender]
    recipient = address_of(net.keys[to].public)
    tx = Transaction(net.genesis.chain_id, key.public, recipient, amount, fee, nonce)
    return sign_tx(tx, key)


def post_tx(api: str, tx: Transaction) -> httpx.Response:
    headers = {"Content-Type": "application/msgpack"}
    return httpx.post(f"{api}/tx", content=encode_tx(tx), headers=headers, timeout=10)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    workdir = tmp_path_factory.mktemp("chain-net")
    chain_dir = workdir / "chain"
    init = [sys.executable, "-m", "hp2p", "chain", "init", "--dir", str(chain_dir)]
    init += ["--producers", str(PRODUCERS), "--accounts", "3", "--balance", "1000"]
    init += ["--interval", str(INTERVAL), "--finality", str(FINALITY), "--chain-id", "t"]
    subprocess.run(init, check=True, capture_output=True, timeout=60)
    genesis = Genesis.load(chain_dir / "genesis.json")
    keys = {p.stem: SigningKey.load(p) for p in chain_dir.glob("*.key")}
    started: list[EventProc] = []
    net: Net | None = None
    with start_homs(workdir) as homs:
        try:
            # the CoreTree and the bridge first, so that the SubMesh holds every block
            core_id = create_core_overlay(homs.url, "chain")
            bridge = BridgeProc(
                workdir, homs.url, "--core", core_id, "--id", "b1",
                "--submesh", f"blocks:{BLOCK_APP_ID}",
            )  # fmt: skip
            started.append(bridge)
            blocks_id = str(bridge.next_event("joined", 90)["targets"][0]["overlay_id"])
            common = ["--genesis", str(chain_dir / "genesis.json"), "--homs", homs.url]
            producers = []
            for k in range(1, PRODUCERS + 1):
                producers.append(
                    ChainProc(
                        workdir,
                        f"p{k}",
                        "producer",
                        *common,
                        "--key",
                        str(chain_dir / f"producer-{k}.key"),
                        "--overlay",
                        core_id,
                        "--sync",
                        blocks_id,
                    )
                )
                started.append(producers[-1])
            net = Net(workdir, homs, genesis, keys, producers, [], bridge, core_id, blocks_id)
            for name in ("n1", "n2"):
                net.nodes.append(net.full_node(name))
                started.append(net.nodes[-1])
            yield net
        finally:
            # the tests replace restarted processes in ``net``: stop those as well
            later = [*net.producers, *net.nodes] if net is not None else []
            for proc in {id(p): p for p in [*started, *later]}.values():
                proc.terminate()


def test_a_transaction_is_in_a_block_on_every_node_and_becomes_final(net: Net) -> None:
    tx = transfer(net, "account-1", "account-2", 100, 0, fee=3)
    answer = post_tx(net.producers[1].api, tx)
    assert answer.status_code == 202, answer.text
    assert answer.json()["hash"] == tx.hash
    everyone = [*net.producers, *net.nodes]
    for proc in everyone:
        wait_for(
            f"{tx.hash[:12]} final on {proc.name}",
            lambda p=proc: get(p.api, f"/tx/{tx.hash}")["status"] == "final",  # type: ignore[misc]
        )
    heights = {get(p.api, f"/tx/{tx.hash}")["height"] for p in everyone}
    assert len(heights) == 1
    height = heights.pop()
    hashes = {get(p.api, f"/block/{height}")["hash"] for p in everyone}
    assert len(hashes) == 1, "every node holds the same block"
    block = get(net.nodes[0].api, f"/block/{height}")
    assert [t["hash"] for t in block["txs"]] == [tx.hash]
    sender, recipient = (address_of(net.keys[n].public) for n in ("account-1", "account-2"))
    for proc in everyone:
        assert get(proc.api, f"/account/{sender}")["balance"] == 1000 - 103, proc.name
        assert get(proc.api, f"/account/{recipient}") | {"height": 0} == {
            "address": recipient,
            "balance": 1100,
            "nonce": 0,
            "pending": 0,
            "height": 0,
        }
    producer = bytes.fromhex(block["producer"])
    fees = {get(p.api, f"/account/{address_of(producer)}")["balance"] for p in everyone}
    assert fees == {3}, "the fee went to the block's producer, on every node"


def test_bad_transactions_get_a_4xx_with_the_reason_and_are_counted(net: Net) -> None:
    api = net.producers[0].api
    good = transfer(net, "account-3", "account-1", 5, 0)
    forged = msgspec.structs.replace(good, signature=bytes(64))
    cases = [
        (forged, 422, "bad_signature"),
        (transfer(net, "account-3", "account-1", 5000, 0), 422, "overspend"),
        (transfer(net, "account-1", "account-3", 1, 0), 422, "replayed"),  # nonce 0 is used
    ]
    for tx, code, reason in cases:
        answer = post_tx(api, tx)
        assert answer.status_code == code, answer.text
        assert answer.json()["detail"]["reason"] == reason
    garbage = httpx.post(f"{api}/tx", content=b"\x93\x01", timeout=10)
    assert garbage.status_code == 400
    assert garbage.json()["detail"]["reason"] == "malformed"
    as_json = httpx.post(f"{api}/tx", json={"chain_id": "t", "amount": "x"}, timeout=10)
    assert as_json.status_code == 400
    refused = get(api, "/status")["rejected_txs"]
    for reason in ("bad_signature", "overspend", "replayed", "malformed"):
        assert refused.get(reason, 0) >= 1, (reason, refused)
    # a full node cannot broadcast: it says where to go
    answer = post_tx(net.nodes[0].api, good)
    assert answer.status_code == 409
    assert "producer" in answer.json()["detail"]["detail"]


def forged_block(net: Net, head: dict[str, Any], stranger: SigningKey) -> Block:
    """A well-formed block on the head, signed by a key that is not the scheduled producer."""
    header = BlockHeader(
        chain_id=net.genesis.chain_id,
        height=head["height"] + 1,
        parent=head["hash"],
        tx_root=merkle_root([]),
        state_root=head["state_root"],
        producer=stranger.public,
        round=0,
        timestamp=time.time(),
    )
    return Block(sign_header(header, stranger), [])


async def test_a_forged_block_on_the_core_tree_is_refused_by_every_node(net: Net) -> None:
    stranger = net.keys["account-3"]  # a member of the CoreTree, but no producer
    everyone = net.alive

    async def refused(client: httpx.AsyncClient, proc: ChainProc) -> int:
        status = (await client.get(f"{proc.api}/status")).json()
        return int(status["rejected_blocks"].get("wrong_producer", 0))

    async with httpx.AsyncClient(timeout=10) as client:
        before = {p.name: await refused(client, p) for p in everyone}
        head = (await client.get(f"{net.producers[0].api}/head")).json()
        async with Peer(net.homs.url, join=net.core_id, peer_id="intruder") as intruder:
            data = encode_block(forged_block(net, head, stranger))
            await intruder.publish(data, app_id=BLOCK_APP_ID, payload_type="application/msgpack")
            end = time.monotonic() + 60
            for proc in everyone:
                while await refused(client, proc) <= before[proc.name]:
                    assert time.monotonic() < end, f"{proc.name} did not refuse the block"
                    await asyncio.sleep(0.2)
        heads = [(await client.get(f"{p.api}/head")).json() for p in everyone]
    for head_now in heads:
        assert bytes.fromhex(head_now["producer"]) in net.genesis.producers


def test_a_restarted_full_node_keeps_its_chain_and_catches_up(net: Net) -> None:
    node = net.nodes[1]
    final = get(node.api, "/head")["final_height"]
    assert final >= 1
    node.terminate()
    net.nodes[1] = again = net.full_node("n2")
    assert again.ready["replayed"] >= final, again.ready
    assert again.ready["height"] >= final - FINALITY
    target = get(net.producers[0].api, "/head")["height"]
    wait_for("the restarted node catches up", lambda: get(again.api, "/head")["height"] >= target)
    theirs = get(net.producers[0].api, f"/block/{target}")["hash"]
    assert get(again.api, f"/block/{target}")["hash"] == theirs
    # blocks it held before the restart are served from its store, not pulled as news
    assert get(again.api, "/block/1")["final"] is True


def chain_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "hp2p", "chain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_cli_sends_reads_balances_and_watches_heads(net: Net) -> None:
    recipient = address_of(net.keys["account-1"].public)
    key = str(net.workdir / "chain" / "account-3.key")
    api = net.producers[0].api
    sent = chain_cli(
        "send", "--api", api, "--key", key, "--to", recipient, "--amount", "7", "--wait"
    )
    assert sent.returncode == 0, sent.stderr
    tx_hash, where = sent.stdout.splitlines()[:2]
    assert len(tx_hash) == 64
    assert where.startswith(("in_block at height", "final at height"))
    node = net.nodes[0].api
    wait_for("the full node has it", lambda: get(node, f"/tx/{tx_hash}")["status"] != "unknown")
    shown = chain_cli("balance", "--api", node, recipient, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["balance"] == get(node, f"/account/{recipient}")["balance"]
    watched = chain_cli("watch", "--api", node, "--count", "2")
    assert watched.returncode == 0, watched.stderr
    assert "2 new heads" in watched.stdout
    refused = chain_cli("send", "--api", api, "--key", key, "--to", "0x12", "--amount", "1")
    assert refused.returncode == 1
    assert "refused the transaction (400)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_restarted_producer_replays_its_store_and_pulls_what_it_missed(net: Net) -> None:
    old = net.producers[1]
    old.terminate()
    before = get(net.producers[0].api, "/head")["height"]
    wait_for(
        "blocks are made while it is away",
        lambda: get(net.producers[0].api, "/head")["height"] >= before + 3,
    )
    chain_dir = net.workdir / "chain"
    again = ChainProc(
        net.workdir, "p2", "producer", "--genesis", str(chain_dir / "genesis.json"),
        "--homs", net.homs.url, "--key", str(chain_dir / "producer-2.key"),
        "--overlay", net.core_id, "--sync", net.blocks_id,
    )  # fmt: skip
    net.producers[1] = again
    assert again.ready["replayed"] >= 1
    target = get(net.producers[0].api, "/head")["height"]
    wait_for("it catches up", lambda: get(again.api, "/head")["height"] >= target)
    theirs = get(net.producers[0].api, f"/block/{target}")["hash"]
    wait_for(
        "it agrees with the others",
        lambda: get(again.api, f"/block/{target}")["hash"] == theirs,
    )


def test_the_next_producer_takes_the_slots_of_a_killed_one(net: Net) -> None:
    dead = net.producers[2]
    dead.proc.kill()
    dead.proc.wait(timeout=10)
    api = net.producers[0].api
    start = get(api, "/head")["height"]
    wait_for(
        "the chain goes on without producer 3",
        lambda: get(api, "/head")["height"] >= start + 2 * PRODUCERS,
        deadline=90,
    )
    dead_key = net.genesis.producers[2]
    end = get(api, "/head")["height"]
    later = [get(api, f"/block/{h}") for h in range(start + 2, end + 1)]
    assert later
    assert all(bytes.fromhex(b["producer"]) != dead_key for b in later)
    assert any(b["round"] >= 1 for b in later), "some slot was taken in a later round"
    tx = transfer(net, "account-2", "account-3", 10, 0)
    assert post_tx(api, tx).status_code == 202
    for proc in [*net.producers[:2], *net.nodes]:
        wait_for(
            f"in a block on {proc.name}",
            lambda p=proc: get(p.api, f"/tx/{tx.hash}")["status"] in ("in_block", "final"),  # type: ignore[misc]
        )
