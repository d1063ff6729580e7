"""Run one HOMS operation as one database transaction, on SQLite or PostgreSQL.

Every store operation is written once, as a plain function of a synchronous SQLAlchemy
``Connection``; a runner executes it inside a transaction and hands the result back to the
event loop. Why not write the operations against ``AsyncConnection`` directly? Because
with aiosqlite every statement costs several thread hops (cursor, execute, fetch, close), and
a join of seven statements then spends ~10 ms hopping between threads. Here:

* **SQLite**: the whole transaction runs in one dedicated writer thread (SQLite has a single
  writer anyway), so a join costs one hop. Reads run in a small pool of reader threads and,
  under WAL, never wait for the writer. The writer opens ``BEGIN IMMEDIATE`` so that a
  transaction never has to upgrade its lock half-way, which is what causes "database is
  locked" errors with several connections or processes.
* **PostgreSQL**: asyncpg under SQLAlchemy's async engine; the same function runs through
  ``AsyncConnection.run_sync`` (greenlet), with row locks doing the serialising.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs published
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hp2p.homs.db import DatabaseTarget

T = TypeVar("T")
Work = Callable[[Connection], T]


class TransactionRunner(Protocol):
    """Executes ``work(connection)`` inside one transaction and returns its result."""

    async def write(self, work: Callable[[Connection], T]) -> T: ...

    async def read(self, work: Callable[[Connection], T]) -> T: ...

    async def close(self) -> None: ...


#: WAL: readers never block the writer. synchronous=NORMAL is durable across a process crash
#: (kill -9), the failure the HOMS must survive; a power cut may lose the last commits, which
#: FULL would keep at ~4 ms of fsync per join.
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
)


def _sqlite_engine(target: DatabaseTarget, begin_sql: str, pool_size: int) -> Engine:
    url = target.url.set(drivername="sqlite+pysqlite")
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        # Connections move between the threads of our executor, one thread at a time.
        connect_args={"check_same_thread": False},
    )

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN is ours (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin_sql)

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine


class SqliteRunner:
    """One writer thread with one connection; a few reader threads with their own.

    The writer thread also owns a plain ``sqlite3`` connection for :meth:`write_raw`, the hot
    join path (``hp2p.homs.join``) that skips SQLAlchemy's per-statement overhead.
    Both of the writer's connections are used by that one thread, one transaction at a time,
    so they never wait on each other.
    """

    def __init__(self, target: DatabaseTarget, readers: int = 2) -> None:
        self._path = target.url.database or ""
        self._writer = _sqlite_engine(target, "BEGIN IMMEDIATE", 1)
        self._reader = _sqlite_engine(target, "BEGIN", readers)
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="hp2p-homs-sqlite-w")
        self._read_pool = ThreadPoolExecutor(readers, thread_name_prefix="hp2p-homs-sqlite-r")
        self._raw: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], Any]] = []
        self._flushing = False

    def _raw_connection(self) -> sqlite3.Connection:
        if self._raw is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            self._raw = conn
        return self._raw

    def _run_batch(
        self, batch: list[tuple[Callable[[sqlite3.Connection], Any], Any]]
    ) -> list[tuple[bool, Any]]:
        """One transaction for a batch of works, each in its own savepoint (group commit).

        A work that raises is rolled back to its savepoint alone; the others commit together.
        If the COMMIT itself fails, the exception reaches every caller (nothing was applied).
        """
        conn = self._raw_connection()
        conn.execute("BEGIN IMMEDIATE")
        results: list[tuple[bool, Any]] = []
        try:
            for work, _future in batch:
                conn.execute("SAVEPOINT hp2p_work")
                try:
                    results.append((True, work(conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO hp2p_work")
                    results.append((False, exc))
                conn.execute("RELEASE hp2p_work")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def write_raw(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the writer's plain ``sqlite3`` connection, in one transaction.

        Group commit: works submitted while the writer thread is busy are run together in
        the next transaction, so concurrent joins share one thread hop and one COMMIT
        (with 8 concurrent clients the hop, not the SQL, was most of a join's cost). Each
        work still succeeds or fails alone (savepoints); its caller resumes after COMMIT.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if not self._flushing:
            self._flushing = True
            self._flush(loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        done = self._write_pool.submit(self._run_batch, batch)
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._settle, loop, batch, f))

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Callable[[sqlite3.Connection], Any], Any]],
        done: Future[list[tuple[bool, Any]]],
    ) -> None:
        error = done.exception()
        results = done.result() if error is None else [(False, error)] * len(batch)
        for (_work, future), (ok, value) in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled; the work itself was applied
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._pending:
            self._flush(loop)
        else:
            self._flushing = False

    @staticmethod
    def _in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
        with engine.begin() as conn:
            return work(conn)

    async def write(self, work: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._write_pool, self._in_transaction, self._writer, work
        )

    async def read(self, work: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, self._in_transaction, self._reader, work)

    def _close_raw(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        # Dispose in the threads' executor so no connection is closed while in use.
        await loop.run_in_executor(self._write_pool, self._writer.dispose)
        await loop.run_in_executor(self._write_pool, self._close_raw)
        await loop.run_in_executor(self._read_pool, self._reader.dispose)
        self._write_pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)


class PostgresRunner:
    """asyncpg through SQLAlchemy's async engine; the work runs via ``run_sync``."""

    def __init__(self, target: DatabaseTarget, pool_size: int = 10) -> None:
        self._engine: AsyncEngine = create_async_engine(
            target.url, pool_size=pool_size, max_overflow=pool_size
        )
        self._dsn = target.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool_size = pool_size
        self._pool: Any = None  # asyncpg.Pool (untyped), made on first use
        self._pool_lock = asyncio.Lock()

    async def write(self, work: Callable[[Connection], T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    read = write

    async def write_raw(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``await work(connection)`` on a plain asyncpg connection, in one transaction
        (the join hot path, ``hp2p.homs.join``)."""
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        server_settings=JOIN_SESSION,
                        reset=_keep_session,
                    )
        async with self._pool.acquire() as conn, conn.transaction():
            return await work(conn)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self._engine.dispose()


#: Joins commit without waiting for the WAL flush, as SQLite's ``synchronous=NORMAL``:
#: durable across a crash of the HOMS process (the failure it must survive); a crash of the
#: PostgreSQL server itself may lose the last fraction of a second of joins, never corrupt
#: anything. Waiting for the flush kept each overlay's ticket row locked for a disk sync per
#: join (~3 ms here), which serialised every join into one overlay behind it. It is a
#: connection *startup* setting on purpose: the pool's reset on release (``RESET ALL``) undoes
#: a ``SET`` made after connecting, so a ``SET`` in ``init`` held for the first join only.
JOIN_SESSION: dict[str, str] = {"synchronous_commit": "off"}


async def _keep_session(conn: Any) -> None:
    """Release without asyncpg's reset round trip (advisory unlocks, ``CLOSE ALL``,
    ``UNLISTEN *``, ``RESET ALL``): this pool runs only join transactions, which take no
    advisory lock, open no cursor, listen to nothing and set nothing, and always end in a
    commit or a rollback. One round trip fewer per join."""


def open_runner(target: DatabaseTarget) -> SqliteRunner | PostgresRunner:
    if target.is_sqlite:
        return SqliteRunner(target)
    return PostgresRunner(target)
