"""The chain's rules (hp2p.apps.chain, sans-IO): transactions, blocks, PoA, forks, finality."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hp2p.apps.chain.ledger import BlockRejectedError, Ledger
from hp2p.apps.chain.model import (
    Block,
    ChainFormatError,
    Transaction,
    address_of,
    decode_block,
    decode_tx,
    encode_block,
    encode_tx,
    merkle_root,
    sign_header,
    sign_tx,
)
from hp2p.apps.chain.state import Genesis, GenesisError, TxRejectedError
from hp2p.trust.keys import SigningKey

T0 = 1_800_000_000.0


def key(n: int) -> SigningKey:
    return SigningKey.from_seed(bytes([n]) * 32)


PRODUCERS = [key(1), key(2), key(3), key(4)]
ALICE, BOB, CAROL = key(10), key(11), key(12)


def genesis(**kw: object) -> Genesis:
    args: dict[str, object] = {
        "chain_id": "test",
        "producers": tuple(k.public for k in PRODUCERS),
        "balances": {address_of(ALICE.public): 1000, address_of(BOB.public): 50},
        "timestamp": T0,
        "interval": 1.0,
        "finality_depth": 2,
    }
    args.update(kw)
    return Genesis(**args)  # type: ignore[arg-type]


def transfer(
    sender: SigningKey, to: SigningKey, amount: int, nonce: int, fee: int = 1
) -> Transaction:
    tx = Transaction("test", sender.public, address_of(to.public), amount, fee, nonce)
    return sign_tx(tx, sender)


def run_slots(
    ledgers: list[Ledger],
    start: float,
    slots: int,
    skip: frozenset[int] = frozenset(),
    made: list[Block] | None = None,
) -> float:
    """Each slot: whichever producer is due makes a block; every ledger receives it."""
    now = start
    for _ in range(slots):
        now += 1.0
        for n, producer in enumerate(PRODUCERS):
            if n in skip:
                continue
            block = ledgers[0].produce(producer, now)
            if block is not None:
                if made is not None:
                    made.append(block)
                for other in ledgers[1:]:
                    other.receive_block(block, now)
                break
    return now


def test_producers_take_turns_and_every_node_agrees() -> None:
    a, b = Ledger(genesis()), Ledger(genesis())
    a.receive_tx(transfer(ALICE, CAROL, 100, 0))
    run_slots([a, b], T0, 6)
    assert a.height == b.height == 6
    assert a.head == b.head
    assert a.state().root() == b.state().root()
    producers = [a.block_at(h) for h in range(5, 7)]
    assert [blk.header.producer for blk in producers if blk] == [
        PRODUCERS[0].public,
        PRODUCERS[1].public,
    ]
    assert b.state().balance(address_of(CAROL.public)) == 100
    assert b.state().balance(address_of(ALICE.public)) == 899
    assert b.state().nonce(address_of(ALICE.public)) == 1


def test_a_transaction_goes_pending_in_block_final() -> None:
    a = Ledger(genesis())
    tx = transfer(ALICE, BOB, 10, 0)
    a.receive_tx(tx)
    assert a.tx_status(tx.hash) == ("pending", None)
    now = run_slots([a], T0, 1)
    assert a.tx_status(tx.hash) == ("in_block", 1)
    run_slots([a], now, 2)
    assert a.tx_status(tx.hash) == ("final", 1)
    finalized = a.take_finalized()
    assert [blk.height for blk in finalized] == [1]
    assert a.take_finalized() == []


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: transfer(ALICE, BOB, 2000, 0), "overspend"),
        (lambda: transfer(ALICE, BOB, 1, 40), "nonce_gap"),
        (lambda: transfer(CAROL, BOB, 1, 0), "overspend"),
    ],
)
def test_bad_transactions_are_refused_with_a_reason(make: object, reason: str) -> None:
    a = Ledger(genesis())
    with pytest.raises(TxRejectedError) as info:
        a.receive_tx(make())  # type: ignore[operator]
    assert info.value.reason == reason
    assert len(a.mempool) == 0


def test_forged_and_replayed_transactions_are_refused() -> None:
    a = Ledger(genesis())
    tx = transfer(ALICE, BOB, 10, 0)
    forged = msgspec.structs.replace(tx, amount=999)
    with pytest.raises(TxRejectedError) as info:
        a.receive_tx(forged)
    assert info.value.reason == "bad_signature"
    a.receive_tx(tx)
    with pytest.raises(TxRejectedError) as info:
        a.receive_tx(tx)
    assert info.value.reason == "duplicate"
    run_slots([a], T0, 1)
    with pytest.raises(TxRejectedError) as info:
        a.receive_tx(tx)
    assert info.value.reason == "replayed"
    other_chain = sign_tx(msgspec.structs.replace(transfer(ALICE, BOB, 1, 1), chain_id="x"), ALICE)
    with pytest.raises(TxRejectedError) as info:
        a.receive_tx(other_chain)
    assert info.value.reason == "wrong_chain"


def _next_block(a: Ledger, producer: SigningKey, now: float, **changes: object) -> Block:
    """A valid block from a fresh copy of ``a``'s rules, then header fields replaced."""
    block = a.produce(producer, now)
    assert block is not None
    header = msgspec.structs.replace(block.header, **changes)
    return Block(sign_header(header, producer), block.txs)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("tx_root", "0" * 64, "bad_tx_root"),
        ("state_root", "1" * 64, "bad_state_root"),
        ("timestamp", T0 + 100.0, "future"),
        ("round", 1, "wrong_producer"),
    ],
)
def test_bad_blocks_are_refused_and_counted(field: str, value: object, reason: str) -> None:
    maker, checker = Ledger(genesis()), Ledger(genesis())
    maker.receive_tx(transfer(ALICE, BOB, 5, 0))
    bad = _next_block(maker, PRODUCERS[0], T0 + 1.0, **{field: value})
    with pytest.raises(BlockRejectedError) as info:
        checker.receive_block(bad, T0 + 1.0)
    assert info.value.reason == reason
    assert checker.rejected[reason] == 1
    assert checker.height == 0


