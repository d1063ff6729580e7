"""``hp2p iot state``: a member of an IoT overlay that keeps its live state and serves it.

It joins the overlay (normally the SubTree the R3 bridge feeds with ``--subtree
live:hp2p-iot``; a CoreTree works too) as an ordinary peer, feeds every delivery of app-id
``hp2p-iot`` to :class:`~hp2p.apps.iot.state.LiveState` through
:class:`~hp2p.apps.iot.state_feed.StateFeed`, and serves the read-only API of
:mod:`hp2p.apps.iot.state_api`. With ``--mqtt-out`` it republishes each applied reading,
retained, to a local broker (:mod:`hp2p.apps.iot.mqtt_out`). Runs until Ctrl-C / SIGTERM, then
leaves the overlay.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hp2p.apps.iot.state import ChangeLog, LiveState
from hp2p.apps.iot.state_feed import StateFeed

if TYPE_CHECKING:
    from hp2p.apps.iot.state_api import StateApi
    from hp2p.peer.node import PeerNode

__all__ = ["EPILOG", "command"]

EPILOG = """
Examples:

  hp2p bridge --core iot --id b1 --subtree live:hp2p-iot     # the SubTree this reads

  hp2p iot state --homs http://127.0.0.1:8081 --join live --api 127.0.0.1:8720

  curl http://127.0.0.1:8720/state?prefix=sensors/           # every topic under sensors/

  curl http://127.0.0.1:8720/state/sensors/dev-0001/temp     # one topic

  curl -N http://127.0.0.1:8720/state/stream                 # Server-Sent Events

  hp2p iot state --join live --mqtt-out mqtt://127.0.0.1:1883 --out-prefix live/

  hp2p iot watch --api http://127.0.0.1:8720

