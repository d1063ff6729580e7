"""The blockchain service of Q.4100 §9.2 on this machine, in one command.

    python examples/chain/run.py             # or: make chain-demo
    python examples/chain/run.py --nodes 5 --rate 50 --seconds 20

It starts, each as its own process on 127.0.0.1: a HOMS (SQLite in a temporary folder), a
chain made by ``hp2p chain init`` (4 producers, funded accounts), the 4 producers on a
CoreTree, the R3 bridge that publishes every block on the SubMesh ``blocks``, and N full nodes
on that SubMesh (20 by default). A load generator in this process then signs transfers and
posts them to the producers' APIs at a steady rate (one in 25 with a forged signature, which
every producer must refuse), while a live table shows each node's height, final height and
transaction counts. At the end it prints a summary: what was sent, accepted, refused and
confirmed on every node, and whether every node agrees on every block. Everything it started
is stopped on the way out, whatever happens.

Each process needs about 45-100 MB and some CPU: on a small machine use fewer ``--nodes``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from hp2p.apps.chain.model import Transaction, address_of, encode_tx, sign_tx
from hp2p.apps.chain.state import Genesis
from hp2p.apps.processes import ProcessGroup
from hp2p.homs.launch import start_homs
from hp2p.trust.keys import SigningKey

console = Console()
DEADLINE = 120.0
PRODUCERS = 4
FORGE_EVERY = 25  # one transfer in 25 carries a forged signature


@dataclass
class Load:
    """The load generator: signed transfers between the funded accounts, posted round-robin
    to the producers' APIs; each sender's nonce is counted here, never asked for."""

    chain_id: str
    accounts: list[SigningKey]
    apis: list[str]
    nonces: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    accepted: list[str] = field(default_factory=list)
    forged: int = 0
    forged_refused: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def next_tx(self) -> tuple[Transaction, bool]:
        sender = self.accounts[self.sent % len(self.accounts)]
        to = self.accounts[(self.sent + 1) % len(self.accounts)]
        forge = self.sent % FORGE_EVERY == FORGE_EVERY - 1
        origin = address_of(sender.public)
        nonce = self.nonces.get(origin, 0)
        tx = Transaction(self.chain_id, sender.public, address_of(to.public), 1, 1, nonce)
        tx = sign_tx(tx, sender)
        if forge:
            tx = msgspec.structs.replace(tx, signature=bytes(64))
        else:
            self.nonces[origin] = nonce + 1
        return tx, forge

    async def post(self, client: httpx.AsyncClient) -> None:
        tx, forge = self.next_tx()
        api = self.apis[self.sent % len(self.apis)]
        self.sent += 1
        self.forged += forge
        headers = {"Content-Type": "application/msgpack"}
        try:
            answer = await client.post(f"{api}/tx", content=encode_tx(tx), headers=headers)
        except httpx.HTTPError:
            self.errors += 1
            return
        if answer.status_code == 202:
            self.accepted.append(tx.hash)
            return
        try:
            reason = str(answer.json()["detail"]["reason"])
        except (ValueError, KeyError, TypeError):
            reason = str(answer.status_code)
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.forged_refused += forge and reason == "bad_signature"
        if not forge:  # a real refusal (e.g. 503 not attached): that nonce was not used
            self.nonces[address_of(tx.sender)] = tx.nonce

    async def run(self, client: httpx.AsyncClient, rate: float, seconds: float) -> None:
        """``rate`` transfers a second for ``seconds`` (paced on the clock, not on answers)."""
        start = time.monotonic()
        total = int(rate * seconds)
        pending: set[asyncio.Task[None]] = set()
        for k in range(total):
            at = start + k / rate
            await asyncio.sleep(max(0.0, at - time.monotonic()))  # pacing, not synchronising
            task = asyncio.create_task(self.post(client))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if len(pending) > 200:  # the producers are slower than the rate: wait for them
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending)


async def poll(client: httpx.AsyncClient, apis: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``GET /status`` of every node at once (a node that does not answer is left out)."""

    async def one(api: str) -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return dict((await client.get(f"{api}/status", timeout=3)).json())
        return None

    answers = await asyncio.gather(*(one(api) for api in apis.values()))
    return {name: a for name, a in zip(apis, answers, strict=True) if a is not None}


