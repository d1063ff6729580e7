"""The history store of one SubMesh member: segments and their readings in one SQLite file.

Q.4100 §9.1 says a SubMesh "stacks the received data for additional use, similar to a
database"; this is that database. Tables:

* ``segments``: one row per checked segment object (object number, topic, slice, part, count,
  sha256 and the object's bytes), append-only until retention drops it.
* ``readings``: every reading of those segments, clustered by ``(topic, ts)`` (a query reads
  consecutive rows), with the reading's identity ``(gateway, epoch, number)`` UNIQUE: a reading
  that reaches the history twice (two segments, a replayed bridge) is stored once. Each row
  keeps the reading's JSON answer (``doc``), made once at ingest, so a query of tens of
  thousands of readings is a range scan and a join, not a loop building objects.
* ``pieces``: the mesh's pieces that are not (yet) a stored segment: every manifest (piece 0),
  the pieces of objects still being pulled, and those of objects refused as segments.
* ``rejected``: objects that are not valid segments, with the reason; ``dropped``: per topic,
  the end of the newest slice retention removed (answers "outside retention").

The mesh core reads and writes pieces through :class:`SqlitePieceStore`, which serves the
pieces of a stored segment by slicing its bytes: the member keeps serving its whole history to
late joiners, and a restarted member (same file) has it all again.

Every object comes from the network: :meth:`HistoryStore.ingest` decodes and checks it
(:func:`hp2p.apps.iot.segments.decode_segment`) and compares it with its manifest's meta; a bad
one is counted with its reason and never enters ``segments`` or ``readings``.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from hp2p.apps.iot.segments import (
    SEGMENT_APP_ID,
    Segment,
    SegmentError,
    decode_segment,
    reading_time,
)
from hp2p.peer.mesh_objects import sequence_of, split_sequence

__all__ = [
    "HistoryError",
    "HistoryStore",
    "Ingested",
    "SqlitePieceStore",
    "decode_doc",
    "payload_text",
    "segment_rows",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pieces (seq INTEGER PRIMARY KEY, obj INTEGER NOT NULL, data BLOB);
CREATE INDEX IF NOT EXISTS pieces_obj ON pieces (obj);
CREATE TABLE IF NOT EXISTS segments (
    obj INTEGER PRIMARY KEY, topic TEXT NOT NULL, start REAL NOT NULL, "end" REAL NOT NULL,
    part INTEGER NOT NULL, count INTEGER NOT NULL, clock TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, piece_size INTEGER NOT NULL, pieces INTEGER NOT NULL,
    stored_at REAL NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS segments_topic ON segments (topic, start);
CREATE TABLE IF NOT EXISTS readings (
    topic TEXT NOT NULL, ts REAL NOT NULL, gateway TEXT NOT NULL, epoch INTEGER NOT NULL,
    number INTEGER NOT NULL, obj INTEGER NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (topic, ts, gateway, epoch, number)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS readings_identity ON readings (gateway, epoch, number);
CREATE INDEX IF NOT EXISTS readings_obj ON readings (obj);
CREATE TABLE IF NOT EXISTS rejected (obj INTEGER PRIMARY KEY, reason TEXT NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (topic TEXT PRIMARY KEY, until REAL NOT NULL);
"""

_doc_encoder = msgspec.json.Encoder()
_doc_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_doc(doc: bytes) -> dict[str, Any]:
    """One reading of :meth:`HistoryStore.query` as a dict."""
    return _doc_decoder.decode(doc)


#: Uncommitted piece writes before a commit (a crash loses at most these; they are pulled again).
_COMMIT_EVERY = 64
#: Longest reason kept for a rejected object.
_MAX_REASON = 200


class HistoryError(Exception):
    """The history file cannot be used; ``str(err)`` says why and what to do."""


@dataclass(frozen=True, slots=True)
class Ingested:
    """What :meth:`HistoryStore.ingest` did with one object."""

    stored: bool
    readings: int = 0  # new readings stored (duplicates of stored ones not counted)
    reason: str = ""  # why it was refused


