"""The baselines' relay node: a bare asyncio ``Protocol`` that forwards length-prefixed frames.

``hp2p bench tree`` measures hp2p against two overlays written here, with no protocol logic:

* **floor** (``--mode tree``): each node reads a frame from its parent and writes it to its
  children. Same tree shape as hp2p's, same N, one process per node: the "physical limit" of
  a Python overlay on this machine (BENCHMARKS.md).
* **flood** (``--mode flood``): each node forwards the first copy of a frame to every
  neighbour of a random mesh except the one it came from. hp2p has no switch that turns its
  tree off, so this relay stands in for "hp2p with push on every link": it shows what the tree
  saves in copies (RMR ≈ degree − 1).

To compare overlay logic rather than instrumentation, a node reports exactly what an
``hp2p peer --json-events`` does: one JSON line per delivery with ``time.time()``, and a
``published`` line at the source. It is driven the same way, by lines on stdin:

* ``links PORT,PORT,…``   connect to these nodes (127.0.0.1); prints ``{"event": "linked"}``;
* ``publish TEXT``        originate a frame (source only);
* ``status``              prints counters (copies received, duplicates, deliveries);
* end of input            exit.

Frame: ``>I`` length, then ``>Q`` sequence and the payload. Started as
``python -m hp2p.bench.relay --mode tree|flood``; the first stdout line is ``{"event":
"ready", "port": P}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from typing import cast

_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
MAX_FRAME = 1 << 20


def _emit(fields: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Relay:
    """The node's state: its links, and (flood) which sequences it has seen."""

    def __init__(self, name: str, flood: bool) -> None:
        self.name = name
        self.flood = flood
        self.links: list[RelayLink] = []
        self.seen = bytearray(1 << 16)  # flood: a bit per sequence, grown on demand
        self.copies = 0
        self.duplicates = 0
        self.deliveries = 0
        self.sequence = 0

    def on_frame(self, frame: bytes, sequence: int, arrival: RelayLink) -> None:
        self.copies += 1
        if self.flood:
            index, bit = divmod(sequence, 8)
            if index >= len(self.seen):
                if index > MAX_FRAME * 64:
                    self.duplicates += 1
                    return
                self.seen.extend(bytes(index + 1 - len(self.seen)))
            if self.seen[index] & (1 << bit):
                self.duplicates += 1
                return
            self.seen[index] |= 1 << bit
        for link in self.links:
            if link is not arrival and (self.flood or link.outgoing):
                link.write(frame)
        self.deliveries += 1
        _emit({"event": "deliver", "source": "relay", "sequence": sequence, "t": time.time()})

    def publish(self, data: bytes) -> None:
        self.sequence += 1
        if self.flood:
            index, bit = divmod(self.sequence, 8)
            if index >= len(self.seen):
                self.seen.extend(bytes(index + 1 - len(self.seen)))
            self.seen[index] |= 1 << bit
        body = _SEQ.pack(self.sequence) + data
        frame = _LEN.pack(len(body)) + body
        _emit(
            {"event": "published", "source": "relay", "sequence": self.sequence, "t": time.time()}
        )
        for link in self.links:
            if self.flood or link.outgoing:
                link.write(frame)


class RelayLink(asyncio.Protocol):
    """One TCP connection: reassembles frames and hands each to the relay."""

    def __init__(self, relay: Relay, outgoing: bool) -> None:
        self.relay = relay
        self.outgoing = outgoing  # tree mode: we connected to it, so it is a child
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        self.transport = transport
        self.relay.links.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.relay.links:
            self.relay.links.remove(self)

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            (length,) = _LEN.unpack_from(buffer, offset)
            if length > MAX_FRAME or length < 8:
                assert self.transport is not None
                self.transport.close()
                return
            end = offset + 4 + length
            if end > size:
                break
            (sequence,) = _SEQ.unpack_from(buffer, offset + 4)
            self.relay.on_frame(bytes(buffer[offset:end]), sequence, self)
            offset = end
        if offset:
            del buffer[:offset]


async def _main(mode: str) -> int:
    loop = asyncio.get_running_loop()
    relay = Relay("relay", flood=mode == "flood")
    server = await loop.create_server(lambda: RelayLink(relay, outgoing=False), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _emit({"event": "ready", "port": port})
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        if not raw:
            break
        command, _, argument = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
        if command == "publish":
            relay.publish(argument.encode())
        elif command == "links":
            for text in filter(None, argument.split(",")):
                await loop.create_connection(
                    lambda: RelayLink(relay, outgoing=True), "127.0.0.1", int(text)
                )
            _emit({"event": "linked", "links": len(relay.links)})
        elif command == "status":
            _emit(
                {
                    "event": "status",
                    "copies": relay.copies,
                    "duplicates": relay.duplicates,
                    "deliveries": relay.deliveries,
                }
            )
        elif command:
            _emit({"event": "error", "reason": f"unknown command {command!r}"})
    server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("tree", "flood"), default="tree")
    args = parser.parse_args(argv)
    return asyncio.run(_main(args.mode))


if __name__ == "__main__":
    sys.exit(main())
