"""Transactions waiting for a block: bounded, one queue per sender in nonce order.

Anyone may submit, so the pool is bounded in total and per sender, and a transaction enters
only after its signature and its nonce and balance against the head's state were checked
(ahead-of-nonce transactions wait, up to ``max_ahead`` per sender). When the pool is full, a
new transaction must pay a higher fee than the cheapest waiting one, which it then replaces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hp2p.apps.chain.model import Transaction
from hp2p.apps.chain.state import AccountState, TxRejectedError

__all__ = ["Mempool"]


@dataclass
class Mempool:
    max_txs: int = 20_000
    max_per_sender: int = 64
    max_ahead: int = 16
    by_hash: dict[str, Transaction] = field(default_factory=dict)
    by_sender: dict[str, dict[int, Transaction]] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.by_hash)

    def __contains__(self, tx_hash: str) -> bool:
        return tx_hash in self.by_hash

    def add(self, tx: Transaction, state: AccountState) -> None:
        """Admit ``tx`` (its signature already checked) or raise :class:`TxRejectedError`."""
        try:
            self._admit(tx, state)
        except TxRejectedError as exc:
            self.rejected[exc.reason] += 1
            raise

    def _admit(self, tx: Transaction, state: AccountState) -> None:
        if tx.hash in self.by_hash:
            raise TxRejectedError("duplicate", "this transaction is already waiting")
        origin = tx.origin
        queue = self.by_sender.get(origin, {})
        if tx.nonce in queue:
            raise TxRejectedError("duplicate", f"nonce {tx.nonce} of {origin} is already waiting")
        balance, nonce = state.get(origin)
        if tx.nonce < nonce:
            raise TxRejectedError("replayed", f"nonce {tx.nonce} already used (next is {nonce})")
        if tx.nonce > nonce + self.max_ahead:
            raise TxRejectedError(
                "nonce_gap", f"nonce {tx.nonce} is too far ahead (next is {nonce})"
            )
        pending = sum(t.amount + t.fee for t in queue.values())
        if pending + tx.amount + tx.fee > balance:
            raise TxRejectedError(
                "overspend",
                f"amount + fee with the waiting ones ({pending + tx.amount + tx.fee}) exceeds "
                f"the balance {balance}",
            )
        if len(queue) >= self.max_per_sender:
            raise TxRejectedError("sender_full", f"{origin} already has {len(queue)} waiting")
        if len(self.by_hash) >= self.max_txs:
            cheapest = min(self.by_hash.values(), key=lambda t: (t.fee, -t.nonce))
            if cheapest.fee >= tx.fee:
                raise TxRejectedError(
                    "pool_full", "the pool is full; pay a higher fee than its lowest"
                )
            self.remove(cheapest)
        queue[tx.nonce] = tx
        self.by_sender[origin] = queue
        self.by_hash[tx.hash] = tx

    def readmit(self, tx: Transaction, state: AccountState) -> None:
        """Admit a transaction that was in a block of a branch that lost (its signature was
        checked then); a refusal raises :class:`TxRejectedError` but is not counted."""
        self._admit(tx, state)

    def remove(self, tx: Transaction) -> None:
        if self.by_hash.pop(tx.hash, None) is None:
            return
        queue = self.by_sender.get(tx.origin)
        if queue is not None:
            queue.pop(tx.nonce, None)
            if not queue:
                del self.by_sender[tx.origin]

    def select(self, state: AccountState, limit: int) -> list[Transaction]:
        """Up to ``limit`` transactions that apply in order to ``state``, best fees first."""
        chosen: list[Transaction] = []
        work = state.child()
        heads = {s: work.nonce(s) for s in self.by_sender}
        progress = True
        while progress and len(chosen) < limit:
            progress = False
            ready = [
                q[heads[s]] for s, q in self.by_sender.items() if heads[s] in q
            ]  # one per sender, the next nonce
            for tx in sorted(ready, key=lambda t: -t.fee):
                if len(chosen) >= limit:
                    break
                try:
                    work.apply(tx, "0x" + "0" * 40)
                except TxRejectedError:
                    continue
                chosen.append(tx)
                heads[tx.origin] += 1
                progress = True
        return chosen

    def prune(self, state: AccountState) -> int:
        """Drop what a new head made invalid (used nonces); returns how many went."""
        stale = [t for t in self.by_hash.values() if t.nonce < state.nonce(t.origin)]
        for tx in stale:
            self.remove(tx)
        return len(stale)
