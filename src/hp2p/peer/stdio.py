"""The peer runtimes' line protocol on stdio: JSON events out, commands in.

``hp2p peer`` and the SubMesh runtime speak the same protocol to the programs that drive them
(tests, the demo, benchmarks), so both use this one implementation.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
MAX_COMMAND_LINE = 1 << 20


class EventPrinter:
    """Events as JSON lines on stdout, each flushed at once (a reader waits on it).

    When the reader has gone (broken pipe) the events stop, with one warning; the peer itself
    keeps serving the overlay until it is told to leave.
    """

    def __init__(self) -> None:
        self.gone = False

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if self.gone:
            return
        try:
            sys.stdout.write(_encoder.encode({"event": kind, **fields}).decode() + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            self.gone = True
            logging.getLogger("hp2p.peer").warning("stdout closed: JSON events stop")


print_event = EventPrinter()


async def stdin_commands() -> AsyncIterator[tuple[str, str, str]]:
    """``(command, argument, line)`` for each line on stdin, until end of input.

    A line over 1 MiB is reported as an ``error`` event and skipped, not a reason to stop.
    """
    reader = asyncio.StreamReader(limit=MAX_COMMAND_LINE)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        try:
            raw = await reader.readline()
        except ValueError:
            print_event("error", {"reason": "a command line longer than 1 MiB was ignored"})
            continue
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        command, _, argument = line.partition(" ")
        yield command, argument, line
