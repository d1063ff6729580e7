"""What a producer and a full node share: the ledger, its store, counters and new heads.

:class:`ChainService` is the one place where bytes from the network or the API meet the rules:
it decodes (bounded, :mod:`hp2p.apps.chain.model`), hands the result to the sans-IO
:class:`~hp2p.apps.chain.ledger.Ledger`, counts every refusal by its reason, writes the blocks
that became final to the :class:`~hp2p.apps.chain.store.ChainStore`, and tells the ``WS
/heads`` listeners about each new head. The overlay shells (:mod:`hp2p.apps.chain.node`) only
move bytes in and out.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hp2p.apps.chain.ledger import BlockRejectedError, Ledger
from hp2p.apps.chain.model import Block, ChainFormatError, Transaction, decode_block, decode_tx
from hp2p.apps.chain.state import Genesis, TxRejectedError
from hp2p.apps.chain.store import ChainStore, replay
from hp2p.apps.chain.views import block_json, head_json
from hp2p.trust.keys import SigningKey

__all__ = [
    "BLOCK_APP_ID",
    "TX_APP_ID",
    "ChainService",
    "HeadListener",
    "NotBroadcastError",
]

#: The app-ids of the two kinds of CoreTree broadcast (the bridge selects the blocks).
TX_APP_ID = "hp2p-chain-tx"
BLOCK_APP_ID = "hp2p-chain-block"

#: New heads queued per ``WS /heads`` listener before the oldest is dropped, and listeners.
HEAD_QUEUE = 64
MAX_LISTENERS = 64

_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


class NotBroadcastError(Exception):
    """A valid transaction the overlay could not take now (the peer is not attached)."""


class HeadListener:
    """A bounded queue of new heads (JSON); a slow reader loses the oldest ones."""

    def __init__(self, close: Callable[[HeadListener], None]) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(HEAD_QUEUE)
        self.dropped = 0
        self._close = close

    def put(self, head: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(head)

    def close(self) -> None:
        self._close(self)


class ChainService:
    """One node's chain: the ledger, the store behind it, counters and head listeners.

    ``clock`` gives unix seconds (block timestamps are wall-clock time on every node).
    """

    def __init__(
        self,
        genesis: Genesis,
        store: ChainStore,
        *,
        role: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.genesis = genesis
        self.ledger = Ledger(genesis)
        self.store = store
        self.role = role
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()  # decode failures, tx and block
        self.listeners: list[HeadListener] = []
        self.head_changed = asyncio.Event()
        self.replayed = 0
        #: The highest height this node ever signed (kept in the store): a producer restarted
        #: before its last block became final must not sign a second block at that height.
        self.signed = 0

    async def start(self) -> None:
        """Open the store and replay its final blocks through the ledger (validated again)."""
        await self.store.open(self.genesis.hash)
        self.replayed = await replay(self.store, self.ledger, self.clock)
        self.signed = await self.store.signed()

    async def close(self) -> None:
        await self.store.close()

    # === inputs ==================================================================================
    def submit(self, tx: Transaction) -> None:
        """A transaction from the API: admitted to the mempool or :class:`TxRejectedError`."""
        self.counters["tx_submitted"] += 1
        self.ledger.receive_tx(tx)

    def tx_bytes(self, data: bytes) -> Transaction | None:
        """A transaction broadcast by another producer: validated here too; None if refused."""
        self.counters["tx_received"] += 1
        try:
            tx = decode_tx(data)
            self.ledger.receive_tx(tx)
        except ChainFormatError:
            self.malformed["tx"] += 1
            return None
        except TxRejectedError:
            return None  # counted by reason in the ledger / mempool
        return tx

    async def block_bytes(self, data: bytes) -> bool:
        """A block from the overlay: decoded, validated, stored; whether it was taken."""
        self.counters["blocks_received"] += 1
        try:
            block = decode_block(data)
        except ChainFormatError:
            self.malformed["block"] += 1
            return False
        if block.height <= self.ledger.final_height and (
            block.hash in self.ledger.blocks or await self.store.has_block(block.hash)
        ):
            self.counters["blocks_known"] += 1  # a sync brings back what we stored
            return False
        head = self.ledger.head
        try:
            self.ledger.receive_block(block, self.clock())
        except BlockRejectedError:
            return False  # counted by reason in the ledger
        await self._after(head)
        return True

    async def produce(self, key: SigningKey) -> Block | None:
        """A block if ``key``'s turn has come (stored and announced), else None."""
        head = self.ledger.head
        if self.ledger.height + 1 <= self.signed:
            return None  # signed at this height before a restart: never twice
        block = self.ledger.produce(key, self.clock())
        if block is not None:
            self.signed = block.height
            await self.store.set_signed(block.height)  # before anyone can see the block
            self.counters["blocks_produced"] += 1
            await self._after(head)
        return block

    async def _after(self, old_head: str) -> None:
        """Persist what became final; tell the listeners when the head moved."""
        await self.store.add_final(self.ledger.take_finalized())
        if self.ledger.head != old_head:
            self.counters["heads"] += 1
            head = head_json(self.ledger.head_block.block, self.ledger.final_height)
            for listener in self.listeners:
                listener.put(head)
            self.head_changed.set()

    def listen(self) -> HeadListener | None:
        """A new ``WS /heads`` listener, or None when there are too many."""
        if len(self.listeners) >= MAX_LISTENERS:
            return None
        listener = HeadListener(self.listeners.remove)
        self.listeners.append(listener)
        return listener

    # === reading =================================================================================
    async def tx_status(self, tx_hash: str) -> dict[str, Any]:
        status, height = self.ledger.tx_status(tx_hash)
        if status == "unknown":
            height = await self.store.tx_height(tx_hash)
            if height is not None:
                status = "final"
        return {"hash": tx_hash, "status": status, "height": height}

    def account(self, address: str) -> dict[str, Any]:
        """Balance and next nonce at the head; ``ValueError`` for a malformed address."""
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"{address[:60]!r} is not an address (0x and 40 lower-case hex)")
        balance, nonce = self.ledger.state().get(address)
        pending = len(self.ledger.mempool.by_sender.get(address, {}))
        return {
            "address": address,
            "balance": balance,
            "nonce": nonce,
            "pending": pending,
            "height": self.ledger.height,
        }

    async def block(self, ref: str) -> dict[str, Any] | None:
        """The block at a height (digits) or with a hash (64 hex), from the ledger or store."""
        ledger = self.ledger
        if ref.isdigit() and len(ref) < 19:
            height = int(ref)
            block = ledger.block_at(height)
            if block is None and height <= ledger.final_height:
                block = await self.store.block(height=height)
            if block is None:
                return None
            return block_json(block, final=height <= ledger.final_height)
        if not re.fullmatch(r"[0-9a-f]{64}", ref):
            raise ValueError("a block is named by its height or its 64-hex-digit hash")
        stored = ledger.blocks.get(ref)
        if stored is not None:
            on_best = ledger.by_height.get(stored.height) == ref
            final = stored.final or (on_best and stored.height <= ledger.final_height)
            return block_json(stored.block, final=final)
        found = await self.store.block(digest=ref)
        return block_json(found, final=True) if found is not None else None

    def head(self) -> dict[str, Any]:
        return head_json(self.ledger.head_block.block, self.ledger.final_height)

    def status(self) -> dict[str, Any]:
        ledger = self.ledger
        rejected_txs = Counter(ledger.mempool.rejected)
        rejected_blocks: Counter[str] = Counter()
        for reason, count in ledger.rejected.items():
            if reason.startswith("tx_"):
                rejected_txs[reason[3:]] += count
            else:
                rejected_blocks[reason] += count
        if self.malformed["tx"]:
            rejected_txs["malformed"] += self.malformed["tx"]
        if self.malformed["block"]:
            rejected_blocks["malformed"] += self.malformed["block"]
        return {
            "role": self.role,
            "chain_id": self.genesis.chain_id,
            "genesis": self.genesis.hash,
            "height": ledger.height,
            "head": ledger.head,
            "final_height": ledger.final_height,
            "mempool": len(ledger.mempool),
            "orphans": len(ledger.orphans),
            "equivocations": len(ledger.evidence),
            "replayed": self.replayed,
            "rejected_txs": dict(rejected_txs),
            "rejected_blocks": dict(rejected_blocks),
            "counters": dict(self.counters),
        }
