"""The lean runtime of ``hp2p peer``: one process for every overlay type.

``hp2p peer`` (:mod:`hp2p.peer.cli`) validates the options, then calls :func:`exec_daemon`,
which replaces the process (same pid, same stdin/stdout, same signals) with
``python -m hp2p.peer.daemon``. This module never imports the command-line stack (typer, click,
pydantic), so a peer process does not carry it for its whole life: per-process RSS is
BENCHMARKS.md metric 7. The settings (:class:`hp2p.peer.settings.Settings`, every section)
travel in an environment variable, not in argv, because argv is readable by every user of the
machine and may hold an access or admin key.

The runtime then picks the peer, in this process: a ``create`` makes a CoreTree (a SubMesh
with ``parent``); a ``join`` first asks the HOMS what the overlay is (typed HOMP query,
:meth:`hp2p.peer.homs_client.HomsClient.find_overlay`, :func:`hp2p.peer.settings.runtime_of`)
and runs a :class:`~hp2p.peer.node.PeerNode` for a CoreTree or SubTree, a
:class:`~hp2p.peer.mesh_node.MeshNode` for a SubMesh. Settings that do not apply to that
overlay are refused before anything joins (:meth:`~hp2p.peer.settings.Settings.check`).

Two ways for other programs to follow the peer without guessing or sleeping:

* ``--json-events``: one JSON object per line on stdout. Tree peers: ``joined``, ``deliver``,
  ``published``, ``path``, ``attached``, ``detached``, ``join_failed``, ``gap``,
  ``peer_lost``, ``source_unreachable``, ``waiting_for_source``, ``source_back`` (SubTree
  members), ``scan``, ``status``, ``error``, ``left``; SubMesh peers: ``joined`` (with
  ``"mesh": true``), ``delivered`` (with the SHA-256 of the object), ``object``,
  ``published``, ``became_source``, ``status``, ``error``, ``left``; docs/peer.md and
  docs/sub-overlays.md describe each;
* ``--stdin``: commands, one per line: ``publish TEXT``, ``scan`` (tree), ``publish-file
  PATH`` and ``publish-random SIZE SEED`` (SubMesh), ``status``, ``leave``; the end of input
  leaves too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib
import logging
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from hp2p.peer.config import PeerConfig
from hp2p.peer.create_guard import remember_admin_key
from hp2p.peer.errors import NotSourceError, SettingsError
from hp2p.peer.settings import NodeSettings, Runtime, Settings, overlay_kind, runtime_of
from hp2p.peer.stdio import (
    delivery_line,
    payload_fields,
    print_event,
    print_line,
    stdin_commands,
)

if TYPE_CHECKING:
    from hp2p.peer.local_api import LocalApi
    from hp2p.peer.mesh_node import MeshDelivery, MeshNode
    from hp2p.peer.node import PeerNode

ENV_VAR = "_HP2P_PEER_RUN"

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


class _ExitError(Exception):
    """End the run with this status; the message (if any) has been printed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _fail(message: str, status: int) -> _ExitError:
    print(f"hp2p peer: {message}", file=sys.stderr, flush=True)
    return _ExitError(status)


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """What the peer says on stdio and reads from stdin (``hp2p peer`` flags).

    ``json_events``: JSON lines instead of the human joined line; ``stdin``: commands;
    ``print_deliveries`` (``--print``): one human line per delivery; ``events_payload``
    (``--events-payload``): ``deliver``/``delivered`` events carry the payload.
    """

    json_events: bool = False
    stdin: bool = False
    print_deliveries: bool = False
    events_payload: bool = False


