"""Several HOMS processes on one PostgreSQL behave as one: LISTEN/NOTIFY fan-out.

Tickets and membership are already shared through the database. What is not is what lives in
a process: the WebSocket registrations and the monitor subscribers. This module carries, over
one PostgreSQL channel:

* every monitoring event published by this instance (so a monitor connected to instance B
  sees a join made on instance A);
* every relay whose ``toid`` is not registered here (the instance holding that socket sends
  it; the others ignore it);
* every signalling ``hello`` (so a newer registration on another instance replaces an older
  one here, as a second hello does within one reference HOMS).

A NOTIFY payload must stay below 8000 bytes; a larger message (an ``update_connection`` of a
well-connected peer, a big SDP) is split into numbered chunks sent in one statement, which
PostgreSQL delivers together and in order, and reassembled by the receivers. Notifications are
sent in batches by one writer task, so a join never waits for them. Each instance ignores its
own notifications.

On SQLite there is one HOMS process, and the in-process hub is all there is to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from typing import Any, Final, Protocol

import asyncpg  # type: ignore[import-untyped]  # no stubs published
import msgspec

from hp2p.homs.monitor import Event, MonitorHub

log = logging.getLogger("hp2p.homs.fanout")

CHANNEL: Final = "hp2p_homs"
#: Characters of JSON per notification; at most 4 UTF-8 bytes each, well below 8000 bytes.
CHUNK_CHARS: Final = 1900
#: Largest message reassembled from chunks (characters); anything bigger is refused.
MAX_MESSAGE_CHARS: Final = 1024 * 1024
#: Messages waiting to be notified; beyond this the HOMS logs what it could not forward.
QUEUE_BOUND: Final = 10_000
BATCH: Final = 256
#: Partly received chunked messages kept at once (a sender that died mid-message).
MAX_PENDING: Final = 64

_NOTIFY = (
    "SELECT pg_notify($1, payload) "
    "FROM unnest($2::text[]) WITH ORDINALITY AS t(payload, n) ORDER BY n"
)


class SignallingTarget(Protocol):
    """What the fan-out hands to this instance's switchboard."""

    def deliver(self, toid: str, text: str) -> bool: ...

    def forget(self, peer_id: str) -> None: ...


class PostgresFanout:
    """The LISTEN/NOTIFY bridge of one HOMS instance."""

    def __init__(self, dsn: str, hub: MonitorHub, *, instance: str | None = None) -> None:
        self.dsn = dsn
        self.hub = hub
        self.instance = instance or uuid.uuid4().hex[:16]
        self.target: SignallingTarget | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_BOUND)
        self._seq = itertools.count(1)
        self._pending: dict[tuple[str, int], list[str | None]] = {}
        self._listener: Any = None  # asyncpg.Connection (untyped)
        self._sender: Any = None
        self._writer: asyncio.Task[None] | None = None
        self._remove_forwarder: Any = None
        self.dropped = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._on_notify)
        self._sender = await asyncpg.connect(self.dsn)
        self._writer = asyncio.create_task(self._write_loop(), name="hp2p-homs-fanout")
        self._remove_forwarder = self.hub.add_forwarder(self._forward_event)

    async def close(self) -> None:
        if self._remove_forwarder is not None:
            self._remove_forwarder()
        if self._writer is not None:
            # Let queued notifications go out (bounded), then stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), timeout=2.0)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for conn in (self._listener, self._sender):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2.0)

    async def _drained(self) -> None:
        await self._queue.join()

    # ------------------------------------------------------------------ outgoing

    def _forward_event(self, event: Event) -> None:
        self._send({"k": "e", "e": event})

    def relay(self, toid: str, text: str) -> None:
        self._send({"k": "r", "to": toid, "m": text})

    def announce_hello(self, peer_id: str) -> None:
        self._send({"k": "h", "p": peer_id})

    def _send(self, body: dict[str, Any]) -> None:
        seq = next(self._seq)
        text = msgspec.json.encode({"s": self.instance, "n": seq, **body}).decode("utf-8")
        if len(text) > MAX_MESSAGE_CHARS:
            log.error("not forwarding a %d-character message to other instances", len(text))
            self.dropped += 1
            return
        if len(text) <= CHUNK_CHARS:
            parts = [text]
        else:
            pieces = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
            parts = [
                f"C|{self.instance}|{seq}|{i}|{len(pieces)}|{piece}"
                for i, piece in enumerate(pieces)
            ]
        if self._queue.qsize() + len(parts) > QUEUE_BOUND:
            self.dropped += 1
            log.error(
                "fan-out queue full (%d): an event/relay did not reach the other HOMS "
                "instances (is PostgreSQL reachable?)",
                QUEUE_BOUND,
            )
            return
        for part in parts:
            self._queue.put_nowait(part)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._notify(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("NOTIFY failed; %d message(s) not forwarded", len(batch))
                self.dropped += len(batch)
                await self._reconnect_sender()
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _notify(self, batch: list[str]) -> None:
        assert self._sender is not None
        await self._sender.execute(_NOTIFY, CHANNEL, batch)

    async def _reconnect_sender(self) -> None:
        if self._sender is not None:
            with contextlib.suppress(Exception):
                self._sender.terminate()
        for delay in (0.1, 0.5, 1.0, 2.0):
            with contextlib.suppress(Exception):
                self._sender = await asyncpg.connect(self.dsn)
                return
            await asyncio.sleep(delay)  # bounded back-off between reconnection attempts

    # ------------------------------------------------------------------ incoming

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            text = self._reassemble(payload)
            if text is None:
                return
            body = msgspec.json.decode(text)
            if not isinstance(body, dict) or body.get("s") == self.instance:
                return
            self._dispatch(body)
        except Exception:  # a foreign or corrupt notification must not stop the listener
            log.exception("ignoring an unreadable notification on %s", CHANNEL)

    def _reassemble(self, payload: str) -> str | None:
        if not payload.startswith("C|"):
            return payload
        _, src, seq, index, count, piece = payload.split("|", 5)
        if src == self.instance:
            return None
        key, i, n = (src, int(seq)), int(index), int(count)
        if not 0 <= i < n <= MAX_MESSAGE_CHARS // CHUNK_CHARS + 1:
            raise ValueError(f"bad chunk {i}/{n}")
        parts = self._pending.get(key)
        if parts is None:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            parts = self._pending[key] = [None] * n
        parts[i] = piece
        if any(p is None for p in parts):
            return None
        del self._pending[key]
        return "".join(p for p in parts if p is not None)

    def _dispatch(self, body: dict[str, Any]) -> None:
        kind = body.get("k")
        if kind == "e" and isinstance(body.get("e"), dict):
            self.hub.deliver(body["e"])
        elif kind == "r" and self.target is not None:
            to, text = body.get("to"), body.get("m")
            if isinstance(to, str) and isinstance(text, str):
                self.target.deliver(to, text)
        elif kind == "h" and self.target is not None:
            peer_id = body.get("p")
            if isinstance(peer_id, str):
                self.target.forget(peer_id)
