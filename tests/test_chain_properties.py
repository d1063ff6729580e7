"""Property tests of the chain's rules (hypothesis, sans-IO): random transfers applied through
the ledger give the same state everywhere, and no mutation of a valid block is ever taken."""

from __future__ import annotations

import contextlib
import random

import msgspec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hp2p.apps.chain.ledger import BlockRejectedError, Ledger
from hp2p.apps.chain.model import (
    Block,
    ChainFormatError,
    Transaction,
    address_of,
    decode_block,
    encode_block,
    merkle_root,
    sign_header,
    sign_tx,
)
from hp2p.apps.chain.state import Genesis, TxRejectedError
from hp2p.trust.keys import SigningKey

T0 = 1_800_000_000.0
PRODUCERS = [SigningKey.from_seed(bytes([n]) * 32) for n in range(1, 5)]
ACCOUNTS = [SigningKey.from_seed(bytes([n]) * 32) for n in range(20, 25)]
START = 100
GENESIS = Genesis(
    chain_id="prop",
    producers=tuple(k.public for k in PRODUCERS),
    balances={address_of(k.public): START for k in ACCOUNTS},
    timestamp=T0,
    interval=1.0,
    finality_depth=2,
)
#: Every reason a block may be refused for: anything else is a bug.
REASONS = {
    "wrong_chain", "bad_height", "wrong_producer", "future", "too_many_txs", "bad_signature",
    "bad_tx_root", "equivocation", "early", "bad_tx", "bad_state_root", "below_final",
}  # fmt: skip

# (sender, recipient, amount, fee): amounts up to the whole balance, so some overspend
transfers = st.lists(
    st.tuples(
        st.integers(0, len(ACCOUNTS) - 1),
        st.integers(0, len(ACCOUNTS) - 1),
        st.integers(0, 60),
        st.integers(0, 3),
    ),
    max_size=40,
)


def make_txs(plan: list[tuple[int, int, int, int]]) -> list[Transaction]:
    """Signed transfers, each sender's nonces counted from 0 in plan order."""
    nonces = [0] * len(ACCOUNTS)
    txs = []
    for sender, to, amount, fee in plan:
        key = ACCOUNTS[sender]
        tx = Transaction("prop", key.public, address_of(ACCOUNTS[to].public), amount, fee,
                         nonces[sender])  # fmt: skip
        nonces[sender] += 1
        txs.append(sign_tx(tx, key))
    return txs


def make_chain(txs: list[Transaction], slots: int) -> tuple[Ledger, list[Block]]:
    """A producer-side ledger fed ``txs`` (refusals ignored) and the blocks it made."""
    ledger = Ledger(GENESIS)
    for tx in txs:
        with contextlib.suppress(TxRejectedError):
            ledger.receive_tx(tx)
    blocks: list[Block] = []
    now = T0
    for _ in range(slots):
        now += 1.0
        for producer in PRODUCERS:
            block = ledger.produce(producer, now)
            if block is not None:
                blocks.append(block)
                break
    return ledger, blocks


def balances_by_hand(blocks: list[Block]) -> dict[str, int]:
    """The balances the blocks imply, computed without the ledger's state code."""
    balances = {address_of(k.public): START for k in ACCOUNTS}
    for block in blocks:
        producer = address_of(block.header.producer)
        for tx in block.txs:
            balances[tx.origin] -= tx.amount + tx.fee
            balances[tx.to] = balances.get(tx.to, 0) + tx.amount
            balances[producer] = balances.get(producer, 0) + tx.fee
    return balances


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transfers, st.integers(1, 6), st.randoms(use_true_random=False))
def test_random_transfers_give_one_state_on_every_ledger(
    plan: list[tuple[int, int, int, int]], slots: int, rnd: random.Random
) -> None:
    producer, blocks = make_chain(make_txs(plan), slots)
    in_order, shuffled = Ledger(GENESIS), Ledger(GENESIS)
    now = T0 + slots + 1
    for block in blocks:
        in_order.receive_block(block, now)
    scrambled = list(blocks)
    rnd.shuffle(scrambled)  # orphans first: they wait for their parents
    for block in scrambled:
        shuffled.receive_block(block, now)
    assert in_order.head == shuffled.head == producer.head
    roots = {ledger.state().root() for ledger in (producer, in_order, shuffled)}
    assert len(roots) == 1
    expected = balances_by_hand(blocks)
    for address, balance in expected.items():
        assert balance >= 0, "no block may overspend"
        assert in_order.state().get(address)[0] == balance
    assert sum(expected.values()) == START * len(ACCOUNTS), "transfers and fees move value only"
    included = [tx for block in blocks for tx in block.txs]
    assert len({tx.hash for tx in included}) == len(included), "no transaction twice"