def launch(
    settings: Settings | NodeSettings,
    config: PeerConfig | None = None,
    *,
    json_events: bool,
    stdin: bool,
    log_level: str,
    print_deliveries: bool = False,
    events_payload: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment that run the lean runtime with these settings.

    ``hp2p peer`` execs it; ``hp2p demo`` starts its peers with it directly, which spares each
    peer process the start-up of the command-line stack (about half of its start-up CPU).
    A ``NodeSettings`` (with an optional ``PeerConfig``) is a tree peer's two sections.
    """
    if isinstance(settings, NodeSettings):
        settings = Settings(node=settings, tree=config or PeerConfig())
    document = {
        "settings": settings.to_document(),
        "json_events": json_events,
        "stdin": stdin,
        "print": print_deliveries,
        "events_payload": events_payload,
        "log_level": log_level,
    }
    argv = [sys.executable, "-m", "hp2p.peer.daemon"]
    return argv, {ENV_VAR: _encoder.encode(document).decode()}


def exec_daemon(settings: Settings, output: Output, *, log_level: str) -> None:
    """Replace this process with the lean peer runtime (does not return)."""
    argv, env = launch(
        settings,
        json_events=output.json_events,
        stdin=output.stdin,
        log_level=log_level,
        print_deliveries=output.print_deliveries,
        events_payload=output.events_payload,
    )
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


# === choosing the peer ==========================================================================


async def choose(settings: Settings) -> tuple[Runtime, Settings]:
    """Which peer to run, and the settings it runs with; refuses what does not apply.

    Raises :class:`SettingsError` (a setting that does not apply to the overlay); a HOMS that
    cannot say what the overlay is ends the run with status 1.
    """
    node = settings.node
    if node.create is not None:
        runtime = settings.created_runtime()
        _load(runtime)
        kind = "a SubMesh (--parent)" if runtime == "mesh" else "a CoreTree (no --parent)"
        settings.check(runtime, f"--create makes {kind}")
        from hp2p.peer.create_guard import DuplicateTitleError, prepare_create
        from hp2p.peer.homs_client import HomsError

        try:
            return runtime, await prepare_create(settings)
        except (HomsError, DuplicateTitleError) as exc:
            raise _fail(str(exc), 1) from None
    if node.join is None:
        raise SettingsError("give --create TITLE or --join OVERLAY-ID-OR-TITLE")
    _load("tree")  # most joins are; a SubMesh peer loads its own stack after the answer
    from hp2p.peer.homs_client import HomsClient, HomsError

    client = HomsClient(
        node.homs,
        timeout=node.homs_timeout,
        attempts=node.homs_attempts,
        rng=random.Random(node.seed),
    )
    try:
        overlay = await client.find_overlay(node.join)
    except HomsError as exc:
        raise _fail(str(exc), 1) from None
    finally:
        await client.aclose()
    runtime = runtime_of(overlay)
    _load(runtime)
    settings.check(runtime, f"overlay {overlay.title!r} is a {overlay_kind(overlay)}")
    # join by id from here on: the node finds the overlay again with one query
    joined = dataclasses.replace(node, join=overlay.overlay_id)
    return runtime, dataclasses.replace(settings, node=joined)


def _load(runtime: Runtime) -> None:
    """Import the peer's stack before the HOMP client (httpx) and before any request.

    Measured: a peer shell imported after httpx, or after httpx's first request, leaves the
    peer process 1-2 MB larger (where the allocator puts the modules' objects), so the stack
    comes first, as it did when each runtime was its own module.
    """
    importlib.import_module("hp2p.peer.node" if runtime == "tree" else "hp2p.peer.mesh_node")


async def run(settings: Settings, output: Output) -> int:
    """Choose the peer, run it until a signal, ``leave`` or failure, leave; the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            generated = settings.node.admin_key is None
            runtime, settings = await _until(stop, choose(settings))
        except SettingsError as exc:
            raise _fail(str(exc), 2) from None
        if runtime == "tree":
            return await run_tree(settings, output, stop, generated_key=generated)
        return await run_mesh(settings, output, stop, generated_key=generated)
    except _ExitError as exc:
        return exc.status


async def _until(stop: asyncio.Event, work: Awaitable[T]) -> T:
    """``work``'s result, or ``_ExitError(0)`` when a signal came first (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _ExitError(0)
    return task.result()


async def _serve(
    stop: asyncio.Event, failed: asyncio.Event | None, *others: Awaitable[Any]
) -> None:
    """Until a signal, ``failed``, or one of ``others`` ends (``leave``, end of stdin)."""
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if failed is not None:
        waiters.append(asyncio.ensure_future(failed.wait()))
    waiters += [asyncio.ensure_future(other) for other in others]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


async def _start_api(node: PeerNode | MeshNode, settings: Settings) -> LocalApi | None:
    """The local API when ``api`` is set (its token file beside the store, if there is one).

    Started before the peer joins, so the port answers from the start: 503 with
    ``Retry-After`` until the peer has joined (:class:`hp2p.peer.local_api.LocalApi`).
    """
    if settings.node.api is None:
        return None
    from hp2p.peer.local_api import LocalApi  # the web stack, only when asked for
    from hp2p.peer.node import NodeError

    try:
        local_api = LocalApi(
            node,
            settings.node.api,
            public=settings.node.api_public,
            token_dir=settings.submesh.store,
        )
        await local_api.start()
    except NodeError as exc:
        raise _fail(str(exc), 1) from None
    return local_api


async def print_deliveries(deliveries: AsyncIterator[Any]) -> None:
    """``--print``: one line per delivered message (tree) or object (SubMesh), for a person."""
    async for item in deliveries:
        if hasattr(item, "object_number"):
            line = delivery_line("object", item.object_number, item.data, item.lost)
        else:
            line = delivery_line(item.source, item.sequence, item.data, item.lost)
        print_line(line)


def api_fields(local_api: LocalApi | None) -> dict[str, Any]:
    """``api``, ``api_token`` and ``api_token_file`` of the joined line and event (None: off)."""
    if local_api is None:
        return {"api": None, "api_token": None, "api_token_file": None}
    token_file = str(local_api.token_file) if local_api.token_file else None
    return {"api": local_api.url, "api_token": local_api.token, "api_token_file": token_file}


# === tree peer (CoreTree, SubTree) ==============================================================


async def run_tree(
    settings: Settings, output: Output, stop: asyncio.Event, *, generated_key: bool = False
) -> int:
    """Join, print the one 'joined' line, serve until a signal, ``leave`` or failure; leave.

    ``generated_key``: this run made up the admin key of the overlay it creates (printed once).
    """
    from hp2p.peer.node import NodeError, PeerNode

    joined = False
    early: list[dict[str, Any]] = []

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        # The 'joined' line comes first. Path changes while joining go to the log only;
        # deliveries that beat the line are printed right after it.
        if joined:
            # Every line carries the peer's own clock ("t", Unix seconds): a reader that is
            # slow to read (a benchmark following 200 peers) still knows when it happened.
            print_event(kind, fields if "t" in fields else {**fields, "t": time.time()})
        elif kind == "deliver" and len(early) < 100_000:
            early.append(fields)

    sink = on_event if output.json_events else None
    try:
        node = PeerNode(settings.node, settings.tree, on_event=sink)
    except NodeError as exc:
        raise _fail(str(exc), 2) from None
    node.event_payload = output.events_payload
    printed = node.subscribe() if output.print_deliveries else None
    local_api = None
    start_failed = False
    try:
        local_api = await _start_api(node, settings)  # 503 until joined
        try:
            await _until(stop, node.start())
        except NodeError as exc:
            start_failed = True  # start() has released what it had opened
            raise _fail(str(exc), 1) from None
        joined = True
        if node.core is not None:
            remember_admin_key(settings, node.core.overlay_id, generated=generated_key)
        _announce_tree(node, local_api, output.json_events, early)
        tasks = [serve_tree_commands(node)] if output.stdin else []
        if printed is not None:
            tasks.append(print_deliveries(printed))
        await _serve(stop, node.failed, *tasks)
        if node.failed.is_set():
            print(
                f"hp2p peer: lost the tree and could not re-attach: {node.failure}", file=sys.stderr
            )
            return 1
        return 0
    finally:
        if local_api is not None:
            await local_api.stop()
        if not start_failed:  # also after SIGINT/SIGTERM while joining: give up, leave cleanly
            await node.close()


def _announce_tree(
    node: PeerNode, local_api: LocalApi | None, json_events: bool, early: list[dict[str, Any]]
) -> None:
    """The one line (or ``joined`` event, then the deliveries that beat it) once attached."""
    info = {**node.joined_info(), **api_fields(local_api)}
    if json_events:
        print_event("joined", info)
        for fields in early:
            print_event("deliver", fields)
        early.clear()
        return
    print(
        f"hp2p peer: joined peer-id={info['peer_id']} overlay-id={info['overlay_id']} "
        f"ticket={info['ticket']} r2={info['r2']} api={info['api'] or '-'} "
        f"api-token={info['api_token'] or '-'} "
        f"parent={info['parent'] or '-'} depth={info['depth']}",
        flush=True,
    )


def _config_json(config: Any) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    if "pinned" in values:
        values["pinned"] = sorted(values["pinned"])
    return values


async def serve_tree_commands(node: PeerNode) -> None:
    """``--stdin`` commands until ``leave`` or end of input; answers are JSON lines."""
    from hp2p.peer.api import scan_json
    from hp2p.peer.node import NodeError

    async for command, argument, line in stdin_commands():
        try:
            if command == "publish":
                node.publish(argument.encode("utf-8"))
            elif command == "scan":
                print_event("scan", {**scan_json(await node.scan_tree()), "t": time.time()})
            elif command == "status":
                config = node.core.config if node.core is not None else node.config
                print_event("status", {**node.status(), "config": _config_json(config)})
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


# === SubMesh peer ===============================================================================


async def run_mesh(
    settings: Settings, output: Output, stop: asyncio.Event, *, generated_key: bool = False
) -> int:
    """The same life as :func:`run_tree`, for a SubMesh peer (whole objects, not messages)."""
    from hp2p.peer.mesh_node import MeshNode, MeshNodeError, MeshSettings

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if output.json_events:
            print_event(kind, {**fields, "t": time.time()})

    try:
        node = MeshNode(MeshSettings.from_settings(settings), on_event=on_event)
    except MeshNodeError as exc:
        raise _fail(str(exc), 2) from None
    subscription = node.subscribe()
    local_api = None
    start_failed = False
    try:
        local_api = await _start_api(node, settings)  # 503 until joined
        try:
            await _join_mesh(node, settings.node.join_timeout, stop)
        except _ExitError as exc:
            start_failed = exc.status != 0  # a failed start() has released what it opened
            raise
        remember_admin_key(settings, node.overlay_id or "", generated=generated_key)
        _announce_mesh(node, local_api, output.json_events)
        reporting = (
            print_deliveries(subscription)
            if output.print_deliveries
            else report_objects(subscription, output)
        )
        commands = [serve_mesh_commands(node)] if output.stdin else []
        await _serve(stop, None, reporting, *commands)
        return 0
    finally:
        if local_api is not None:
            await local_api.stop()
        if not start_failed:
            await node.close()


async def _join_mesh(node: MeshNode, limit: float, stop: asyncio.Event) -> None:
    """``node.start()`` within ``join_timeout``; a failure ends the run with status 1."""
    from hp2p.peer.mesh_node import MeshNodeError

    try:
        await _until(stop, asyncio.wait_for(node.start(), limit))
    except MeshNodeError as exc:  # start() has released what it had opened
        raise _fail(str(exc), 1) from None
    except TimeoutError:
        await node.close()
        raise _fail(f"not joined to the SubMesh within {limit:g} s (join_timeout)", 1) from None


async def report_objects(deliveries: AsyncIterator[MeshDelivery], output: Output) -> None:
    """``delivered`` events (with ``--json-events``), the payload with ``--events-payload``."""
    async for delivery in deliveries:
        if output.json_events:
            fields = {
                "object": delivery.object_number,
                "sha256": hashlib.sha256(delivery.data).hexdigest(),
                "lost": delivery.lost,
                "t": time.time(),
            }
            if output.events_payload:
                fields |= {"app_id": delivery.app_id, **payload_fields(delivery.data)}
            print_event("delivered", fields)


def _announce_mesh(node: MeshNode, local_api: LocalApi | None, json_events: bool) -> None:
    """The one line (or ``joined`` event) a SubMesh peer prints once it has joined."""
    api = api_fields(local_api)
    info = {
        "peer_id": node.peer_id,
        "overlay_id": node.overlay_id,
        "source_id": node.source_id,
        "r2": node.address,
        **api,
        "mesh": True,
        "source_key": node.source_key,
        "signing_key": node.signer.public_text if node.signer else None,
    }
    if json_events:
        print_event("joined", info)
    else:
        print(
            f"hp2p peer: joined SubMesh peer-id={node.peer_id} overlay-id={node.overlay_id} "
            f"source={node.source_id} r2={node.address} api={api['api'] or '-'} "
            f"api-token={api['api_token'] or '-'}",
            flush=True,
        )


async def serve_mesh_commands(node: MeshNode) -> None:
    """A SubMesh peer's ``--stdin`` commands; ``publish-*`` work on the source only."""
    from hp2p.peer.mesh_node import MeshNodeError

    async for command, argument, _line in stdin_commands():
        try:
            data: bytes | None = None
            if command == "publish":
                data = argument.encode("utf-8")
            elif command == "publish-file":
                data = await asyncio.to_thread(Path(argument).read_bytes)
            elif command == "publish-random":
                size, _, seed = argument.partition(" ")
                data = random.Random(int(seed or 0)).randbytes(int(size))
            elif command == "status":
                config = _config_json(node.settings.config)
                print_event("status", {**node.status(), "config": config})
            elif command == "leave":
                return
            elif command:
                print_event(
                    "error",
                    {
                        "reason": f"unknown command {command!r}; use publish TEXT, publish-file "
                        "PATH, publish-random SIZE SEED, status or leave",
                    },
                )
            if data is not None:
                node.publish(data)  # the node's 'published' event says which object
        except (NotSourceError, MeshNodeError, ValueError, OSError) as exc:
            print_event("error", {"reason": str(exc)})


# === entry point ================================================================================


def main() -> int:
    raw = os.environ.pop(ENV_VAR, None)
    if raw is None:
        print("hp2p.peer.daemon is started by `hp2p peer`; run that instead.", file=sys.stderr)
        return 2
    document = msgspec.json.decode(raw)
    logging.basicConfig(
        level=document["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_document(document["settings"])
    except (SettingsError, TypeError) as exc:
        print(f"hp2p peer: {exc}", file=sys.stderr)
        return 2
    _load(settings.created_runtime() if settings.node.create is not None else "tree")
    output = Output(
        json_events=document["json_events"],
        stdin=document["stdin"],
        print_deliveries=document.get("print", False),
        events_payload=document.get("events_payload", False),
    )
    return asyncio.run(run(settings, output))


if __name__ == "__main__":
    sys.exit(main())
