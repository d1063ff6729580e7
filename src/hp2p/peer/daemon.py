"""The lean runtime of ``hp2p peer``: one node, its optional local API, events and commands.

``hp2p peer`` (:mod:`hp2p.peer.cli`) validates everything, then calls :func:`exec_daemon`,
which replaces the process (same pid, same stdin/stdout, same signals) with
``python -m hp2p.peer.daemon``. This module imports only the peer shell, so a peer process does
not carry the command-line stack (typer, click, pydantic) for its whole life: per-process RSS
is BENCHMARKS.md metric 7. The settings travel in an environment variable, not in argv, because
argv is readable by every user of the machine and may hold an access or admin key.

Two ways for other programs to follow the peer without guessing or sleeping:

* ``--json-events``: one JSON object per line on stdout (``joined``, ``deliver``, ``published``,
  ``path``, ``attached``, ``detached``, ``join_failed``, ``gap``, ``peer_lost``, ``scan``,
  ``status``, ``error``, ``left``; docs/peer.md describes each);
* ``--stdin``: commands, one per line: ``publish TEXT``, ``scan``, ``status``, ``leave``; the
  end of input leaves too (the controlling program is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from typing import Any

import msgspec

from hp2p.peer.config import PeerConfig
from hp2p.peer.node import NodeError, PeerNode
from hp2p.peer.settings import NodeSettings
from hp2p.peer.stdio import print_event, stdin_commands

ENV_VAR = "_HP2P_PEER_RUN"

_encoder = msgspec.json.Encoder()


def launch(
    settings: NodeSettings,
    config: PeerConfig,
    *,
    json_events: bool,
    stdin: bool,
    log_level: str,
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment that run the lean runtime with these settings.

    ``hp2p peer`` execs it; ``hp2p demo`` starts its peers with it directly, which spares each
    peer process the start-up of the command-line stack (about half of its start-up CPU).
    """
    document = {
        "node": dataclasses.asdict(settings),
        "core": dataclasses.asdict(config),
        "json_events": json_events,
        "stdin": stdin,
        "log_level": log_level,
    }
    argv = [sys.executable, "-m", "hp2p.peer.daemon"]
    return argv, {ENV_VAR: _encoder.encode(document).decode()}


def exec_daemon(
    settings: NodeSettings,
    config: PeerConfig,
    *,
    json_events: bool,
    stdin: bool,
    log_level: str,
) -> None:
    """Replace this process with the lean peer runtime (does not return)."""
    argv, env = launch(settings, config, json_events=json_events, stdin=stdin, log_level=log_level)
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


async def run(settings: NodeSettings, config: PeerConfig, json_events: bool, stdin: bool) -> int:
    """Join, print the one 'joined' line, serve until a signal, ``leave`` or failure; leave."""
    joined = False
    early: list[dict[str, Any]] = []

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        # The 'joined' line comes first. Path changes while joining go to the log only;
        # deliveries that beat the line (the local API was starting) are printed right after it.
        if joined:
            # Every line carries the peer's own clock ("t", Unix seconds): a reader that is
            # slow to read (a benchmark following 200 peers) still knows when it happened.
            print_event(kind, fields if "t" in fields else {**fields, "t": time.time()})
        elif kind == "deliver" and len(early) < 100_000:
            early.append(fields)

    try:
        node = PeerNode(settings, config, on_event=on_event if json_events else None)
    except NodeError as exc:
        print(f"hp2p peer: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(node.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():  # SIGINT/SIGTERM while joining: give up the join, leave cleanly
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, NodeError):
            await starting
        await node.close()
        return 0
    try:
        starting.result()
    except NodeError as exc:
        print(f"hp2p peer: {exc}", file=sys.stderr, flush=True)
        return 1
    local_api = None
    try:
        api_url = None
        if settings.api is not None:
            from hp2p.peer.local_api import LocalApi  # the web stack, only when asked for

            local_api = LocalApi(node, settings.api)
            try:
                api_url = await local_api.start()
            except NodeError as exc:
                print(f"hp2p peer: {exc}", file=sys.stderr, flush=True)
                return 1
        info = {**node.joined_info(), "api": api_url}
        joined = True
        if json_events:
            print_event("joined", info)
            for fields in early:
                print_event("deliver", fields)
            early.clear()
        else:
            print(
                f"hp2p peer: joined peer-id={info['peer_id']} overlay-id={info['overlay_id']} "
                f"ticket={info['ticket']} r2={info['r2']} api={api_url or '-'} "
                f"parent={info['parent'] or '-'} depth={info['depth']}",
                flush=True,
            )
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(node.failed.wait()),
        ]
        if stdin:
            waiters.append(asyncio.ensure_future(serve_commands(node)))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if node.failed.is_set():
            print(
                f"hp2p peer: lost the tree and could not re-attach: {node.failure}", file=sys.stderr
            )
            return 1
        return 0
    finally:
        if local_api is not None:
            await local_api.stop()
        await node.close()


async def serve_commands(node: PeerNode) -> None:
    """``--stdin`` commands until ``leave`` or end of input; answers are JSON lines."""
    from hp2p.peer.api import scan_json

    async for command, argument, line in stdin_commands():
        try:
            if command == "publish":
                node.publish(argument.encode("utf-8"))
            elif command == "scan":
                print_event("scan", {**scan_json(await node.scan_tree()), "t": time.time()})
            elif command == "status":
                print_event("status", node.status())
            elif command == "leave":
                return
            elif command:
                print_event(
                    "error",
                    {
                        "reason": f"unknown command {command!r}; use publish "
                        "TEXT, scan, status or leave",
                        "line": line[:200],
                    },
                )
        except NodeError as exc:
            print_event("error", {"reason": str(exc)})


def main() -> int:
    raw = os.environ.pop(ENV_VAR, None)
    if raw is None:
        print("hp2p.peer.daemon is started by `hp2p peer`; run that instead.", file=sys.stderr)
        return 2
    document = msgspec.json.decode(raw)
    logging.basicConfig(
        level=document["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = NodeSettings(**document["node"])
    config = PeerConfig.from_dict(document["core"])
    return asyncio.run(run(settings, config, document["json_events"], document["stdin"]))


if __name__ == "__main__":
    sys.exit(main())
