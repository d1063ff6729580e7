"""``hp2p iot watch``: the live state of a member as a table in the terminal.

It reads the member's Server-Sent Events (``GET /state/stream``): the first ``snapshot``
fills the table, each ``change`` / ``remove`` updates it, a ``resync`` replaces it. When the
connection drops it reconnects with ``Last-Event-ID`` (bounded attempts), so a short outage
costs nothing. ``--once`` prints the table of the snapshot and exits; ``--count N`` exits after
N changes (both for scripts and tests).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["EPILOG", "TableState", "command", "parse_sse"]

EPILOG = """
Examples:

  hp2p iot watch --api http://127.0.0.1:8720

  hp2p iot watch --api http://127.0.0.1:8720 --prefix sensors/dev-0001/

  hp2p iot watch --api http://127.0.0.1:8720 --once        # one table, then exit

  HP2P_IOT_TOKEN=… hp2p iot watch --api http://127.0.0.1:8720   # member run with --api-token

Ctrl-C ends it. The member is `hp2p iot state --api …` (docs/iot.md).
"""

#: Longest value shown in a cell (the API has the whole payload).
VALUE_WIDTH = 60
RECONNECTS = 5


class TableState:
    """The rows the table shows, built from the stream's messages."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.changes = 0

    def apply(self, kind: str, message: dict[str, Any]) -> None:
        if kind in ("snapshot", "resync"):
            self.rows = {t["topic"]: t | {"_seen": time.time()} for t in message["topics"]}
        elif kind == "change":
            self.rows[message["topic"]] = message | {"_seen": time.time()}
            self.changes += 1
        elif kind == "remove":
            self.rows.pop(message["topic"], None)
            self.changes += 1
        self.version = int(message.get("version", self.version))

    def table(self, title: str) -> Table:
        table = Table(title=f"{title}  (version {self.version}, {len(self.rows)} topics)")
        for name in ("topic", "value", "age", "gateway"):
            table.add_column(name, overflow="fold" if name == "topic" else "ellipsis")
        now = time.time()
        for topic in sorted(self.rows):
            row = self.rows[topic]
            age = float(row.get("age", 0)) + now - float(row["_seen"])
            table.add_row(topic, _value(row), f"{age:.1f}s", str(row.get("gateway", "")))
        return table


def _value(row: dict[str, Any]) -> str:
    value = row.get("payload")
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if row.get("payload_format") == "base64":
        text = f"base64:{text}"
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) of each Server-Sent Event in ``lines``; comments are skipped."""
    event, ident, data = "message", "", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, ident, json.loads("\n".join(data))
            event, ident, data = "message", "", list[str]()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                ident = value
            elif name == "data":
                data.append(value)


def _fail(message: str) -> typer.Exit:
    print(f"hp2p iot watch: {message}", file=sys.stderr, flush=True)
    return typer.Exit(1)


def command(
    api: Annotated[str, typer.Option(help="the state member's API URL")] = "http://127.0.0.1:8720",
    prefix: Annotated[str, typer.Option(help="only topics starting with this")] = "",
    once: Annotated[bool, typer.Option("--once", help="print the current table and exit")] = False,
    count: Annotated[int, typer.Option(min=0, help="exit after this many changes (0: never)")] = 0,
    token: Annotated[
        str | None, typer.Option(help="bearer token (default $HP2P_IOT_TOKEN)")
    ] = None,
) -> None:
    """Show the live state of a `hp2p iot state` member as a table, updated as it changes."""
    token = token or os.environ.get("HP2P_IOT_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    console = Console()
    view = TableState()
    title = f"{api.rstrip('/')}/state {prefix}".rstrip()
    try:
        _once(api, prefix, headers, view)  # reachable? (an empty live table would not say)
        if once:
            console.print(view.table(title))
            return
        with Live(view.table(title), console=console, refresh_per_second=4) as live:
            _follow(api, prefix, headers, view, count, lambda: live.update(view.table(title)))
    except KeyboardInterrupt:
        console.print("stopped")
    except (httpx.HTTPError, _RefusedError) as exc:
        raise _fail(_explain(api, exc)) from None
    if count:
        console.print(view.table(title))


class _RefusedError(Exception):
    pass


def _check(answer: httpx.Response) -> None:
    if answer.status_code != 200:
        answer.read()
        try:
            detail = answer.json().get("detail", answer.text)
        except ValueError:
            detail = answer.text[:200]
        raise _RefusedError(f"HTTP {answer.status_code}: {detail}")


def _once(api: str, prefix: str, headers: dict[str, str], view: TableState) -> None:
    answer = httpx.get(f"{api}/state", params={"prefix": prefix}, headers=headers, timeout=10)
    _check(answer)
    view.apply("snapshot", answer.json())


def _follow(
    api: str,
    prefix: str,
    headers: dict[str, str],
    view: TableState,
    count: int,
    redraw: Any,
) -> None:
    """Follow the stream, reconnecting with Last-Event-ID after a drop (bounded)."""
    last: str | None = None
    failures = 0
    while failures <= RECONNECTS:
        sent = headers | ({"Last-Event-ID": last} if last else {})
        timeout = httpx.Timeout(10.0, read=60.0)  # the member sends a keep-alive every 15 s
        try:
            with httpx.stream(
                "GET",
                f"{api}/state/stream",
                params={"prefix": prefix},
                headers=sent,
                timeout=timeout,
            ) as answer:
                _check(answer)
                failures = 0
                for event, ident, data in parse_sse(answer.iter_lines()):
                    view.apply(event, data)
                    last = ident or last
                    redraw()
                    if count and view.changes >= count:
                        return
        except (httpx.TransportError, httpx.RemoteProtocolError):
            failures += 1
            if failures > RECONNECTS or last is None:
                raise
            time.sleep(min(2.0, 0.2 * 2**failures))  # backoff before reconnecting


def _explain(api: str, exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return (
            f"cannot reach the state member at {api} (connection refused or no route); is "
            "`hp2p iot state --api …` running there?"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"the state member at {api} did not answer in time"
    return f"the state member at {api} refused: {exc}"