def view(statuses: dict[str, dict[str, Any]], load: Load, elapsed: float) -> Group:
    top = max((s["height"] for s in statuses.values()), default=0)
    table = Table(title=f"chain after {elapsed:.0f} s (GET /status of each node)")
    for column in ("node", "role", "height", "final", "behind", "mempool", "txs in", "refused"):
        table.add_column(column, justify="left" if column in ("node", "role") else "right")
    for name, s in statuses.items():
        counters = s.get("counters", {})
        got = counters.get("tx_submitted", 0) + counters.get("tx_received", 0)
        refused = sum(s.get("rejected_txs", {}).values())
        behind = top - s["height"]
        table.add_row(
            name, s["role"], str(s["height"]), str(s["final_height"]),
            f"[red]{behind}[/]" if behind > 1 else str(behind), str(s["mempool"]),
            str(got) if s["role"] == "producer" else "-", str(refused),
        )  # fmt: skip
    line = (
        f"load: {load.sent} sent, {len(load.accepted)} accepted, "
        f"{sum(load.refused.values())} refused {dict(sorted(load.refused.items()))}"
    )
    return Group(table, line)


async def start_chain(procs: ProcessGroup, homs: str, chain: Path, nodes: int) -> dict[str, str]:
    """The producers, the bridge and the full nodes, ready; their API URLs by name."""
    genesis = str(chain / "genesis.json")
    admin = os.urandom(8).hex()

    def producer(k: int, *where: str) -> tuple[str, ...]:
        return (
            "chain", "producer", "--genesis", genesis, "--key", str(chain / f"producer-{k}.key"),
            "--homs", homs, "--api", "127.0.0.1:0", "--db", str(procs.workdir / f"p{k}.db"),
            "--id", f"p{k}", "--json-events", *where,
        )  # fmt: skip

    await procs.start("p1", *producer(1, "--create", "chain", "--admin-key", admin))
    core = str((await procs.wait_event("p1", "ready"))["overlay_id"])
    await procs.start(
        "bridge", "bridge", "--homs", homs, "--core", core, "--id", "b1",
        "--submesh", "blocks:hp2p-chain-block", "--core-admin-key", admin, "--json-events",
    )  # fmt: skip
    joined = await procs.wait_event("bridge", "joined")
    blocks = str(joined["targets"][0]["overlay_id"])
    if any(e.get("event") == "head" for e in procs.events["p1"]):
        raise SystemExit(
            "the first block was made before the bridge was up, so the full nodes could never "
            "get it: run again with a larger --start-in"
        )
    for k in range(2, PRODUCERS + 1):
        await procs.start(f"p{k}", *producer(k, "--overlay", core, "--sync", blocks))
    for n in range(1, nodes + 1):
        await procs.start(
            f"n{n}", "chain", "node", "--genesis", genesis, "--join", blocks, "--homs", homs,
            "--api", "127.0.0.1:0", "--id", f"n{n}", "--json-events",
        )  # fmt: skip
    names = [f"p{k}" for k in range(1, PRODUCERS + 1)] + [f"n{n}" for n in range(1, nodes + 1)]
    ready = await asyncio.gather(*(procs.wait_event(name, "ready") for name in names))
    return {name: str(event["api"]) for name, event in zip(names, ready, strict=True)}


async def agreement(client: httpx.AsyncClient, apis: dict[str, str], height: int) -> int:
    """How many nodes hold the same block at ``height`` as the first producer."""

    async def hash_at(api: str) -> str | None:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            answer = await client.get(f"{api}/block/{height}", timeout=5)
            return str(answer.json()["hash"]) if answer.status_code == 200 else None
        return None

    hashes = await asyncio.gather(*(hash_at(api) for api in apis.values()))
    return sum(1 for h in hashes if h is not None and h == hashes[0])


async def confirmed(client: httpx.AsyncClient, api: str, hashes: list[str]) -> dict[str, int]:
    """The status of each transaction on one node, counted."""
    counts: dict[str, int] = {}
    for start in range(0, len(hashes), 50):
        batch = hashes[start : start + 50]
        answers = await asyncio.gather(
            *(client.get(f"{api}/tx/{h}", timeout=10) for h in batch), return_exceptions=True
        )
        for answer in answers:
            status = "error"
            if isinstance(answer, httpx.Response) and answer.status_code == 200:
                status = str(answer.json()["status"])
            counts[status] = counts.get(status, 0) + 1
    return counts


async def settle(
    client: httpx.AsyncClient, apis: dict[str, str], accepted: list[str], limit: float
) -> dict[str, Any]:
    """Wait (bounded) until the last accepted transfer is final on every node; the summary."""
    last = accepted[-1] if accepted else None
    deadline = time.monotonic() + limit
    while last is not None and time.monotonic() < deadline:
        counts = await confirmed(client, list(apis.values())[-1], [last])
        if counts.get("final"):
            break
        await asyncio.sleep(0.5)  # polling with a deadline
    statuses = await poll(client, apis)
    final = min((s["final_height"] for s in statuses.values()), default=0)
    per_node = {
        name: await confirmed(client, apis[name], accepted)
        for name in (next(iter(apis)), list(apis)[-1])
    }
    refused = {
        name: sum(s.get("rejected_txs", {}).values())
        for name, s in statuses.items()
        if s["role"] == "producer"
    }
    return {
        "heights": {name: s["height"] for name, s in statuses.items()},
        "final_height": final,
        "agree_at_final": await agreement(client, apis, final) if final else 0,
        "nodes": len(apis),
        "answering": len(statuses),
        "confirmed": per_node,
        "producers_refused": refused,
        "blocks_refused": refused_blocks(statuses),
    }


