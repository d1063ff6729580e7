"""The peer runtimes' line protocol on stdio: JSON events out, commands in.

``hp2p peer`` and the SubMesh runtime speak the same protocol to the programs that drive them
(tests, the demo, benchmarks), so both use this one implementation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
MAX_COMMAND_LINE = 1 << 20
#: ``--print`` shows at most this many characters of a text payload, this many bytes of others
PRINT_TEXT_CHARS = 200
PRINT_HEX_BYTES = 32


def payload_fields(data: bytes) -> dict[str, str]:
    """A payload in a JSON event (``--events-payload``): ``data_b64`` always, ``text`` too when
    the bytes are UTF-8, so a reader of text need not decode and a reader of bytes loses none.
    """
    fields = {"data_b64": base64.b64encode(data).decode("ascii")}
    with contextlib.suppress(UnicodeDecodeError):
        fields["text"] = data.decode("utf-8")
    return fields


def payload_preview(data: bytes) -> str:
    """A payload for a person (``--print``): the text when it is printable UTF-8, else hex;
    cut to :data:`PRINT_TEXT_CHARS` characters or :data:`PRINT_HEX_BYTES` bytes, saying so.

    Control characters never reach the terminal: a payload holding one is shown in hex.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        if len(text) <= PRINT_TEXT_CHARS:
            return text
        return f"{text[:PRINT_TEXT_CHARS]}… ({len(text) - PRINT_TEXT_CHARS} more characters)"
    shown = data[:PRINT_HEX_BYTES].hex()
    more = len(data) - PRINT_HEX_BYTES
    return f"hex {shown}… ({more} more bytes)" if more > 0 else f"hex {shown}"


def delivery_line(source: str, sequence: int, data: bytes, lost: int = 0) -> str:
    """The ``--print`` line of one delivered message (tree peers) or object (SubMesh)."""
    missed = f" [{lost} missed before this: stdout was too slow]" if lost else ""
    return f"{source} #{sequence} ({len(data)} bytes){missed}: {payload_preview(data)}"


def print_line(line: str) -> None:
    """One line for a person on stdout, flushed; nothing (and no traceback) once it has gone."""
    if print_event.gone:
        return
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        print_event.gone = True
        logging.getLogger("hp2p.peer").warning("stdout closed: printed deliveries stop")


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
