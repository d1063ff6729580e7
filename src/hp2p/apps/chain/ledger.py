"""The chain's rules in one sans-IO object: block validation, fork choice, finality, production.

A node feeds it what arrives (``receive_tx``, ``receive_block``) and the time (``now``); it
answers with what it accepted and why it refused the rest, and tells a producer when its slot
has come (``due``/``produce``). It does no I/O, so the simulator, tests and the network node
run the same rules.

**Proof of authority.** The genesis fixes the producers and the interval. Height h is due at
``parent.timestamp + interval``; its scheduled producer is ``producers[(h-1) % P]`` (round 0).
When the slot is missed, after each further interval the next producer in turn may take it
(round 1, 2 …), so a dead producer costs one interval, never the chain. The heaviest branch
wins: greater height, then lower round sum (scheduled producers preferred), then lower hash.

**Equivocation.** Two different blocks signed by one producer for one height are proof of
misbehaviour: the second is refused, the evidence kept (bounded), and the producer's later
blocks on that height are refused too.

**Finality.** A block with ``finality_depth`` blocks on top of it on the best branch is final:
its state is flattened and every branch that does not contain it is pruned.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from hp2p.apps.chain.mempool import Mempool
from hp2p.apps.chain.model import (
    MAX_BLOCK_BYTES,
    Block,
    BlockHeader,
    ChainFormatError,
    Transaction,
    address_of,
    encode_tx,
    merkle_root,
    sign_header,
)
from hp2p.apps.chain.state import AccountState, Genesis, TxRejectedError
from hp2p.trust.keys import SigningKey, Verifier

__all__ = ["BlockRejectedError", "Ledger", "Stored"]

#: How far ahead of our clock a block's timestamp may be (seconds).
MAX_DRIFT = 2.0
#: Blocks kept whose parent is unknown yet (a sync fills the gap), and equivocation records.
MAX_ORPHANS = 256
MAX_EVIDENCE = 1024
#: Room kept in a block for everything but its transactions (header, signature, framing).
HEADER_ROOM = 4096


class BlockRejectedError(ValueError):
    """A block the rules refuse; ``reason`` is a short code, ``str(err)`` the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class Stored:
    """A valid block with the state after it and its branch's weight."""

    block: Block
    state: AccountState
    round_sum: int
    final: bool = False

    @property
    def height(self) -> int:
        return self.block.height

    def weight(self) -> tuple[int, int, str]:
        """Larger is better: height, then fewer skipped slots, then (reversed) hash order."""
        inverted = "".join("0123456789abcdef"[15 - int(c, 16)] for c in self.block.hash)
        return (self.block.height, -self.round_sum, inverted)


