"""The JSON event lines of ``--json-events``, read back: one parser, one follower, one inbox.

The peer runtimes (``hp2p peer``, the SubMesh runtime, the bridge) print one JSON object per
line on stdout, its ``"event"`` key naming the kind (:mod:`hp2p.peer.stdio`). The tests, the
benchmarks and the demo read those lines through this module:

* :func:`parse_event` turns one line into an :class:`Event` (a line that is not an event
  becomes a ``garbage`` event, never an exception);
* :func:`follow` reads a blocking pipe on a daemon thread, :func:`events_from` an asyncio
  stream;
* :class:`EventInbox` keeps one process's events until they are asked for by kind, with a
  deadline, so that nothing waits by sleeping.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from typing import IO, Any

import msgspec

GARBAGE = "garbage"  #: the kind given to a line that is not a JSON event
EOF = "eof"  #: the kind :func:`follow` and :meth:`EventInbox.close` give the end of output
#: How a delivery line starts (the printer writes ``event`` first, without spaces): a reader
#: that only counts deliveries can do so without parsing them.
DELIVER_PREFIX = b'{"event":"deliver"'

_decode = msgspec.json.Decoder().decode


class Event(dict[str, Any]):
    """One event line: the JSON object as a dict, plus typed access to the common fields."""

    @property
    def kind(self) -> str:
        """The ``"event"`` key: ``joined``, ``deliver``, ``status`` …"""
        return str(self.get("event", ""))

    @property
    def t(self) -> float | None:
        """The Unix time the process gave the event (``"t"``), when it gave one."""
        t = self.get("t")
        return float(t) if isinstance(t, int | float) else None

    def t_or(self, default: float) -> float:
        """:attr:`t`, or ``default`` (typically when the line was read) when it has none."""
        t = self.t
        return default if t is None else t

    @property
    def message(self) -> tuple[str, int]:
        """``(source, sequence)`` of a ``deliver`` or ``published`` event."""
        return str(self["source"]), int(self["sequence"])


def parse_event(line: str | bytes) -> Event | None:
    """The event on one line; None for a blank line.

    A line that is not a JSON object with a string ``"event"`` becomes a ``garbage`` event
    carrying the line (the first 200 characters), so that a reader can report it.
    """
    if not line.strip():
        return None
    try:
        value = _decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        value = None
    if isinstance(value, dict) and isinstance(value.get("event"), str):
        return Event(value)
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return Event(event=GARBAGE, line=text.rstrip("\n")[:200])


def events_in(lines: Iterable[str | bytes]) -> Iterator[Event]:
    """The events of some lines (a text or binary file, a list …), blank lines skipped."""
    for line in lines:
        event = parse_event(line)
        if event is not None:
            yield event


async def events_from(stream: asyncio.StreamReader) -> AsyncIterator[Event]:
    """The events of an asyncio stream (a child's stdout), until its end."""
    while line := await stream.readline():
        event = parse_event(line)
        if event is not None:
            yield event


def follow(
    stdout: IO[str] | IO[bytes], on_event: Callable[[Event], None], name: str = "events"
) -> threading.Thread:
    """Read ``stdout`` on a daemon thread: ``on_event`` for each event, then one ``eof``."""

    def read() -> None:
        for event in events_in(stdout):
            on_event(event)
        on_event(Event(event=EOF))

    thread = threading.Thread(target=read, daemon=True, name=f"read-{name}")
    thread.start()
    return thread


class NoEventError(RuntimeError):
    """The event asked for did not come: the deadline passed, or the process ended."""


class EventInbox:
    """One process's events, kept until they are asked for by kind.

    :meth:`put` is called from the reading thread (it is :func:`follow`'s ``on_event``);
    :meth:`next` waits, with a deadline, for the next event of some kinds. Events of other
    kinds read meanwhile are kept (:attr:`kept`, oldest first) and are the first candidates
    of a later :meth:`next`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.kept: list[Event] = []
        self.ended = False
        self._queue: queue.Queue[Event] = queue.Queue()

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def close(self) -> None:
        """The end of the process's output."""
        self._queue.put(Event(event=EOF))

    def get(self, timeout: float) -> Event | None:
        """The next event read (of any kind, not kept), or None after ``timeout`` seconds."""
        try:
            event = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if event.kind == EOF:
            self.ended = True
        return event

    def next(self, kinds: str | Collection[str], deadline: float) -> Event:
        """The next event of ``kinds`` (one kind or several) within ``deadline`` seconds.

        Raises :class:`NoEventError` when the deadline passes or the output ends first.
        """
        wanted = {kinds} if isinstance(kinds, str) else set(kinds)
        for i, kept in enumerate(self.kept):
            if kept.kind in wanted:
                return self.kept.pop(i)
        end = time.monotonic() + deadline
        while not self.ended and (left := end - time.monotonic()) > 0:
            event = self.get(left)
            if event is None:
                break
            if event.kind in wanted:
                return event
            if event.kind != EOF:
                self.kept.append(event)
        if self.ended:
            raise NoEventError(f"{self.name} ended its output before any {sorted(wanted)}")
        raise NoEventError(f"{self.name}: no {sorted(wanted)} event within {deadline:g} s")

    def drain(self) -> list[Event]:
        """Every event kept or read so far, without waiting; none is kept any more."""
        events, self.kept = self.kept, []
        for _ in range(self._queue.qsize()):  # bounded: what is queued now
            read = self.get(0)
            if read is None:
                break
            events.append(read)
        return events