The API is read-only and needs no token unless --api-token (or --api-public) is given; it
refuses foreign Host and Origin headers like the peer's local API. docs/iot.md has the rest.
"""


def _fail(message: str, status: int = 1) -> typer.Exit:
    print(f"hp2p iot state: {message}", file=sys.stderr, flush=True)
    return typer.Exit(status)


def command(
    join: Annotated[str, typer.Option("--join", help="overlay-id or title to join (SubTree)")],
    homs: Annotated[str, typer.Option(help="HOMS URL")] = "http://127.0.0.1:8081",
    api: Annotated[str, typer.Option(help="HOST:PORT of the state API")] = "127.0.0.1:8720",
    api_token: Annotated[
        bool, typer.Option("--api-token", help="require a bearer token (printed at start)")
    ] = False,
    api_public: Annotated[
        bool, typer.Option("--api-public", help="allow a non-loopback --api (token required)")
    ] = False,
    mqtt_out: Annotated[
        str | None, typer.Option(help="republish applied readings, retained: mqtt://HOST:PORT")
    ] = None,
    out_prefix: Annotated[str, typer.Option(help="prefix of the republished topics")] = "",
    max_topics: Annotated[int, typer.Option(min=1, help="topics kept (LRU beyond)")] = 10_000,
    max_streams: Annotated[int, typer.Option(min=1, help="SSE/WS clients at once")] = 64,
    peer_id: Annotated[str | None, typer.Option("--id", help="this peer's id")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for R2 (TCP)")] = "127.0.0.1:0",
    json_events: Annotated[
        bool, typer.Option("--json-events", help="JSON lines on stdout (joined, change, left)")
    ] = False,
    log_level: Annotated[str, typer.Option(help="error, warning, info or debug")] = "warning",
) -> None:
    """Keep the live state (latest reading per topic) of an IoT overlay and serve it."""
    level = log_level.upper()
    if level not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        raise _fail("--log-level must be error, warning, info or debug", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from hp2p.apps.iot.mqtt_out import MqttOut, MqttUrlError  # aiomqtt: only when run

    try:
        out = MqttOut(mqtt_out, prefix=out_prefix, max_pending=max_topics) if mqtt_out else None
    except MqttUrlError as exc:
        raise _fail(str(exc), 2) from None
    options = {"homs": homs, "join": join, "listen": listen}
    if peer_id:
        options["peer_id"] = peer_id
    state = LiveState(max_topics, log=ChangeLog())
    feed = StateFeed(state, mqtt_out=out, max_clients=max_streams)
    status = asyncio.run(_run(feed, options, api, api_token, api_public, json_events))
    raise typer.Exit(status)


async def _run(
    feed: StateFeed,
    options: dict[str, Any],
    api: str,
    token: bool,
    public: bool,
    json_events: bool,
) -> int:
    """Join, serve, run until a signal or the peer failed; leave. The exit status."""
    from hp2p.apps.iot.state_api import StateApi, StateApiError, build_state_app
    from hp2p.peer.node import NodeError, PeerNode
    from hp2p.peer.settings import NodeSettings
    from hp2p.peer.stdio import print_event

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        node = PeerNode(NodeSettings(**options))
        server = StateApi(build_state_app(feed, node.status), api, public=public, token=token)
    except (NodeError, StateApiError, ValueError) as exc:
        print(f"hp2p iot state: {exc}", file=sys.stderr, flush=True)
        return 2
    problem = await _tree_overlay_problem(options["homs"], options["join"])
    if problem:
        print(f"hp2p iot state: {problem}", file=sys.stderr, flush=True)
        return 1
    if json_events:
        feed.on_change = lambda c: print_event("change", {"version": c.version, "topic": c.topic})
    try:
        await node.start()
        await server.start()
    except (NodeError, StateApiError) as exc:
        print(f"hp2p iot state: {exc}", file=sys.stderr, flush=True)
        await server.stop()
        await node.close()
        return 1
    return await _serve(feed, node, server, stop, json_events)


async def _serve(
    feed: StateFeed, node: PeerNode, server: StateApi, stop: asyncio.Event, json_events: bool
) -> int:
    """Feed the state and serve until a signal or the peer failed; leave. The exit status."""
    from hp2p.peer.stdio import print_event

    pump = asyncio.create_task(feed.pump(node.subscribe(4096)), name="hp2p-iot-state")
    if feed.mqtt_out is not None:
        feed.mqtt_out.start()
    _print_joined(node.joined_info(), server.url, server.token, json_events)
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.failed.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        pump.cancel()
        if feed.mqtt_out is not None:
            await feed.mqtt_out.close()
        await server.stop()
        await node.close()
    if node.failed.is_set():
        print(f"hp2p iot state: lost the overlay: {node.failure}", file=sys.stderr, flush=True)
        return 1
    if json_events:
        print_event("left", {"status": feed.status()})
    return 0


async def _tree_overlay_problem(homs: str, join: str) -> str | None:
    """Why ``join`` cannot be joined here (unknown, or a SubMesh), or None."""
    from hp2p.peer.homs_client import HomsClient, HomsError
    from hp2p.peer.settings import overlay_kind

    client = HomsClient(homs)
    try:
        kind = overlay_kind(await client.find_overlay(join))
    except HomsError as exc:
        return str(exc)
    finally:
        await client.aclose()
    if kind == "SubMesh":
        return (
            f"overlay {join!r} is a SubMesh; the live state is kept on a SubTree (or the "
            "CoreTree): join the bridge's --subtree target"
        )
    return None


def _print_joined(info: dict[str, Any], url: str, token: str | None, json_events: bool) -> None:
    if json_events:
        from hp2p.peer.stdio import print_event

        print_event("joined", {**info, "api": url, "api_token": token})
        return
    print(
        f"hp2p iot state: joined peer-id={info['peer_id']} overlay-id={info['overlay_id']} "
        f"api={url} api-token={token or '-'} (GET {url}/state, hp2p iot watch --api {url})",
        flush=True,
    )