def refused_blocks(statuses: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Blocks refused by all the nodes together, by reason."""
    total: dict[str, int] = {}
    for s in statuses.values():
        for reason, count in s.get("rejected_blocks", {}).items():
            total[reason] = total.get(reason, 0) + int(count)
    return total


def report(load: Load, summary: dict[str, Any], seconds: float) -> None:
    console.print()
    console.print(
        f"[bold]load[/]: {load.sent} transfers in {seconds:.0f} s to {PRODUCERS} producers; "
        f"{len(load.accepted)} accepted, {load.forged} forged of which "
        f"{load.forged_refused} refused (bad_signature), other refusals "
        f"{ {k: v for k, v in load.refused.items() if k != 'bad_signature'} }, "
        f"{load.errors} errors"
    )
    console.print(
        f"[bold]chain[/]: final height {summary['final_height']} on every node; "
        f"{summary['agree_at_final']}/{summary['nodes']} nodes hold the same block there; "
        f"blocks refused anywhere: {summary['blocks_refused']}"
    )
    for name, counts in summary["confirmed"].items():
        console.print(f"  accepted transfers on {name}: {counts}")
    console.print(f"  transactions refused by each producer: {summary['producers_refused']}")
    facts = {
        "sent": load.sent, "accepted": len(load.accepted), "forged": load.forged,
        "forged_refused": load.forged_refused, "load_errors": load.errors, **summary,
    }  # fmt: skip
    print("SUMMARY " + json.dumps(facts), flush=True)  # one line, for scripts and the test


async def demo(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="hp2p-chain-demo-"))
    procs = ProcessGroup(workdir, DEADLINE)
    homs = start_homs(workdir)
    try:
        chain = workdir / "chain"
        # the first block waits until the producers and the bridge are up: the SubMesh then
        # carries every block, and a full node gets the whole chain from it
        init = [sys.executable, "-m", "hp2p", "chain", "init", "--dir", str(chain)]
        init += ["--producers", str(PRODUCERS), "--accounts", str(args.accounts)]
        init += ["--interval", str(args.interval), "--finality", "2"]
        init += ["--start-in", str(args.start_in)]
        made = await asyncio.create_subprocess_exec(*init, stdout=asyncio.subprocess.DEVNULL)
        if await made.wait() != 0:
            raise SystemExit("hp2p chain init failed")
        genesis = Genesis.load(chain / "genesis.json")
        accounts = [
            SigningKey.load(chain / f"account-{k}.key") for k in range(1, args.accounts + 1)
        ]
        console.print(
            f"[bold]HOMS[/] {homs.url}   chain {genesis.chain_id}, {PRODUCERS} producers, "
            f"{args.nodes} full nodes, a block every {args.interval:g} s; logs in {workdir}"
        )
        with console.status("starting producers, bridge and full nodes"):
            apis = await start_chain(procs, homs.url, chain, args.nodes)
        wait = genesis.timestamp - time.time()
        if wait > 0:
            console.print(f"everything is up; the first block is due in {wait:.0f} s")
        producers = [apis[f"p{k}"] for k in range(1, PRODUCERS + 1)]
        load = Load(genesis.chain_id, accounts, producers)
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.sleep(max(0.0, wait))  # pacing: transfers from the first slot on
            started = time.monotonic()
            sending = asyncio.create_task(load.run(client, args.rate, args.seconds))
            with Live(console=console, refresh_per_second=2) as live:
                while not sending.done():
                    statuses = await poll(client, apis)
                    live.update(view(statuses, load, time.monotonic() - started))
                    await asyncio.wait({sending}, timeout=1.0)
                await sending
                summary = await settle(client, apis, load.accepted, args.interval * 8 + 10)
                live.update(view(await poll(client, apis), load, time.monotonic() - started))
        report(load, summary, args.seconds)
    finally:
        with console.status("stopping every process"):
            await procs.stop()
            homs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="full nodes (default 20)")
    parser.add_argument("--rate", type=float, default=40.0, help="transfers per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between blocks")
    parser.add_argument("--accounts", type=int, default=20, help="funded sending accounts")
    parser.add_argument(
        "--start-in", type=float, default=20.0,
        help="seconds before the first block: time to start the first producer and the bridge",
    )  # fmt: skip
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(demo(args))


if __name__ == "__main__":
    main()
