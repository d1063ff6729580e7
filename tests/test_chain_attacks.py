"""The chain under attack and failure, on real processes (the network of test_chain_node:
a HOMS, 3 producers on a CoreTree, the bridge, 2 full nodes on the blocks SubMesh).

- an equivocating producer: a test peer holding a producer's key broadcasts two different
  blocks at one height; every node refuses the second, keeps the evidence, the chain goes on;
- a flood of invalid transactions, over the API and as CoreTree broadcasts: all refused and
  counted, none in a block, memory bounded, valid transfers still confirmed;
- a producer SIGKILLed while it is its turn: the next producer takes the slot, no fork stays.

Nothing sleeps to synchronise: every wait polls an API against a deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
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
from hp2p.apps.chain.service import BLOCK_APP_ID, TX_APP_ID
from hp2p.peer.api import Peer
from test_chain_node import INTERVAL, PRODUCERS, Net, get, net, post_tx, transfer, wait_for

__all__ = ["net"]  # the module-scoped network fixture, one for this module

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def status_of(net: Net) -> dict[str, dict[str, Any]]:
    return {p.name: get(p.api, "/status") for p in net.alive}


def two_blocks(net: Net, head: dict[str, Any]) -> tuple[Block, Block]:
    """Two different blocks at height head+1 signed by one producer (its round-1 slot)."""
    height = head["height"] + 1
    key = next(
        net.keys[f"producer-{k + 1}"]
        for k in range(PRODUCERS)
        if net.genesis.producers[k] == net.genesis.producer_for(height, 1)
    )
    earliest = head["timestamp"] + INTERVAL * 2
    # pacing on the clock (at most 2 s): both timestamps well inside the 2 s drift allowance
    while time.time() < earliest - 1.0:
        time.sleep(0.05)
    made = []
    for extra in (0.0, 0.001):
        header = BlockHeader(
            chain_id=net.genesis.chain_id, height=height, parent=head["hash"],
            tx_root=merkle_root([]), state_root=head["state_root"], producer=key.public,
            round=1, timestamp=max(time.time(), earliest) + extra,
        )  # fmt: skip
        made.append(Block(sign_header(header, key), []))
    return made[0], made[1]


async def test_an_equivocating_producer_is_refused_everywhere_and_the_chain_goes_on(
    net: Net,
) -> None:
    everyone = net.alive
    before = status_of(net)
    head = get(net.producers[0].api, "/head")
    first, second = two_blocks(net, head)
    async with Peer(net.homs.url, join=net.core_id, peer_id="equivocator") as liar:
        for block in (first, second):
            await liar.publish(
                encode_block(block), app_id=BLOCK_APP_ID, payload_type="application/msgpack"
            )
        for proc in everyone:
            await asyncio.to_thread(
                wait_for,
                f"{proc.name} records the equivocation",
                lambda p=proc: (
                    get(p.api, "/status")["equivocations"]  # type: ignore[misc]
                    > before[p.name]["equivocations"]
                ),
            )
    for proc in everyone:
        refused = get(proc.api, "/status")["rejected_blocks"]
        assert refused.get("equivocation", 0) >= 1, (proc.name, refused)
        second_there = await asyncio.to_thread(httpx.get, f"{proc.api}/block/{second.hash}")
        assert second_there.status_code == 404, f"{proc.name} kept the second block"
    # the chain goes on, and every node agrees on a block made after the attack
    target = head["height"] + 3
    for proc in everyone:
        await asyncio.to_thread(
            wait_for,
            f"{proc.name} finalises height {target}",
            lambda p=proc: get(p.api, "/head")["final_height"] >= target,  # type: ignore[misc]
        )
    hashes = {get(p.api, f"/block/{target}")["hash"] for p in everyone}
    assert len(hashes) == 1


def bad_transactions(net: Net, count: int) -> list[Transaction]:
    """Badly signed, replayed (nonce already used) and overspending transfers, in turn."""
    alice, bob = net.keys["account-1"], net.keys["account-2"]
    to = address_of(bob.public)
    out = []
    for k in range(count):
        kind = k % 3
        if kind == 0:  # forged: a valid transfer with someone else's signature bytes
            tx = sign_tx(Transaction(net.genesis.chain_id, alice.public, to, 1, k, 5), alice)
            tx = msgspec.structs.replace(tx, signature=os.urandom(64))
        elif kind == 1:  # replayed: alice's nonce 0 is in a block (see the flood test)
            tx = sign_tx(Transaction(net.genesis.chain_id, alice.public, to, 1, k, 0), alice)
        else:  # overspending: far more than any balance
            tx = sign_tx(Transaction(net.genesis.chain_id, bob.public, to, 10**9 + k, 1, 0), bob)
        out.append(tx)
    return out


async def flood_api(api: str, txs: list[Transaction]) -> dict[int, int]:
    codes: dict[int, int] = {}
    headers = {"Content-Type": "application/msgpack"}
    async with httpx.AsyncClient(timeout=30) as client:
        for start in range(0, len(txs), 50):
            answers = await asyncio.gather(
                *(
                    client.post(f"{api}/tx", content=encode_tx(tx), headers=headers)
                    for tx in txs[start : start + 50]
                )
            )
            for answer in answers:
                codes[answer.status_code] = codes.get(answer.status_code, 0) + 1
    return codes


async def test_a_flood_of_invalid_transactions_is_refused_and_counted(net: Net) -> None:
    producers = net.producers
    used = transfer(net, "account-1", "account-2", 1, 0)  # its nonce 0: replays refer to it
    assert post_tx(producers[0].api, used).status_code == 202
    wait_for(
        "alice's nonce 0 is in a block",
        lambda: get(producers[0].api, f"/tx/{used.hash}")["status"] != "pending",
    )
    before = {p.name: sum(get(p.api, "/status")["rejected_txs"].values()) for p in producers}
    memory = {p.name: rss_mb(p.proc.pid) for p in producers}
    start_height = get(producers[0].api, "/head")["height"]
    over_api = bad_transactions(net, 1200)
    codes = await flood_api(producers[0].api, over_api)
    assert codes == {422: len(over_api)}, codes
    broadcast = bad_transactions(net, 1500)
    async with Peer(net.homs.url, join=net.core_id, peer_id="flooder") as flooder:
        for tx in broadcast:
            await flooder.publish(encode_tx(tx), app_id=TX_APP_ID)
        for garbage in (b"", b"\x93\x01\x02", os.urandom(300)):
            await flooder.publish(garbage, app_id=TX_APP_ID)
        # a valid transfer during the flood still goes through
        good = transfer(net, "account-3", "account-2", 3, 0)
        assert post_tx(producers[1].api, good).status_code == 202
        for proc in producers:
            expected = before[proc.name] + len(broadcast) + 3
            expected += len(over_api) if proc is producers[0] else 0
            await asyncio.to_thread(
                wait_for,
                f"{proc.name} refused every invalid transaction",
                lambda p=proc, n=expected: (
                    sum(  # type: ignore[misc]
                        get(p.api, "/status")["rejected_txs"].values()
                    )
                    >= n
                ),
            )
    for proc in [*producers, *net.nodes]:
        await asyncio.to_thread(
            wait_for,
            f"the valid transfer is final on {proc.name}",
            lambda p=proc: get(p.api, f"/tx/{good.hash}")["status"] == "final",  # type: ignore[misc]
        )
    bad = {tx.hash for tx in [*over_api, *broadcast]}
    end_height = get(producers[0].api, "/head")["height"]
    for height in range(start_height + 1, end_height + 1):
        block = get(net.nodes[0].api, f"/block/{height}")
        assert not bad & {t["hash"] for t in block["txs"]}, f"an invalid tx in block {height}"
    for proc in producers:
        status = get(proc.api, "/status")
        assert status["mempool"] <= 2, status["mempool"]  # nothing invalid waits in the pool
        grown = rss_mb(proc.proc.pid) - memory[proc.name]
        assert grown < 60, f"{proc.name} grew by {grown:.0f} MB under the flood"


def test_a_producer_killed_in_its_turn_loses_only_its_slot(net: Net) -> None:
    api = net.producers[0].api
    victim_index = 2
    victim = net.producers[victim_index]
    victim_key = net.genesis.producers[victim_index]

    def its_turn_next() -> bool:
        head = get(api, "/head")
        return net.genesis.producer_for(head["height"] + 1, 0) == victim_key

    wait_for("the head before the victim's turn", its_turn_next)
    head = get(api, "/head")
    victim.proc.kill()  # its slot starts within `interval` of that head: it dies in its turn
    victim.proc.wait(timeout=10)
    slot = head["height"] + 1
    live = [*net.producers[:victim_index], *net.producers[victim_index + 1 :], *net.nodes]
    for proc in live:
        wait_for(
            f"{proc.name} finalises the slot",
            lambda p=proc: get(p.api, "/head")["final_height"] >= slot + 1,  # type: ignore[misc]
            deadline=90,
        )
    taken = {get(p.api, f"/block/{slot}")["hash"] for p in live}
    assert len(taken) == 1, "no fork persists at the killed producer's slot"
    block = get(api, f"/block/{slot}")
    assert bytes.fromhex(block["producer"]) != victim_key
    assert block["round"] >= 1
    for height in (slot + 1,):
        assert len({get(p.api, f"/block/{height}")["hash"] for p in live}) == 1
