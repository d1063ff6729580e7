"""A minimal HTTP/1.1 keep-alive load generator, run in its own process.

Why not httpx? On this machine class httpx spends ~1 ms of CPU per request building and
parsing messages, which is as much as the HOMS spends on a join: a benchmark driven by it
measures the client. This client writes pre-encoded requests on persistent connections and
reads each response by its ``Content-Length`` (enough for uvicorn, which always sends one for
a complete body) at a few tens of µs per request, so the figures are the server's.

It runs in a child process (``multiprocessing`` spawn) so that the server and the client do
not share an interpreter, and reports latencies, wall time and its own CPU time back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

#: Deadline for one request; a benchmark that stalls fails instead of hanging.
REQUEST_TIMEOUT_S = 30.0


class HttpLoadError(Exception):
    """The server answered something this client cannot read, or nothing in time."""


@dataclass(frozen=True, slots=True)
class Request:
    """One pre-encoded request: the complete bytes to write."""

    raw: bytes

    @classmethod
    def build(cls, method: str, path: str, body: bytes | None = None) -> Request:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return cls(head.encode("ascii") + b"\r\n" + (body or b""))


@dataclass(slots=True)
class LoadResult:
    """What one load run measured (latencies in seconds, in completion order per client)."""

    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, headers = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpLoadError(f"not an HTTP/1.x response: {status_line[:80]!r}")
    length = None
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"transfer-encoding":
            raise HttpLoadError("chunked responses are not supported by this load generator")
    body = await reader.readexactly(length) if length else b""
    return int(parts[1]), body


async def _client(
    host: str, port: int, requests: list[Request], keep: bool, out: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        perf = time.perf_counter
        for req in requests:
            start = perf()
            writer.write(req.raw)
            status, body = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
            out.latencies.append(perf() - start)
            out.statuses.append(status)
            if keep:
                out.bodies.append(body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def run_load(
    host: str, port: int, per_client: list[list[Request]], keep_bodies: bool = False
) -> LoadResult:
    """Send each client's requests in order on its own connection, all clients at once."""
    results = [LoadResult() for _ in per_client]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(
        *(
            _client(host, port, reqs, keep_bodies, res)
            for reqs, res in zip(per_client, results, strict=True)
        )
    )
    total = LoadResult(wall_s=time.perf_counter() - wall0, client_cpu_s=time.process_time() - cpu0)
    for res in results:
        total.latencies += res.latencies
        total.statuses += res.statuses
        total.bodies += res.bodies
    return total


def load_in_process(
    host: str, port: int, per_client: list[list[bytes]], keep_bodies: bool
) -> LoadResult:
    """Entry point for the child process: raw request bytes in, a :class:`LoadResult` out."""
    reqs = [[Request(raw) for raw in client] for client in per_client]
    return asyncio.run(run_load(host, port, reqs, keep_bodies))
