"""A node's final blocks on disk (SQLite), so that a restarted node keeps its chain.

Only *final* blocks are stored: they can no longer be replaced, so the file is append-only and
never needs a rollback. The ledger keeps the non-final part of the chain in memory and forgets
old final blocks (:meth:`~hp2p.apps.chain.ledger.Ledger.take_finalized`); the store answers for
them (a block by height or hash, the height of a final transaction).

On start the node replays the stored blocks through a fresh ledger from the genesis
(:func:`replay`), so every block is validated again: a file edited by hand, or written for
another genesis, is refused instead of trusted.

SQLite is blocking, so every call runs in one worker thread (``asyncio`` callers await
:class:`ChainStore`'s methods); one thread keeps the writes in order and the connection in
the thread that made it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from hp2p.apps.chain.ledger import BlockRejectedError, Ledger
from hp2p.apps.chain.model import Block, ChainFormatError, decode_block, encode_block

__all__ = ["ChainStore", "StoreError", "replay"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs (hash TEXT PRIMARY KEY, height INTEGER NOT NULL);
"""

#: Blocks read per query while replaying (bounds the memory a replay holds at once).
REPLAY_BATCH = 256


class StoreError(Exception):
    """The database cannot be used for this chain; ``str(err)`` says why and what to do."""


class ChainStore:
    """Final blocks and their transactions in one SQLite file (``":memory:"`` for none)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hp2p-chain-db")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the chain store is closed")
        return self._db

    # === life cycle ==============================================================================
    async def open(self, genesis_hash: str) -> None:
        """Open (or create) the file; refuse one written for another genesis."""
        await self._run(lambda: self._open(genesis_hash))

    def _open(self, genesis_hash: str) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path)
            db.executescript(_SCHEMA)
            db.execute("PRAGMA journal_mode=WAL")
            row = db.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the chain database {self.path}: {exc}") from None
        if row is None:
            db.execute("INSERT INTO meta VALUES ('genesis', ?)", (genesis_hash,))
            db.commit()
        elif row[0] != genesis_hash:
            db.close()
            raise StoreError(
                f"the database {self.path} belongs to another genesis ({row[0][:16]}…); "
                "give another --db or the genesis it was made with"
            )
        self._db = db

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(shut)
        self._pool.shutdown(wait=True)

    # === writing =================================================================================
    async def add_final(self, blocks: list[Block]) -> None:
        """Store final blocks (a block already stored is left as it is)."""
        if blocks:
            rows = [(b.height, b.hash, encode_block(b)) for b in blocks]
            txs = [(t.hash, b.height) for b in blocks for t in b.txs]
            await self._run(lambda: self._add(rows, txs))

    def _add(self, rows: list[tuple[int, str, bytes]], txs: list[tuple[str, int]]) -> None:
        db = self._conn()
        with db:
            db.executemany("INSERT OR IGNORE INTO blocks VALUES (?, ?, ?)", rows)
            db.executemany("INSERT OR IGNORE INTO txs VALUES (?, ?)", txs)

    async def set_signed(self, height: int) -> None:
        """Record that this node's producer key signed a block at ``height`` (durably)."""

        def write() -> None:
            db = self._conn()
            with db:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('signed', ?)", (str(height),))

        await self._run(write)

    async def signed(self) -> int:
        """The highest height this node's producer signed a block at (0: none)."""

        def query() -> int:
            row = self._conn().execute("SELECT value FROM meta WHERE key = 'signed'").fetchone()
            return int(row[0]) if row else 0

        return await self._run(query)

    # === reading =================================================================================
    async def top(self) -> int:
        """The highest stored height (0: none)."""

        def query() -> int:
            row = self._conn().execute("SELECT MAX(height) FROM blocks").fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return await self._run(query)

    async def block(self, height: int | None = None, digest: str | None = None) -> Block | None:
        """The stored block at ``height`` or with hash ``digest`` (None when there is none)."""

        if height is not None:
            sql, arg = "SELECT data FROM blocks WHERE height = ?", str(height)
        else:
            sql, arg = "SELECT data FROM blocks WHERE hash = ?", str(digest)

        def query() -> bytes | None:
            row = self._conn().execute(sql, (int(arg) if height is not None else arg,))
            found = row.fetchone()
            return bytes(found[0]) if found else None

        data = await self._run(query)
        return decode_block(data) if data is not None else None

    async def tx_height(self, tx_hash: str) -> int | None:
        """The height of the final block holding ``tx_hash``, or None."""

        def query() -> int | None:
            row = self._conn().execute("SELECT height FROM txs WHERE hash = ?", (tx_hash,))
            found = row.fetchone()
            return int(found[0]) if found else None

        return await self._run(query)

    async def has_block(self, digest: str) -> bool:
        def query() -> bool:
            row = self._conn().execute("SELECT 1 FROM blocks WHERE hash = ?", (digest,))
            return row.fetchone() is not None

        return await self._run(query)

    async def blocks_from(self, height: int, limit: int = REPLAY_BATCH) -> list[bytes]:
        """Encoded blocks from ``height`` up, at most ``limit``, in height order."""

        def query() -> list[bytes]:
            rows = self._conn().execute(
                "SELECT data FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
                (height, limit),
            )
            return [bytes(r[0]) for r in rows.fetchall()]

        return await self._run(query)


async def replay(store: ChainStore, ledger: Ledger, clock: Callable[[], float] = time.time) -> int:
    """Feed every stored block, oldest first, to ``ledger`` (validated again); the top height.

    Raises :class:`StoreError` when a stored block is malformed, refused by the rules, or
    leaves a gap: the file does not hold this chain.
    """
    height = 1
    while True:
        batch = await store.blocks_from(height)
        if not batch:
            break
        for data in batch:
            try:
                block = decode_block(data)
                ledger.receive_block(block, clock())
            except (ChainFormatError, BlockRejectedError) as exc:
                raise StoreError(
                    f"stored block {height} does not follow the chain ({exc}); the database "
                    f"{store.path} is damaged or for another chain: move it away and resync"
                ) from None
            if ledger.height != block.height:
                raise StoreError(
                    f"stored block {block.height} does not extend height {ledger.height}: "
                    f"{store.path} has a gap; move it away and resync"
                )
            height = block.height + 1
    ledger.take_finalized()  # already stored
    return height - 1