def payload_text(payload: bytes) -> dict[str, str]:
    """A payload for JSON: UTF-8 text as ``payload``, anything else as ``payload_base64``."""
    try:
        return {"payload": payload.decode()}
    except UnicodeDecodeError:
        return {"payload_base64": base64.b64encode(payload).decode()}


class HistoryStore:
    """The SQLite file of one history member (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise HistoryError(
                f"cannot use {self.path} as the history database: {exc} "
                "(give a writable path to a new or earlier history file with --db)"
            ) from None
        self.db.execute("BEGIN")
        self._pending_writes = 0
        self._closed = False
        #: object numbers stored as segments or refused: what this member knows the content of
        self.known: set[int] = {
            row[0]
            for row in self.db.execute("SELECT obj FROM segments UNION SELECT obj FROM rejected")
        }
        self.rejected_count = 0

    # === identity ================================================================================
    def bind(self, overlay_id: str, source_id: str) -> None:
        """Tie the file to one SubMesh: a history of another SubMesh is refused, not mixed."""
        for key, value in (("overlay_id", overlay_id), ("source_id", source_id)):
            held = self.get_meta(key)
            if held is None:
                self.set_meta(key, value)
            elif held != value:
                raise HistoryError(
                    f"{self.path} holds the history of {key.replace('_', ' ')} {held!r}, not "
                    f"{value!r}: give another --db for this SubMesh"
                )
        self.commit()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def floor(self) -> int:
        """Objects below are gone for good (retention): never fetched again."""
        return int(self.get_meta("floor") or 1)

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")
        self._pending_writes = 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.db.execute("COMMIT")
        self.db.close()

    # === ingest ==================================================================================
    def ingest(
        self,
        obj: int,
        data: bytes,
        app_id: str | None,
        meta: dict[str, Any] | None,
        *,
        piece_size: int,
        now: float,
    ) -> Ingested:
        """Check one whole object and store it as a segment, or refuse it with a reason."""
        if obj in self.known:
            return Ingested(stored=False, reason="already known")
        try:
            segment = _checked_segment(data, app_id, meta)
        except SegmentError as exc:
            return self.reject(obj, str(exc), now)
        self.db.execute(
            "INSERT INTO segments VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                obj,
                segment.topic,
                segment.start,
                segment.end,
                segment.part,
                len(segment.readings),
                segment.clock,
                hashlib.sha256(data).hexdigest(),
                len(data),
                piece_size,
                -(-len(data) // piece_size),  # its pieces
                now,
                data,
            ),
        )
        before = self.db.total_changes
        self.db.executemany(
            "INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?)", _reading_rows(obj, segment)
        )
        added = self.db.total_changes - before
        # the data pieces are served from the segment's bytes from now on
        self.db.execute("DELETE FROM pieces WHERE obj = ? AND seq != ?", (obj, sequence_of(obj, 0)))
        self.known.add(obj)
        self.commit()
        return Ingested(stored=True, readings=added)

    def reject(self, obj: int, reason: str, now: float) -> Ingested:
        """Record that ``obj`` is not a valid segment (it is known, never stored)."""
        reason = reason[:_MAX_REASON]
        self.db.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?)", (obj, reason, now))
        self.known.add(obj)
        self.rejected_count += 1
        self.commit()
        return Ingested(stored=False, reason=reason)

    # === queries =================================================================================
    def query(self, topic: str, lo: float, hi: float, limit: int) -> list[bytes]:
        """Readings of ``topic`` with ``lo <= ts < hi`` in time order (ties by identity), each
        as its JSON object (UTF-8 bytes; :func:`decode_doc` for a dict)."""
        rows = self.db.execute(
            "SELECT doc FROM readings WHERE topic = ? AND ts >= ? AND ts < ? "
            "ORDER BY ts, gateway, epoch, number LIMIT ?",
            (topic, lo, hi, limit),
        )
        return [row[0] for row in rows]

    def query_rows(
        self, topic: str, lo: float, hi: float, limit: int
    ) -> list[tuple[float, str, int, int, bytes]]:
        """As :meth:`query`, each reading as ``(ts, gateway, epoch, number, doc)``: for
        merging with readings held elsewhere (:mod:`hp2p.apps.iot.history_cache`)."""
        rows = self.db.execute(
            "SELECT ts, gateway, epoch, number, doc FROM readings WHERE topic = ? AND ts >= ? "
            "AND ts < ? ORDER BY ts, gateway, epoch, number LIMIT ?",
            (topic, lo, hi, limit),
        )
        return [(float(t), str(g), int(e), int(n), bytes(d)) for t, g, e, n, d in rows]

    def dropped_until(self, topic: str) -> float | None:
        """The end of the newest slice of ``topic`` that retention removed (None: none)."""
        row = self.db.execute("SELECT until FROM dropped WHERE topic = ?", (topic,)).fetchone()
        return None if row is None else float(row[0])

    def counts(self) -> dict[str, int]:
        one = self.db.execute
        return {
            "segments": int(one("SELECT count(*) FROM segments").fetchone()[0]),
            "readings": int(one("SELECT count(*) FROM readings").fetchone()[0]),
            "rejected": int(one("SELECT count(*) FROM rejected").fetchone()[0]),
            "bytes": self.total_bytes(),
            "floor": self.floor,
        }

    def rejections(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT obj, reason, at FROM rejected ORDER BY obj DESC LIMIT ?", (limit,)
        )
        return [{"object": o, "reason": r, "at": at} for o, r, at in rows]

    def total_bytes(self) -> int:
        """Bytes of segment objects and loose pieces: what retention by size bounds."""
        seg = self.db.execute("SELECT coalesce(sum(size), 0) FROM segments").fetchone()[0]
        loose = self.db.execute("SELECT coalesce(sum(length(data)), 0) FROM pieces").fetchone()[0]
        return int(seg) + int(loose)

    # === retention ===============================================================================
    def retention_floor(self, now: float, max_age: float | None, max_bytes: int | None) -> int:
        """The lowest object number retention keeps (objects are numbered in closing order).

        By age: every object up to the newest segment whose slice ended more than ``max_age``
        ago goes (older numbers closed earlier). By size: the oldest objects go until the
        rest fits ``max_bytes``.
        """
        floor = self.floor
        if max_age is not None:
            row = self.db.execute(
                'SELECT max(obj) FROM segments WHERE "end" < ?', (now - max_age,)
            ).fetchone()
            if row[0] is not None:
                floor = max(floor, int(row[0]) + 1)
        if max_bytes is not None:
            excess = self.total_bytes() - max_bytes
            if excess > 0:
                sizes = self.db.execute(
                    "SELECT obj, sum(n) FROM (SELECT obj, size AS n FROM segments UNION ALL "
                    "SELECT obj, length(data) AS n FROM pieces) GROUP BY obj ORDER BY obj"
                )
                for obj, size in sizes:
                    if excess <= 0:
                        break
                    excess -= int(size)
                    floor = max(floor, int(obj) + 1)
        return floor

    def drop_below(self, floor: int) -> int:
        """Forget every object below ``floor`` (their readings too); returns segments dropped."""
        if floor <= self.floor and not self._any_below(floor):
            return 0
        self._note_dropped("obj < ?", floor)
        gone = self.db.execute("DELETE FROM segments WHERE obj < ?", (floor,)).rowcount
        for table in ("readings", "pieces", "rejected"):
            self.db.execute(f"DELETE FROM {table} WHERE obj < ?", (floor,))
        self.set_meta("floor", str(max(floor, self.floor)))
        self.known = {o for o in self.known if o >= floor}
        self.commit()
        return int(gone)

    def _any_below(self, floor: int) -> bool:
        return any(o < floor for o in self.known) or (
            self.db.execute("SELECT 1 FROM pieces WHERE obj < ? LIMIT 1", (floor,)).fetchone()
            is not None
        )

    # === pieces (SqlitePieceStore) ===============================================================
    def piece(self, seq: int) -> bytes | None:
        obj, index = split_sequence(seq)
        if index > 0:
            row = self.db.execute(
                "SELECT substr(data, (? - 1) * piece_size + 1, piece_size), pieces "
                "FROM segments WHERE obj = ?",
                (index, obj),
            ).fetchone()
            if row is not None:
                return bytes(row[0]) if index <= row[1] else None
        row = self.db.execute("SELECT data FROM pieces WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_piece(self, seq: int, data: bytes) -> None:
        obj, _ = split_sequence(seq)
        self.db.execute("INSERT OR REPLACE INTO pieces VALUES (?, ?, ?)", (seq, obj, data))
        self._pending_writes += 1
        if self._pending_writes >= _COMMIT_EVERY:
            self.commit()

    def drop_object(self, obj: int) -> None:
        """The mesh core lets an object go (retention, or a manifest that lied)."""
        self._note_dropped("obj = ?", obj)
        for table in ("segments", "readings", "pieces", "rejected"):
            self.db.execute(f"DELETE FROM {table} WHERE obj = ?", (obj,))
        self.known.discard(obj)
        self._pending_writes += 1
        if self._pending_writes >= _COMMIT_EVERY:
            self.commit()

    def _note_dropped(self, where: str, obj: int) -> None:
        self.db.execute(
            f'INSERT INTO dropped SELECT topic, max("end") FROM segments WHERE {where} '
            "GROUP BY topic ON CONFLICT (topic) DO UPDATE SET until = max(until, excluded.until)",
            (obj,),
        )

    def piece_sequences(self) -> Iterator[int]:
        found = [int(row[0]) for row in self.db.execute("SELECT seq FROM pieces")]
        for obj, count in self.db.execute("SELECT obj, pieces FROM segments"):
            found.extend(sequence_of(int(obj), i) for i in range(1, int(count) + 1))
        return iter(found)


def segment_rows(
    obj: int, data: bytes, app_id: str | None, meta: dict[str, Any] | None
) -> list[tuple[Any, ...]]:
    """The ``readings`` rows of a checked segment object (raises ``SegmentError``): what
    :meth:`HistoryStore.ingest` would store, for a segment held in memory only."""
    return _reading_rows(obj, _checked_segment(data, app_id, meta))


def _checked_segment(data: bytes, app_id: str | None, meta: dict[str, Any] | None) -> Segment:
    """The segment in an object, checked, and matching its manifest's meta."""
    if app_id != SEGMENT_APP_ID:
        raise SegmentError(f"app-id {str(app_id)[:40]!r} is not {SEGMENT_APP_ID!r}")
    segment = decode_segment(data)
    expected = {
        "topic": segment.topic,
        "start": segment.start,
        "end": segment.end,
        "part": segment.part,
        "count": len(segment.readings),
    }
    got = {k: (meta or {}).get(k) for k in expected}
    if got != expected:
        raise SegmentError(f"the manifest's meta {got} does not match the segment")
    return segment


