"""The chain node's parts without a network: the SQLite store and its replay, the service that
decodes and counts, the HTTP API (in process, over ASGI), JSON transactions, slot timing and
the block size cap."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.apps.chain.api import NotAProducerError, build_app
from hp2p.apps.chain.ledger import HEADER_ROOM, Ledger
from hp2p.apps.chain.model import (
    Block,
    ChainFormatError,
    Transaction,
    address_of,
    encode_block,
    encode_tx,
)
from hp2p.apps.chain.node import next_slot
from hp2p.apps.chain.service import ChainService
from hp2p.apps.chain.state import Genesis, GenesisError
from hp2p.apps.chain.store import ChainStore, StoreError
from hp2p.apps.chain.views import tx_from_json, tx_json
from hp2p.trust.keys import SigningKey
from test_chain_ledger import ALICE, BOB, CAROL, PRODUCERS, T0, genesis, run_slots, transfer


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def service(path: Path, clock: Clock, gen: Genesis | None = None) -> ChainService:
    svc = ChainService(gen or genesis(), ChainStore(str(path)), role="full", clock=clock)
    await svc.start()
    return svc


def chain_of(slots: int, txs: list[Transaction] | None = None) -> tuple[list[Block], float]:
    """The blocks a producer makes in ``slots`` slots (transactions admitted first), and the
    time after the last; ``blocks[h - 1]`` is height h."""
    ledger = Ledger(genesis())
    for tx in txs or []:
        ledger.receive_tx(tx)
    made: list[Block] = []
    now = run_slots([ledger], T0, slots, made=made)
    return made, now


async def test_final_blocks_are_stored_and_a_restart_replays_them(tmp_path: Path) -> None:
    tx = transfer(ALICE, BOB, 10, 0)
    source, now = chain_of(8, [tx])
    clock = Clock(now)
    svc = await service(tmp_path / "n.db", clock)
    for block in source:
        assert await svc.block_bytes(encode_block(block))
    assert svc.ledger.final_height == 6
    assert await svc.store.top() == 6
    await svc.close()

    again = await service(tmp_path / "n.db", clock)
    assert again.replayed == 6
    assert again.ledger.height == 6
    assert again.ledger.state().balance(address_of(BOB.public)) == 60
    # the restarted node's sync brings back what it stored: skipped, not refused
    assert not await again.block_bytes(encode_block(source[0]))
    assert again.counters["blocks_known"] == 1
    assert again.status()["rejected_blocks"] == {}
    for block in source[6:]:
        assert await again.block_bytes(encode_block(block))
    assert again.ledger.head == source[-1].hash
    await again.close()


async def test_pruned_heights_are_answered_from_the_store(tmp_path: Path) -> None:
    tx = transfer(ALICE, CAROL, 5, 0)
    source, now = chain_of(12, [tx])
    svc = await service(tmp_path / "n.db", Clock(now))
    for block in source:
        assert await svc.block_bytes(encode_block(block))
    assert svc.ledger.tx_status(tx.hash) == ("unknown", None)  # the ledger pruned it
    assert await svc.tx_status(tx.hash) == {"hash": tx.hash, "status": "final", "height": 1}
    old = await svc.block("1")
    assert old is not None
    assert old["final"] is True
    assert [t["hash"] for t in old["txs"]] == [tx.hash]
    by_hash = await svc.block(old["hash"])
    assert by_hash is not None
    assert by_hash["height"] == 1
    assert await svc.block("999") is None
    with pytest.raises(ValueError, match="height or its 64"):
        await svc.block("nonsense")
    await svc.close()


async def test_a_database_of_another_genesis_or_edited_is_refused(tmp_path: Path) -> None:
    source, now = chain_of(6)
    svc = await service(tmp_path / "n.db", Clock(now))
    for block in source:
        assert await svc.block_bytes(encode_block(block))
    await svc.close()
    other = genesis(chain_id="other")
    with pytest.raises(StoreError, match="another genesis"):
        await service(tmp_path / "n.db", Clock(now), other)
    db = sqlite3.connect(tmp_path / "n.db")
    with db:
        db.execute("UPDATE blocks SET data = ? WHERE height = 2", (b"\x93garbage",))
    db.close()
    with pytest.raises(StoreError, match="stored block 2"):
        await service(tmp_path / "n.db", Clock(now))


async def test_network_bytes_are_decoded_validated_and_counted(tmp_path: Path) -> None:
    svc = await service(tmp_path / "n.db", Clock(T0 + 1))
    assert svc.tx_bytes(b"\x01\x02") is None
    assert not await svc.block_bytes(b"\xc1")
    forged = msgspec.structs.replace(transfer(ALICE, BOB, 1, 0), signature=bytes(64))
    assert svc.tx_bytes(encode_tx(forged)) is None
    good = transfer(ALICE, BOB, 1, 0)
    assert svc.tx_bytes(encode_tx(good)) == good
    status = svc.status()
    assert status["rejected_txs"] == {"malformed": 1, "bad_signature": 1}
    assert status["rejected_blocks"] == {"malformed": 1}
    assert status["mempool"] == 1
    await svc.close()


async def api_client(tmp_path: Path, submit: Any) -> tuple[httpx.AsyncClient, ChainService]:
    svc = await service(tmp_path / "n.db", Clock(T0 + 1))
    app = build_app(svc, submit, lambda: {"peer_id": "p"})
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1"), svc


async def test_the_api_answers_with_codes_and_reasons(tmp_path: Path) -> None:
    sent: list[Transaction] = []

    def submit(tx: Transaction) -> None:
        svc.submit(tx)
        sent.append(tx)

    client, svc = await api_client(tmp_path, submit)
    async with client:
        tx = transfer(ALICE, BOB, 10, 0)
        answer = await client.post("/tx", content=encode_tx(tx))
        assert answer.status_code == 202
        assert answer.json() == {"hash": tx.hash, "status": "pending"}
        assert sent == [tx]
        as_json = await client.post("/tx", json=tx_json(transfer(ALICE, BOB, 10, 1)))
        assert as_json.status_code == 202, as_json.text
        assert (await client.get(f"/tx/{tx.hash}")).json()["status"] == "pending"
        refused = await client.post("/tx", content=encode_tx(transfer(BOB, ALICE, 99, 0)))
        assert refused.status_code == 422
        assert refused.json()["detail"]["reason"] == "overspend"
        assert (await client.post("/tx", content=b"junk")).status_code == 400
        account = (await client.get(f"/account/{address_of(ALICE.public)}")).json()
        assert account["balance"] == 1000
        assert account["pending"] == 2
        assert (await client.get("/account/0xnope")).status_code == 400
        assert (await client.get("/block/0")).json()["height"] == 0
        assert (await client.get("/block/5")).status_code == 404
        assert (await client.get("/head")).json()["height"] == 0
        status = (await client.get("/status")).json()
        assert status["rejected_txs"]["overspend"] == 1
        assert status["peer"] == {"peer_id": "p"}
    await svc.close()


async def test_a_full_node_sends_transactions_to_a_producer(tmp_path: Path) -> None:
    def refuse(tx: Transaction) -> None:
        raise NotAProducerError("submit to a producer")

    client, svc = await api_client(tmp_path, refuse)
    async with client:
        answer = await client.post("/tx", content=encode_tx(transfer(ALICE, BOB, 1, 0)))
        assert answer.status_code == 409
        assert answer.json()["detail"]["reason"] == "not_producer"
    await svc.close()


def test_a_json_transaction_is_checked_like_a_msgpack_one() -> None:
    tx = transfer(ALICE, BOB, 3, 0)
    assert tx_from_json(tx_json(tx)) == tx
    for broken, why in [
        ({**tx_json(tx), "amount": "3"}, "integers"),
        ({**tx_json(tx), "sender": "zz"}, "hex"),
        ({**tx_json(tx), "to": "0x12"}, "not an address"),
        ({k: v for k, v in tx_json(tx).items() if k != "fee"}, "'fee'"),
        ([1, 2], "an object"),
    ]:
        with pytest.raises(ChainFormatError, match=why):
            tx_from_json(broken)


@given(
    st.dictionaries(
        st.sampled_from(list(tx_json(transfer(ALICE, BOB, 1, 0)))),
        st.from_type(type(None)) | st.integers() | st.text(max_size=80),
    )
)
def test_json_transactions_never_raise_anything_but_format_errors(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ChainFormatError):
        tx_from_json(doc)


def test_a_producer_wakes_at_its_next_round() -> None:
    ledger = Ledger(genesis())
    first, second = PRODUCERS[0], PRODUCERS[1]
    assert next_slot(ledger, first, T0) == T0 + 1.0  # height 1, round 0
    assert next_slot(ledger, second, T0) == T0 + 2.0  # round 1 if the first misses it
    block = ledger.produce(first, T0 + 1.0)
    assert block is not None
    assert next_slot(ledger, first, T0 + 1.0) == T0 + 1.0 + 4.0  # its round 3 at height 2
    assert next_slot(ledger, second, T0 + 1.0) == T0 + 2.0
    assert next_slot(ledger, CAROL, T0) is None  # not a producer


def test_a_produced_block_fits_the_overlay_message_limit() -> None:
    txs = [transfer(ALICE, BOB, 1, n) for n in range(10)]
    size = len(encode_tx(txs[0]))
    ledger = Ledger(genesis(), max_block_bytes=HEADER_ROOM + 4 * size)
    for tx in txs:
        ledger.receive_tx(tx)
    block = ledger.produce(PRODUCERS[0], T0 + 1.0)
    assert block is not None
    assert len(block.txs) == 4
    assert len(encode_block(block)) <= ledger.max_block_bytes
    assert len(ledger.mempool) == 6  # the rest waits for the next block


def test_a_genesis_cannot_allow_blocks_nodes_cannot_decode() -> None:
    with pytest.raises(GenesisError, match="max_block_txs may be at most"):
        genesis(max_block_txs=10_000)


def test_every_chain_command_has_help_with_examples() -> None:
    from typer.testing import CliRunner

    from hp2p.cli import build_app

    runner = CliRunner()
    app = build_app()
    top = runner.invoke(app, ["chain", "--help"])
    assert top.exit_code == 0
    for name in ("init", "producer", "node", "send", "balance", "watch"):
        assert name in top.output
        shown = runner.invoke(app, ["chain", name, "--help"])
        assert shown.exit_code == 0, shown.output
        assert "Examples" in shown.output, name


def test_init_writes_a_genesis_and_private_keys(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hp2p.cli import build_app

    args = ["chain", "init", "--dir", str(tmp_path), "--producers", "2", "--accounts", "3"]
    args += ["--balance", "70", "--chain-id", "unit", "--start-in", "60"]
    made = CliRunner().invoke(build_app(), args)
    assert made.exit_code == 0, made.output
    loaded = Genesis.load(tmp_path / "genesis.json")
    assert loaded.chain_id == "unit"
    assert len(loaded.producers) == 2
    assert sorted(loaded.balances.values()) == [70, 70, 70]
    assert loaded.timestamp > T0 - 1e9  # unix time, 60 s ahead
    for key in tmp_path.glob("*.key"):
        assert key.stat().st_mode & 0o077 == 0
        assert address_of(SigningKey.load(key).public) in made.output
    # run again: the keys stay, the genesis is rewritten
    again = CliRunner().invoke(build_app(), args)
    assert again.exit_code == 0
    assert Genesis.load(tmp_path / "genesis.json").producers == loaded.producers


async def test_a_restarted_producer_never_signs_a_height_twice(tmp_path: Path) -> None:
    clock = Clock(T0 + 1.0)
    svc = await service(tmp_path / "p.db", clock)
    first = await svc.produce(PRODUCERS[0])
    assert first is not None
    assert first.height == 1
    await svc.close()  # it crashed before block 1 was final: the store holds no block
    again = await service(tmp_path / "p.db", clock)
    assert again.ledger.height == 0
    assert again.signed == 1
    clock.now = T0 + 5.0  # its turn again, on the same parent
    assert await again.produce(PRODUCERS[0]) is None
    assert again.ledger.receive_block(first, clock.now)  # the chain moves on …
    clock.now = T0 + 9.0
    later = await again.produce(PRODUCERS[0])  # … and it signs the next heights again
    assert later is not None
    assert later.height == 2
    await again.close()


@given(st.binary(max_size=2000), st.sampled_from(["application/json", "application/msgpack", ""]))
def test_posted_bodies_never_raise_anything_but_format_errors(body: bytes, kind: str) -> None:
    from hp2p.apps.chain.views import tx_from_body

    with contextlib.suppress(ChainFormatError):
        tx_from_body(body, kind)


def test_deeply_nested_json_is_a_format_error() -> None:
    from hp2p.apps.chain.views import tx_from_body

    with pytest.raises(ChainFormatError):
        tx_from_body(b"[" * 3000, "application/json")


async def test_a_tracing_producer_reports_every_transaction_broadcast_it_gets(
    tmp_path: Path,
) -> None:
    from hp2p.apps.chain.model import encode_tx
    from hp2p.apps.chain.node import ProducerNode
    from hp2p.apps.chain.service import TX_APP_ID
    from hp2p.peer.settings import NodeSettings
    from hp2p.peer.subscription import Delivery

    chain = await service(tmp_path / "p.db", Clock(T0 + 0.5))
    node = ProducerNode(chain, PRODUCERS[0], NodeSettings(homs="http://127.0.0.1:9", create="x"))
    events: list[tuple[str, dict[str, Any]]] = []
    node.on_event = lambda kind, fields: events.append((kind, fields))
    tx = transfer(ALICE, BOB, 5, 0)
    copies = [encode_tx(tx), encode_tx(tx), b"\x93\x01"]  # a duplicate, then garbage
    for seq, data in enumerate(copies):
        await node._received(Delivery("s", seq, data, TX_APP_ID, "application/msgpack"))
    assert events == []  # off by default: no line per transaction
    node.trace_txs = True
    for seq, data in enumerate(copies, 3):
        await node._received(Delivery("s", seq, data, TX_APP_ID, "application/msgpack"))
    assert events == [
        ("tx", {"hash": tx.hash, "taken": False}),  # already in the pool: a duplicate
        ("tx", {"hash": tx.hash, "taken": False}),
        ("tx", {"hash": None, "taken": False}),
    ]
    assert chain.counters["tx_received"] == 6
    await chain.close()