@dataclass
class Ledger:
    genesis: Genesis
    verifier: Verifier = field(default_factory=Verifier)
    mempool: Mempool = field(default_factory=Mempool)
    blocks: dict[str, Stored] = field(default_factory=dict)
    by_height: dict[int, str] = field(default_factory=dict)  # best branch
    head: str = ""
    final_height: int = 0
    orphans: OrderedDict[str, Block] = field(default_factory=OrderedDict)
    signed_at: dict[tuple[bytes, int], str] = field(default_factory=dict)
    evidence: OrderedDict[tuple[bytes, int], tuple[str, str]] = field(default_factory=OrderedDict)
    rejected: Counter[str] = field(default_factory=Counter)
    tx_index: dict[str, int] = field(default_factory=dict)  # tx hash → height, best branch
    finalized: list[Block] = field(default_factory=list)
    #: Largest encoded block :meth:`produce` makes: the node sets the largest message its
    #: overlay carries (an R2 link's payload limit and send queue), so a block always fits.
    max_block_bytes: int = MAX_BLOCK_BYTES

    def __post_init__(self) -> None:
        if not self.blocks:
            state = self.genesis.state()
            header = BlockHeader(
                chain_id=self.genesis.chain_id,
                height=0,
                parent="",
                tx_root=merkle_root([]),
                state_root=state.root(),
                producer=bytes(32),
                round=0,
                timestamp=self.genesis.timestamp,
            )
            genesis_block = Block(header, [])
            self.blocks[genesis_block.hash] = Stored(genesis_block, state, 0, final=True)
            self.by_height[0] = genesis_block.hash
            self.head = genesis_block.hash

    # === reading =================================================================================
    @property
    def head_block(self) -> Stored:
        return self.blocks[self.head]

    @property
    def height(self) -> int:
        return self.head_block.height

    def state(self) -> AccountState:
        return self.head_block.state

    def block_at(self, height: int) -> Block | None:
        digest = self.by_height.get(height)
        return self.blocks[digest].block if digest else None

    def tx_status(self, tx_hash: str) -> tuple[str, int | None]:
        """``pending``, ``in_block`` or ``final`` with the height, or ``unknown`` (which the
        node's store answers for transactions in older final blocks)."""
        height = self.tx_index.get(tx_hash)
        if height is not None:
            return ("final" if height <= self.final_height else "in_block", height)
        if tx_hash in self.mempool:
            return ("pending", None)
        return ("unknown", None)

    # === transactions ============================================================================
    def receive_tx(self, tx: Transaction) -> None:
        """Admit ``tx`` to the mempool or raise :class:`TxRejectedError` (counted)."""
        if tx.chain_id != self.genesis.chain_id:
            self.rejected["tx_wrong_chain"] += 1
            raise TxRejectedError("wrong_chain", f"transaction for chain {tx.chain_id!r}")
        if tx.hash in self.tx_index:
            self.mempool.rejected["replayed"] += 1
            raise TxRejectedError("replayed", "this transaction is already in a block")
        if not tx.signature_ok(self.verifier):
            self.mempool.rejected["bad_signature"] += 1
            raise TxRejectedError("bad_signature", "the signature does not match the sender's key")
        self.mempool.add(tx, self.state())

    # === blocks ==================================================================================
    def receive_block(self, block: Block, now: float) -> list[Stored]:
        """Validate and store ``block`` (and any orphans it completes); the stored ones.

        Raises :class:`BlockRejectedError` (counted by reason) for a block that breaks a rule.
        A block whose parent is unknown is kept as an orphan (bounded) and gives ``[]``.
        """
        try:
            return self._receive(block, now)
        except BlockRejectedError as exc:
            self.rejected[exc.reason] += 1
            raise

    def _receive(self, block: Block, now: float) -> list[Stored]:
        digest = block.hash
        if digest in self.blocks:
            return []
        parent = self.blocks.get(block.header.parent)
        if parent is None:
            self._check_alone(block, now)
            if block.height <= self.final_height:
                raise BlockRejectedError("below_final", "the block forks below a final block")
            self.orphans[digest] = block
            while len(self.orphans) > MAX_ORPHANS:
                self.orphans.popitem(last=False)
            return []
        stored = [self._attach(block, parent, now)]
        # orphans waiting for this block (bounded: each pass removes one orphan)
        progress = True
        while progress:
            progress = False
            for orphan_hash, orphan in list(self.orphans.items()):
                holder = self.blocks.get(orphan.header.parent)
                if holder is None:
                    continue
                del self.orphans[orphan_hash]
                progress = True
                try:
                    stored.append(self._attach(orphan, holder, now))
                except BlockRejectedError as exc:
                    self.rejected[exc.reason] += 1
        return stored

    def _check_alone(self, block: Block, now: float) -> None:
        """What can be checked without the parent: chain, signature, producer turn, roots."""
        header = block.header
        if header.chain_id != self.genesis.chain_id:
            raise BlockRejectedError("wrong_chain", f"block for chain {header.chain_id!r}")
        if header.height < 1:
            raise BlockRejectedError("bad_height", "only the genesis has height 0")
        if header.producer != self.genesis.producer_for(header.height, header.round):
            raise BlockRejectedError(
                "wrong_producer",
                f"height {header.height} round {header.round} belongs to another producer",
            )
        if header.timestamp > now + MAX_DRIFT:
            raise BlockRejectedError("future", f"timestamp {header.timestamp - now:.1f} s ahead")
        if len(block.txs) > self.genesis.max_block_txs:
            raise BlockRejectedError("too_many_txs", f"{len(block.txs)} transactions in one block")
        if not header.signature_ok(self.verifier):
            raise BlockRejectedError("bad_signature", "the producer's signature does not verify")
        if merkle_root([t.hash for t in block.txs]) != header.tx_root:
            raise BlockRejectedError("bad_tx_root", "the transactions do not match the tx root")
        key = (header.producer, header.height)
        earlier = self.signed_at.get(key)
        if earlier is not None and earlier != block.hash:
            self.evidence[key] = (earlier, block.hash)
            while len(self.evidence) > MAX_EVIDENCE:
                self.evidence.popitem(last=False)
            raise BlockRejectedError(
                "equivocation",
                f"producer {address_of(header.producer)} signed two blocks at height "
                f"{header.height}",
            )

    def _attach(self, block: Block, parent: Stored, now: float) -> Stored:
        header = block.header
        self._check_alone(block, now)
        if header.height != parent.height + 1:
            raise BlockRejectedError("bad_height", "height is not the parent's + 1")
        earliest = parent.block.header.timestamp + self.genesis.interval * (1 + header.round)
        if header.timestamp + 1e-6 < earliest:
            raise BlockRejectedError(
                "early", f"round {header.round} may not start before {earliest:.3f}"
            )
        state = parent.state.child()
        seen: set[str] = set()
        producer = address_of(header.producer)
        for tx in block.txs:
            if (
                tx.hash in seen
                or not tx.signature_ok(self.verifier)
                or tx.chain_id != header.chain_id
            ):
                raise BlockRejectedError(
                    "bad_tx", f"transaction {tx.hash[:16]} is invalid or repeated"
                )
            seen.add(tx.hash)
            try:
                state.apply(tx, producer)
            except TxRejectedError as exc:
                raise BlockRejectedError("bad_tx", f"transaction {tx.hash[:16]}: {exc}") from None
        if state.root() != header.state_root:
            raise BlockRejectedError("bad_state_root", "the state after the block has another root")
        self.signed_at[(header.producer, header.height)] = block.hash
        stored = Stored(block, state, parent.round_sum + header.round)
        self.blocks[block.hash] = stored
        if stored.weight() > self.head_block.weight():
            self._set_head(stored)
        return stored

    def _set_head(self, stored: Stored) -> None:
        """Make ``stored`` the head: rewrite the best branch's height index and tx index."""
        digest = stored.block.hash
        branch: list[Stored] = []
        cursor: Stored | None = stored
        while cursor is not None and self.by_height.get(cursor.height) != cursor.block.hash:
            branch.append(cursor)
            cursor = self.blocks.get(cursor.block.header.parent)
        fork_height = cursor.height if cursor is not None else 0
        abandoned: list[Transaction] = []
        for height in sorted(h for h in self.by_height if h > fork_height):
            old = self.blocks.get(self.by_height.pop(height))
            if old is not None:
                for tx in old.block.txs:
                    self.tx_index.pop(tx.hash, None)
                    abandoned.append(tx)
        for item in reversed(branch):
            self.by_height[item.height] = item.block.hash
            for tx in item.block.txs:
                self.tx_index[tx.hash] = item.height
                self.mempool.remove(tx)
        self.head = digest
        self.mempool.prune(stored.state)
        self._readmit(abandoned, stored.state)
        self._finalize()

    def _readmit(self, txs: list[Transaction], state: AccountState) -> None:
        """Put the transactions of a branch that lost back in the mempool, when they still
        apply: a switch of branch must not drop a payment the new branch does not hold."""
        for tx in txs:
            if tx.hash not in self.tx_index:
                with contextlib.suppress(TxRejectedError):
                    self.mempool.readmit(tx, state)

    def _finalize(self) -> None:
        """Mark the blocks ``finality_depth`` below the head final and drop what they exclude.

        The newest final block's state is flattened and its children re-pointed at the flat
        copy, so no state chain grows longer than the non-final part of the tree.
        """
        target = self.height - self.genesis.finality_depth
        if target <= self.final_height:
            return
        for height in range(self.final_height + 1, target + 1):
            newly = self.blocks[self.by_height[height]]
            newly.final = True
            self.finalized.append(newly.block)
        self.final_height = target
        final_hash = self.by_height[target]
        final = self.blocks[final_hash]
        old_state, final.state = final.state, final.state.flatten()
        for digest, stored in list(self.blocks.items()):
            if stored.height <= target and digest != final_hash:
                del self.blocks[digest]  # final ancestors and every excluded branch
            elif stored.state.parent is old_state:
                stored.state.parent = final.state
        for key in [k for k in self.signed_at if k[1] <= target]:
            del self.signed_at[key]
        for height in [h for h in self.by_height if h < target]:
            del self.by_height[height]
        for tx_hash in [t for t, h in self.tx_index.items() if h < target]:
            del self.tx_index[tx_hash]

    def take_finalized(self) -> list[Block]:
        """Blocks that became final since the last call, oldest first, for the node to store.

        The ledger keeps only the newest final block and what is above it; older blocks, and
        their transactions' status, are the node's store's to answer for.
        """
        blocks, self.finalized = self.finalized, []
        return blocks

    # === production ==============================================================================
    def due(self, key: SigningKey, now: float) -> int | None:
        """The round in which ``key`` may produce the next block now, or None."""
        head = self.head_block.block.header
        height = head.height + 1
        start = max(head.timestamp, self.genesis.timestamp) + self.genesis.interval
        if now < start:
            return None
        elapsed_rounds = int((now - start) // self.genesis.interval)
        for round_ in range(elapsed_rounds + 1):
            if round_ >= len(self.genesis.producers) * 4:
                break
            if self.genesis.producer_for(height, round_) == key.public:
                round_start = start + round_ * self.genesis.interval
                if now >= round_start and (key.public, height) not in self.signed_at:
                    return round_
        return None

    def produce(self, key: SigningKey, now: float) -> Block | None:
        """A new signed block on the head if ``key``'s turn has come, stored; else None."""
        round_ = self.due(key, now)
        if round_ is None:
            return None
        head = self.head_block
        txs = self._fit(self.mempool.select(head.state, self.genesis.max_block_txs))
        state = head.state.child()
        producer = address_of(key.public)
        for tx in txs:
            state.apply(tx, producer)
        header = BlockHeader(
            chain_id=self.genesis.chain_id,
            height=head.height + 1,
            parent=head.block.hash,
            tx_root=merkle_root([t.hash for t in txs]),
            state_root=state.root(),
            producer=key.public,
            round=round_,
            timestamp=max(now, head.block.header.timestamp + self.genesis.interval * (1 + round_)),
        )
        block = Block(sign_header(header, key), txs)
        try:
            self._receive(block, now)
        except (BlockRejectedError, ChainFormatError):  # our own rules refuse it: produce nothing
            return None
        return block

    def _fit(self, txs: list[Transaction]) -> list[Transaction]:
        """The longest prefix of ``txs`` whose block encodes within ``max_block_bytes``.

        ``select`` orders transactions so that every prefix applies, so cutting the tail keeps
        the block valid; what is cut waits in the mempool for the next block.
        """
        budget = self.max_block_bytes - HEADER_ROOM
        for count, tx in enumerate(txs):
            budget -= len(encode_tx(tx))
            if budget < 0:
                return txs[:count]
        return txs