def valid_block() -> Block:
    """Block 1 with three transfers, made by the first producer."""
    txs = make_txs([(0, 1, 10, 1), (1, 2, 5, 2), (0, 3, 7, 0)])
    _, blocks = make_chain(txs, 1)
    assert len(blocks) == 1
    assert len(blocks[0].txs) == 3
    return blocks[0]


BLOCK = valid_block()
HEADER_FIELDS = ["chain_id", "height", "parent", "tx_root", "state_root", "producer", "round",
                 "timestamp", "signature"]  # fmt: skip


def header_value(name: str) -> st.SearchStrategy[object]:
    hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
    return {
        "chain_id": st.sampled_from(["", "prop2", "other"]),
        "height": st.integers(0, 10),
        "parent": hexes,
        "tx_root": hexes,
        "state_root": hexes,
        "producer": st.sampled_from([k.public for k in PRODUCERS + ACCOUNTS]),
        "round": st.integers(0, 8),
        "timestamp": st.one_of(
            st.floats(T0 - 1000, T0 + 0.99), st.floats(T0 + 4.01, T0 + 10_000)
        ),  # too early for round 0, or too far ahead of the receiver's clock
        "signature": st.binary(min_size=64, max_size=64),
    }[name]


@st.composite
def mutations(draw: st.DrawFn) -> Block:
    """A block differing from BLOCK in its header, its transactions or its bytes."""
    kind = draw(st.sampled_from(["header", "resigned", "txs", "tx_field", "bytes"]))
    header, txs = BLOCK.header, list(BLOCK.txs)
    if kind in ("header", "resigned"):
        names = HEADER_FIELDS[:-1] if kind == "resigned" else HEADER_FIELDS
        if kind == "resigned":  # signed by the right key: the content itself must be refused
            names = [n for n in names if n != "parent"]  # a new parent is a valid orphan
        name = draw(st.sampled_from(names))
        header = msgspec.structs.replace(header, **{name: draw(header_value(name))})
        if kind == "resigned":
            header = sign_header(header, PRODUCERS[0])
    elif kind == "txs":
        op = draw(st.sampled_from(["drop", "repeat", "swap", "foreign"]))
        if op == "drop":
            del txs[draw(st.integers(0, len(txs) - 1))]
        elif op == "repeat":
            txs.append(txs[draw(st.integers(0, len(txs) - 1))])
        elif op == "swap":  # one sender's two transfers: nonce 1 before nonce 0
            a, b = (k for k, t in enumerate(txs) if t.sender == ACCOUNTS[0].public)
            txs[a], txs[b] = txs[b], txs[a]
        else:
            txs.append(make_txs([(4, 0, 1, 0)])[0])
        if draw(st.booleans()):  # a matching tx root and signature: the state must catch it
            header = sign_header(
                msgspec.structs.replace(header, tx_root=merkle_root([t.hash for t in txs])),
                PRODUCERS[0],
            )
    elif kind == "tx_field":
        k = draw(st.integers(0, len(txs) - 1))
        field_name = draw(st.sampled_from(["amount", "fee", "nonce", "to", "signature"]))
        value: object = {
            "amount": draw(st.integers(0, 10_000)),
            "fee": draw(st.integers(0, 10_000)),
            "nonce": draw(st.integers(0, 5)),
            "to": address_of(PRODUCERS[1].public),
            "signature": draw(st.binary(min_size=64, max_size=64)),
        }[field_name]
        txs[k] = msgspec.structs.replace(txs[k], **{field_name: value})
    else:
        data = bytearray(encode_block(BLOCK))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        try:
            return decode_block(bytes(data))
        except ChainFormatError:
            return BLOCK  # refused by the decoder: nothing to give the ledger
    return Block(header, txs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_a_mutated_block_is_refused_with_a_reason_never_taken(block: Block) -> None:
    assume(encode_block(block) != encode_block(BLOCK))
    ledger = Ledger(GENESIS)
    reason = ""
    try:
        ledger.receive_block(block, T0 + 1.5)
    except BlockRejectedError as exc:
        reason, detail = exc.reason, str(exc)
    except ChainFormatError:
        reason, detail = "format", "refused by the format checks (sizes, hex fields)"
    assert reason, f"a mutated block was not refused: {block.header}"
    assert reason in REASONS | {"format"}, reason
    assert detail, "a reason comes with a detail"
    if reason != "format":
        assert ledger.rejected[reason] == 1, "counted"
    assert ledger.height == 0
    assert not ledger.orphans
    # the original is still taken afterwards: refusing the copy did not poison the ledger
    ledger.receive_block(BLOCK, T0 + 1.5)
    assert ledger.height == 1