def _reading_rows(obj: int, segment: Segment) -> list[tuple[Any, ...]]:
    """The ``readings`` rows of a segment, each with its JSON answer made once, here."""
    rows: list[tuple[Any, ...]] = []
    for r in segment.readings:
        ts = reading_time(r, segment.clock)
        doc = {
            "topic": r.topic,
            "ts": ts,
            "device_ts": r.device_ts,
            "received_ts": r.received_ts,
            "qos": r.qos,
            "gateway": r.gateway,
            "epoch": r.epoch,
            "number": r.number,
            "object": obj,
            **payload_text(r.payload),
        }
        rows.append((r.topic, ts, r.gateway, r.epoch, r.number, obj, _doc_encoder.encode(doc)))
    return rows


class SqlitePieceStore:
    """The mesh core's :class:`~hp2p.peer.mesh_store.PieceStore` on a :class:`HistoryStore`."""

    def __init__(self, history: HistoryStore) -> None:
        self.history = history

    def get(self, sequence: int) -> bytes | None:
        return self.history.piece(sequence)

    def put(self, sequence: int, data: bytes) -> None:
        self.history.put_piece(sequence, data)

    def drop_object(self, object_number: int) -> None:
        self.history.drop_object(object_number)

    def sequences(self) -> Iterator[int]:
        return self.history.piece_sequences()