def test_a_block_from_the_wrong_producer_or_with_a_bad_signature_is_refused() -> None:
    maker, checker = Ledger(genesis()), Ledger(genesis())
    block = maker.produce(PRODUCERS[0], T0 + 1.0)
    assert block is not None
    stolen = Block(sign_header(block.header, PRODUCERS[2]), block.txs)
    with pytest.raises(BlockRejectedError) as info:
        checker.receive_block(stolen, T0 + 1.0)
    assert info.value.reason == "wrong_producer"
    garbled = Block(msgspec.structs.replace(block.header, signature=bytes(64)), block.txs)
    with pytest.raises(BlockRejectedError) as info:
        checker.receive_block(garbled, T0 + 1.0)
    assert info.value.reason == "bad_signature"


def test_a_missed_slot_is_taken_by_the_next_producer() -> None:
    a, b = Ledger(genesis()), Ledger(genesis())
    made: list[Block] = []
    run_slots([a, b], T0, 8, skip=frozenset({1}), made=made)  # producer 2 is dead
    taken = [blk for blk in made if blk.header.round == 1]
    assert taken
    assert all(blk.header.producer == PRODUCERS[2].public for blk in taken)
    assert all(blk.header.producer != PRODUCERS[1].public for blk in made)
    assert [blk.height for blk in made] == list(range(1, len(made) + 1))
    assert len(made) >= 6  # a dead producer costs one interval per rotation, not the chain
    assert b.head == a.head
    assert not b.rejected


def test_equivocation_is_detected_and_refused() -> None:
    maker, checker = Ledger(genesis()), Ledger(genesis())
    first = maker.produce(PRODUCERS[0], T0 + 1.0)
    assert first is not None
    checker.receive_block(first, T0 + 1.0)
    twin = _next_block(Ledger(genesis()), PRODUCERS[0], T0 + 1.0, timestamp=T0 + 1.5)
    with pytest.raises(BlockRejectedError) as info:
        checker.receive_block(twin, T0 + 1.5)
    assert info.value.reason == "equivocation"
    assert (PRODUCERS[0].public, 1) in checker.evidence
    assert checker.head == first.hash


def test_an_orphan_waits_for_its_parent() -> None:
    maker, late = Ledger(genesis()), Ledger(genesis())
    run_slots([maker], T0, 3)
    blocks = [maker.block_at(h) for h in (1, 2, 3)]
    assert all(blocks)
    assert late.receive_block(blocks[2], T0 + 3) == []  # type: ignore[arg-type]
    assert late.receive_block(blocks[1], T0 + 3) == []  # type: ignore[arg-type]
    stored = late.receive_block(blocks[0], T0 + 3)  # type: ignore[arg-type]
    assert [s.height for s in stored] == [1, 2, 3]
    assert late.head == maker.head


