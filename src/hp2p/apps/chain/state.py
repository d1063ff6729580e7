"""Account state (balances and nonces), the genesis that starts it, and transaction rules.

State is a plain mapping address → (balance, nonce). Blocks that are not final yet may still be
replaced by another branch, so each keeps its own :class:`AccountState`; a child copies only the
accounts its transactions touch (``overlay``), which keeps a fork cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from hp2p.apps.chain.model import MAX_AMOUNT, MAX_BLOCK_TXS, Transaction, address_of
from hp2p.trust.keys import parse_public_key, public_key_text

__all__ = ["AccountState", "Genesis", "GenesisError", "TxRejectedError"]


class TxRejectedError(ValueError):
    """A transaction the state refuses; ``reason`` is a short code, ``str(err)`` the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class GenesisError(ValueError):
    """A genesis file that cannot start a chain; ``str(err)`` says what to fix."""


@dataclass(frozen=True)
class Genesis:
    """The chain's first state and rules, the same file on every node."""

    chain_id: str
    producers: tuple[bytes, ...]  # Ed25519 public keys, in rotation order
    balances: Mapping[str, int]
    timestamp: float
    interval: float = 2.0  # seconds between blocks
    finality_depth: int = 3  # a block is final when this many blocks build on it
    max_block_txs: int = 2000

    def __post_init__(self) -> None:
        if not self.producers:
            raise GenesisError("the genesis names no producers")
        if len(set(self.producers)) != len(self.producers):
            raise GenesisError("a producer is named twice in the genesis")
        if self.interval <= 0 or self.finality_depth < 1 or self.max_block_txs < 1:
            raise GenesisError("interval must be > 0, finality_depth and max_block_txs >= 1")
        if self.max_block_txs > MAX_BLOCK_TXS:
            raise GenesisError(
                f"max_block_txs may be at most {MAX_BLOCK_TXS} (what a node decodes)"
            )
        for address, amount in self.balances.items():
            if not (isinstance(amount, int) and 0 <= amount <= MAX_AMOUNT):
                raise GenesisError(f"balance of {address} must be an integer 0..2**62")

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def producer_for(self, height: int, round_: int) -> bytes:
        """The producer of ``height`` in ``round_`` (round 0: the scheduled one)."""
        return self.producers[(height - 1 + round_) % len(self.producers)]

    def state(self) -> AccountState:
        return AccountState({a: (b, 0) for a, b in self.balances.items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "producers": [public_key_text(p) for p in self.producers],
            "balances": dict(sorted(self.balances.items())),
            "timestamp": self.timestamp,
            "interval": self.interval,
            "finality_depth": self.finality_depth,
            "max_block_txs": self.max_block_txs,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Genesis:
        try:
            return cls(
                chain_id=str(doc["chain_id"]),
                producers=tuple(parse_public_key(p) for p in doc["producers"]),
                balances={str(a): int(b) for a, b in doc["balances"].items()},
                timestamp=float(doc["timestamp"]),
                interval=float(doc.get("interval", 2.0)),
                finality_depth=int(doc.get("finality_depth", 3)),
                max_block_txs=int(doc.get("max_block_txs", 2000)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, GenesisError):
                raise
            raise GenesisError(f"the genesis is not valid: {exc!r}") from None

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GenesisError(f"cannot read the genesis file {path}: {exc}") from None
        return cls.from_json(doc)


@dataclass
class AccountState:
    """Balances and nonces; a child state reads through to its parent until it writes."""

    accounts: dict[str, tuple[int, int]] = field(default_factory=dict)
    parent: AccountState | None = None

    def get(self, address: str) -> tuple[int, int]:
        state: AccountState | None = self
        while state is not None:
            found = state.accounts.get(address)
            if found is not None:
                return found
            state = state.parent
        return (0, 0)

    def balance(self, address: str) -> int:
        return self.get(address)[0]

    def nonce(self, address: str) -> int:
        return self.get(address)[1]

    def child(self) -> AccountState:
        return AccountState({}, self)

    def flatten(self) -> AccountState:
        """The same state with no parent (for a final block: its ancestors can go)."""
        return AccountState(dict(self.items()))

    def items(self) -> Iterator[tuple[str, tuple[int, int]]]:
        merged: dict[str, tuple[int, int]] = {}
        chain: list[AccountState] = []
        state: AccountState | None = self
        while state is not None:
            chain.append(state)
            state = state.parent
        for level in reversed(chain):
            merged.update(level.accounts)
        return iter(sorted(merged.items()))

    def check(self, tx: Transaction) -> None:
        """Raise :class:`TxRejectedError` unless ``tx`` applies to this state now."""
        balance, nonce = self.get(tx.origin)
        if tx.nonce < nonce:
            raise TxRejectedError("replayed", f"nonce {tx.nonce} already used (next is {nonce})")
        if tx.nonce > nonce:
            raise TxRejectedError("nonce_gap", f"nonce {tx.nonce} is ahead of the next ({nonce})")
        if tx.amount + tx.fee > balance:
            raise TxRejectedError(
                "overspend", f"amount + fee {tx.amount + tx.fee} exceeds the balance {balance}"
            )

    def apply(self, tx: Transaction, producer: str) -> None:
        """Check and apply ``tx``; the fee goes to ``producer``'s address."""
        self.check(tx)
        balance, nonce = self.get(tx.origin)
        self.accounts[tx.origin] = (balance - tx.amount - tx.fee, nonce + 1)
        to_balance, to_nonce = self.get(tx.to)
        self.accounts[tx.to] = (min(to_balance + tx.amount, MAX_AMOUNT), to_nonce)
        if tx.fee:
            fee_balance, fee_nonce = self.get(producer)
            self.accounts[producer] = (min(fee_balance + tx.fee, MAX_AMOUNT), fee_nonce)

    def root(self) -> str:
        """One hash over every account, sorted: equal states have equal roots on every node."""
        digest = hashlib.sha256(b"hp2p-chain-state/1")
        for address, (balance, nonce) in self.items():
            if balance or nonce:
                digest.update(_state_encoder.encode((address, balance, nonce)))
        return digest.hexdigest()


_state_encoder = msgspec.msgpack.Encoder()


def producer_address(public: bytes) -> str:
    return address_of(public)
