"""Running a producer or a full node as a process: start, serve the API, stop on a signal.

Progress goes to stdout: one JSON line per event with ``--json-events`` (``ready`` with the API
URL and overlay, ``head`` for each new head, ``error``), else a short human line per head.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from hp2p.apps.chain.api import ApiError, ChainApi, NotAProducerError, build_app
from hp2p.apps.chain.model import Transaction
from hp2p.apps.chain.node import FullNode, ProducerNode
from hp2p.apps.chain.store import StoreError
from hp2p.peer.mesh_node import MeshNodeError
from hp2p.peer.node import NodeError

__all__ = ["EventPrinter", "serve"]

Node = ProducerNode | FullNode


class EventPrinter:
    """Prints events: JSON lines, or one human line for the few that matter."""

    def __init__(self, json_events: bool, prog: str) -> None:
        self.json_events = json_events
        self.prog = prog

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if self.json_events:
            with contextlib.suppress(BrokenPipeError, ValueError):
                print(json.dumps({"event": kind, "t": time.time(), **fields}), flush=True)
        elif kind == "head":
            print(
                f"{self.prog}: height {fields['height']} {fields['hash'][:16]} "
                f"({fields['txs']} txs, final {fields['final_height']})",
                flush=True,
            )
        elif kind == "ready":
            where = f", API {fields['api']}" if fields.get("api") else ""
            print(
                f"{self.prog}: running on overlay {fields['overlay_id']} as {fields['peer_id']}"
                f", height {fields['height']}{where}",
                flush=True,
            )
        elif kind == "error":
            print(f"{self.prog}: {fields.get('reason')}", file=sys.stderr, flush=True)


def _refuse(tx: Transaction) -> None:
    raise NotAProducerError(
        "a full node has no CoreTree link to broadcast on: submit to a producer's API"
    )


async def _run(node: Node, api_listen: str | None, public: bool, emit: EventPrinter) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except (NodeError, MeshNodeError, StoreError) as exc:
        print(f"{emit.prog}: {exc}", file=sys.stderr, flush=True)
        return 1
    api: ChainApi | None = None
    try:
        if api_listen:
            submit = node.submit if isinstance(node, ProducerNode) else _refuse
            api = ChainApi(build_app(node.service, submit, node.status), api_listen, public=public)
            await api.start()
        status = node.status()
        emit(
            "ready",
            {
                "api": api.url if api else None,
                "peer_id": status["peer_id"],
                "overlay_id": status["overlay_id"],
                "height": node.service.ledger.height,
                "replayed": node.service.replayed,
            },
        )
        await stop.wait()
        return 0
    except ApiError as exc:
        print(f"{emit.prog}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if api is not None:
            await api.stop()
        await node.close()


def serve(node: Node, api_listen: str | None, public: bool, emit: EventPrinter) -> int:
    """Run ``node`` (and its API) until SIGINT/SIGTERM; the exit status."""
    return asyncio.run(_run(node, api_listen, public, emit))