def test_the_heavier_branch_wins_and_finality_prunes_the_other() -> None:
    a = Ledger(genesis())
    # round-1 block at height 1 (producer 2 took the slot of producer 1) …
    late = Ledger(genesis())
    alt = late.produce(PRODUCERS[1], T0 + 2.0)
    assert alt is not None
    assert alt.header.round == 1
    a.receive_block(alt, T0 + 2.0)
    assert a.head == alt.hash
    # … loses against the scheduled producer's block at the same height
    main = Ledger(genesis()).produce(PRODUCERS[0], T0 + 2.0)
    assert main is not None
    assert main.header.round == 0
    a.receive_block(main, T0 + 2.0)
    assert a.head == main.hash
    run_slots([a], T0 + 2.0, 3)
    assert a.final_height >= 1
    assert alt.hash not in a.blocks


def test_a_branch_switch_puts_the_losing_branch_transactions_back_in_the_mempool() -> None:
    a = Ledger(genesis())
    tx = transfer(ALICE, CAROL, 7, 0)
    # producer 2 takes the slot of producer 1 (round 1) with the transaction in it …
    late = Ledger(genesis())
    late.receive_tx(tx)
    alt = late.produce(PRODUCERS[1], T0 + 2.0)
    assert alt is not None
    assert alt.txs == [tx]
    a.receive_block(alt, T0 + 2.0)
    assert a.tx_status(tx.hash) == ("in_block", 1)
    # … and loses against the scheduled producer's empty block: the payment waits again
    main = Ledger(genesis()).produce(PRODUCERS[0], T0 + 2.0)
    assert main is not None
    a.receive_block(main, T0 + 2.0)
    assert a.head == main.hash
    assert a.tx_status(tx.hash) == ("pending", None)
    assert not a.mempool.rejected
    nxt = a.produce(PRODUCERS[1], T0 + 3.0)
    assert nxt is not None
    assert nxt.txs == [tx]


def test_the_mempool_is_bounded_and_a_full_pool_wants_a_higher_fee() -> None:
    a = Ledger(genesis())
    a.mempool.max_txs = 2
    a.receive_tx(transfer(ALICE, BOB, 1, 0, fee=1))
    a.receive_tx(transfer(ALICE, BOB, 1, 1, fee=1))
    with pytest.raises(TxRejectedError) as info:
        a.receive_tx(transfer(BOB, ALICE, 1, 0, fee=1))
    assert info.value.reason == "pool_full"
    a.receive_tx(transfer(BOB, ALICE, 1, 0, fee=5))
    assert len(a.mempool) == 2


def test_merkle_roots_differ_for_different_lists() -> None:
    h = [bytes([i]) * 32 for i in range(3)]
    roots = {merkle_root([x.hex() for x in h[:n]]) for n in range(4)}
    assert len(roots) == 4
    assert merkle_root([h[0].hex(), h[1].hex(), h[2].hex()]) != merkle_root(
        [h[0].hex(), h[1].hex(), h[2].hex(), h[2].hex()]
    )


def test_round_trip_and_decoders_refuse_garbage() -> None:
    tx = transfer(ALICE, BOB, 3, 0)
    assert decode_tx(encode_tx(tx)) == tx
    a = Ledger(genesis())
    a.receive_tx(tx)
    block = a.produce(PRODUCERS[0], T0 + 1.0)
    assert block is not None
    assert decode_block(encode_block(block)) == block
    with pytest.raises(ChainFormatError):
        decode_tx(b"\x00" * 2000)
    with pytest.raises(ChainFormatError):
        decode_tx(encode_tx(msgspec.structs.replace(tx, to="0xnothex")))
    with pytest.raises(ChainFormatError):
        decode_tx(encode_tx(msgspec.structs.replace(tx, amount=-1)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decoders_never_raise_anything_but_format_errors(data: bytes) -> None:
    for decode in (decode_tx, decode_block):
        with contextlib.suppress(ChainFormatError):
            decode(data)


def test_a_bad_genesis_says_what_to_fix() -> None:
    with pytest.raises(GenesisError, match="no producers"):
        genesis(producers=())
    with pytest.raises(GenesisError, match="not valid"):
        Genesis.from_json({"chain_id": "x"})
    g = genesis()
    assert Genesis.from_json(g.to_json()) == g
