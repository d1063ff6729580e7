"""``hp2p iot gateway``: MQTT messages into the CoreTree, one broadcast per message (Q.4100 §9.1).

A gateway is an ordinary CoreTree peer (:class:`~hp2p.peer.node.PeerNode`) that is also an
MQTT client. Each message the broker delivers becomes one :class:`~hp2p.apps.iot.reading.Reading`
(this peer's id as ``gateway``, its start time as ``epoch``, ``number`` 1, 2, 3 …) broadcast with
app-id :data:`~hp2p.apps.iot.reading.APP_ID`. Several gateways are several sources of the one
CoreTree, each under its own peer-id.

Three tasks run around the pure :class:`~hp2p.apps.iot.ingest.IngestQueue`:

* the MQTT task connects, subscribes with QoS 1 on a persistent session (``clean_session``
  False, a client id derived from the peer-id), and offers every message to the queue. When
  the broker goes away it reconnects with bounded, jittered back-off; the broker keeps the QoS 1
  messages of the session meanwhile and delivers them on reconnection;
* the publish task takes readings from the queue into the tree. A slow or stalled tree fills
  the queue; then the oldest (or newest) reading is dropped, counted, and the drop is a visible
  hole in the numbering;
* the status task reports the counters every ``status_interval`` seconds.

Malformed messages (too large, bad topic) are counted by reason and never stop the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from hp2p.apps.iot.broker import BrokerAddress, parse_broker
from hp2p.apps.iot.ingest import Backoff, EventBudget, IngestQueue, WhenFull
from hp2p.apps.iot.reading import APP_ID, MAX_TOPIC, PAYLOAD_TYPE, Reading, encode_reading
from hp2p.peer.config import PeerConfig
from hp2p.peer.settings import NodeSettings, overlay_kind
from hp2p.peer.stdio import print_event

if TYPE_CHECKING:
    import aiomqtt

    from hp2p.peer.node import PeerNode

log = logging.getLogger("hp2p.apps.iot.gateway")

EventSink = Callable[[str, dict[str, Any]], None]

#: Tree events a gateway passes on (its own deliveries of other sources' readings are not).
TREE_EVENTS = frozenset(
    {"attached", "detached", "join_failed", "peer_lost", "forgotten", "r2_limit", "error"}
)
#: Seconds the gateway keeps publishing what is queued when it leaves.
FLUSH_ON_CLOSE = 2.0


class GatewayError(Exception):
    """The gateway could not start; ``str(err)`` says what failed and what to do."""


def check_filter(topic: str) -> str:
    """``topic`` if it is a valid MQTT subscription filter, else :class:`GatewayError`."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        raise GatewayError(f"topic filter {topic[:40]!r} is not valid UTF-8") from None
    if not topic or size > MAX_TOPIC or "\0" in topic:
        raise GatewayError(f"topic filter {topic[:40]!r} must be 1..{MAX_TOPIC} bytes, no NUL")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise GatewayError(f"topic filter {topic!r}: '#' must be a whole, last level")
        if "+" in level and level != "+":
            raise GatewayError(f"topic filter {topic!r}: '+' must be a whole level")
    return topic


class Gateway:
    """An MQTT-to-CoreTree gateway: ``await start()``, ``await close()`` (see the module).

    ``node`` joins (``join``) or creates (``create``) the CoreTree; ``config`` is its tree
    core's configuration. ``on_event(kind, fields)`` hears the gateway's events.
    """

    def __init__(
        self,
        node: NodeSettings,
        *,
        broker: BrokerAddress | str,
        topics: Sequence[str],
        config: PeerConfig | None = None,
        queue: int = 10_000,
        queue_bytes: int = 64 << 20,
        when_full: WhenFull = "oldest",
        client_id: str | None = None,
        subscribe_qos: int = 1,
        reconnect_max: float = 10.0,
        status_interval: float = 5.0,
        on_event: EventSink | None = None,
    ) -> None:
        from hp2p.peer.node import NodeError, PeerNode

        if not topics:
            raise GatewayError("give at least one MQTT topic filter (--topic 'sensors/#')")
        if subscribe_qos not in (0, 1, 2):
            raise GatewayError(f"the subscription QoS is 0, 1 or 2, not {subscribe_qos}")
        if status_interval <= 0 or reconnect_max <= 0:
            raise GatewayError("the status interval and the reconnect maximum must be > 0 s")
        self.broker = parse_broker(broker) if isinstance(broker, str) else broker
        self.topics = [check_filter(t) for t in topics]
        self.subscribe_qos = subscribe_qos
        self.status_interval = status_interval
        self.on_event = on_event
        # everything is checked before the node, which opens a HOMS client, exists
        self.peer_id = _checked_id(node.peer_id or f"peer-{secrets.token_hex(4)}", "the peer-id")
        self.client_id = _checked_id(client_id or f"hp2p-gw-{self.peer_id}", "the MQTT client id")
        #: Whether the MQTT session outlives this run: only with a client id that the next run
        #: uses again (--id or --client-id). Under a random peer-id the session still spans
        #: reconnections, and :meth:`close` ends it, so that it does not queue for nobody.
        self.persistent = client_id is not None or node.peer_id is not None
        self.epoch = time.time_ns()
        try:
            self.ingest = IngestQueue(self.peer_id, self.epoch, queue, when_full, queue_bytes)
        except ValueError as exc:
            raise GatewayError(str(exc)) from None
        try:
            settings = dataclasses.replace(node, peer_id=self.peer_id)
            self.node: PeerNode = PeerNode(settings, config, on_event=self._tree_event)
        except NodeError as exc:
            raise GatewayError(str(exc)) from None
        self.backoff = Backoff(0.2, max(0.2, reconnect_max), random.Random(secrets.randbits(32)))
        self.connected = False
        self.connections = 0
        self.last_mqtt_error: str | None = None
        #: Set when the gateway cannot go on (the tree was lost); ``failure`` says why.
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self._malformed_events = EventBudget(limit=20, interval=status_interval)
        self._ready = asyncio.Event()
        self._mqtt_task: asyncio.Task[None] | None = None
        self._publish_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # === life cycle ==============================================================================
    async def start(self) -> None:
        """Join the CoreTree, then start the MQTT, publish and status tasks."""
        from hp2p.peer.homs_client import HomsError
        from hp2p.peer.node import NodeError

        try:
            await self._check_overlay()
            await self.node.start()
        except (NodeError, HomsError, GatewayError) as exc:
            await self.node.close()
            raise GatewayError(str(exc)) from None
        self._started = True
        loop = asyncio.get_running_loop()
        self._mqtt_task = loop.create_task(self._mqtt_loop(), name="hp2p-iot-mqtt")
        self._publish_task = loop.create_task(self._publish_loop(), name="hp2p-iot-publish")
        self._tasks = [
            self._mqtt_task,
            self._publish_task,
            loop.create_task(self._status_loop(), name="hp2p-iot-status"),
            loop.create_task(self._watch_tree(), name="hp2p-iot-tree"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        self._emit("joined", self.joined_info())

    async def _check_overlay(self) -> None:
        """A gateway joins a CoreTree: refuse a SubTree or SubMesh before joining it."""
        join = self.node.settings.join
        if join is None:
            return
        overlay = await self.node.homs.find_overlay(join)
        kind = overlay_kind(overlay)
        if kind != "CoreTree":
            raise GatewayError(
                f"overlay {overlay.title!r} is a {kind}: a gateway publishes into a CoreTree; "
                "give the CoreTree's id or title to --overlay"
            )

    def joined_info(self) -> dict[str, Any]:
        info = self.node.joined_info()
        return {
            "gateway": self.peer_id,
            "overlay_id": info["overlay_id"],
            "r2": info["r2"],
            "parent": info["parent"],
            "epoch": self.epoch,
            "mqtt": str(self.broker),
            "client_id": self.client_id,
            "topics": self.topics,
            "queue": self.ingest.capacity,
            "queue_bytes": self.ingest.max_bytes,
            "when_full": self.ingest.when_full,
            "persistent": self.persistent,
        }

    async def close(self) -> None:
        """Stop MQTT (the session stays on the broker), flush the queue briefly, leave."""
        if self._mqtt_task is not None:  # first: nothing more is acknowledged to the broker
            await _cancel(self._mqtt_task)
            if not self.persistent:
                await self._end_session()
        if self._publish_task is not None:  # the flush below publishes what is left
            await _cancel(self._publish_task)
        if self._started:
            await self._flush(FLUSH_ON_CLOSE)
        for task in self._tasks:
            await _cancel(task)
        lost = self.ingest.drop_rest()
        if self._started:
            self._emit("status", self.status())
        await self.node.close()
        if self._started:
            self._started = False
            self._emit("left", {"gateway": self.peer_id, "unpublished": lost})

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def status(self) -> dict[str, Any]:
        """The counters (received, published, dropped, malformed, reconnects …) and the state
        of the MQTT connection and of the tree, JSON-ready."""
        return {
            **self.ingest.status(),
            "mqtt_connected": self.connected,
            "mqtt_client_id": self.client_id,
            "mqtt_last_error": self.last_mqtt_error,
            "malformed_events_suppressed": self._malformed_events.suppressed,
            "tree": self.node.state,
            # frames the tree's links refused (a neighbour too slow): recovered by data
            # recovery, not by the gateway, so reported apart from ``dropped``
            "tree_overflow_drops": self.node.status()["links"]["overflow_drops"],
            "t": time.time(),
        }

    # === MQTT ====================================================================================
    async def _mqtt_loop(self) -> None:
        """Connect, subscribe, take messages; on any broker failure back off and connect again."""
        import aiomqtt

        while True:
            client = aiomqtt.Client(
                **self.broker.client_kwargs(),
                identifier=self.client_id,
                clean_session=False,
                keepalive=10,
                timeout=10,
            )
            try:
                async with client:
                    await self._connected(client)
                    async for message in client.messages:
                        self._on_message(message)
                reason = "the broker closed the connection"
            except aiomqtt.MqttError as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                self._take_left(client)
            await asyncio.sleep(self._disconnected(reason))

    def _take_left(self, client: aiomqtt.Client) -> None:
        """Offer the messages a lost connection left in the client's queue.

        paho acknowledges a QoS 1 message (PUBACK) as it queues it, so the broker will not send
        it again; aiomqtt's iterator stops at the disconnection without emptying its queue.
        (``_queue`` is aiomqtt 2.5's, the version pinned.)
        """
        queue = client._queue
        while not queue.empty():
            self._on_message(queue.get_nowait())

    async def _end_session(self) -> None:
        """Ask the broker to forget this run's session (a clean-session connection)."""
        import aiomqtt

        client = aiomqtt.Client(
            **self.broker.client_kwargs(), identifier=self.client_id, clean_session=True, timeout=2
        )
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
            async with asyncio.timeout(3):
                async with client:
                    pass

    async def _connected(self, client: aiomqtt.Client) -> None:
        self.connections += 1
        if self.connections > 1:
            self.ingest.counters.reconnects += 1
        for topic in self.topics:
            granted = await client.subscribe(topic, qos=self.subscribe_qos)
            if any(_refused(code) for code in granted):
                raise GatewayError(
                    f"the MQTT broker {self.broker} refused the subscription to {topic!r} "
                    "(an ACL?): allow this client to read it, or drop the --topic"
                )
        self.connected = True
        self.backoff.reset()
        self._emit(
            "mqtt_connected",
            {
                "mqtt": str(self.broker),
                "client_id": self.client_id,
                "topics": self.topics,
                "qos": self.subscribe_qos,
                "persistent": self.persistent,
                "reconnect": self.connections > 1,
            },
        )

    def _disconnected(self, reason: str) -> float:
        """Count and announce a lost (or refused) connection; the seconds to wait before the
        next attempt."""
        was = self.connected
        self.connected = False
        self.last_mqtt_error = reason
        self.ingest.counters.mqtt_failures += 1
        retry = self.backoff.next()
        self._emit(
            "mqtt_lost" if was else "mqtt_unreachable",
            {"mqtt": str(self.broker), "reason": reason[:200], "retry_in": round(retry, 3)},
        )
        return retry

    def _on_message(self, message: aiomqtt.Message) -> None:
        payload = message.payload  # bytes: paho hands over what the broker sent
        topic = message.topic.value
        offer = self.ingest.offer(topic, bytes(payload), int(message.qos), time.time())
        if offer.malformed is not None:
            self._malformed(topic, offer.malformed, len(payload))
            return
        self._ready.set()
        if offer.full_began:
            self._emit(
                "queue_full",
                {
                    "queued": len(self.ingest),
                    "dropped": self.ingest.counters.dropped,
                    "when_full": self.ingest.when_full,
                },
            )
        elif offer.full_ended:
            self._emit(
                "queue_ok",
                {"dropped_run": offer.full_ended, "dropped": self.ingest.counters.dropped},
            )

    def _malformed(self, topic: str, reason: str, size: int) -> None:
        if self._malformed_events.allow(time.monotonic()):
            self._emit("malformed", {"topic": topic[:80], "reason": reason, "size": size})

    # === tree ====================================================================================
    async def _publish_loop(self) -> None:
        while True:
            reading = self.ingest.take()
            if reading is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._publish_reading(reading)
            await asyncio.sleep(0)  # let the MQTT task and the links run between readings

    async def _publish_reading(self, reading: Reading) -> None:
        from hp2p.peer.node import MessageTooLargeError, NodeError

        try:
            await self.send(encode_reading(reading))
        except asyncio.CancelledError:  # leaving while the tree stalls: lost, and counted
            self.ingest.counters.dropped += 1
            raise
        except MessageTooLargeError:
            self.ingest.count_malformed("too_large_for_tree")
            self._malformed(reading.topic, "too_large_for_tree", len(reading.payload))
            return
        except NodeError as exc:  # the node left or failed: the reading is lost, counted
            self.ingest.counters.dropped += 1
            log.warning("reading %d not published: %s", reading.number, exc)
            return
        self.ingest.published()

    async def send(self, data: bytes) -> None:
        """Broadcast one encoded reading: the one place readings enter the tree."""
        self.node.publish(data, app_id=APP_ID, payload_type=PAYLOAD_TYPE)

    async def _flush(self, within: float) -> None:
        """Publish what is queued, for at most ``within`` seconds (the gateway is leaving)."""
        deadline = time.monotonic() + within

        async def drain() -> None:
            while (reading := self.ingest.take()) is not None:
                await self._publish_reading(reading)
                if time.monotonic() > deadline:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain(), within)

    async def _watch_tree(self) -> None:
        await self.node.failed.wait()
        self.failure = f"lost the CoreTree and could not re-attach: {self.node.failure}"
        self._emit("error", {"reason": self.failure})
        self.failed.set()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval)
            self._emit("status", self.status())

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task that ended by itself is a bug: say so and stop, never limp on silently."""
        if task.cancelled() or self.failed.is_set():
            return
        exc = task.exception()
        if isinstance(exc, GatewayError):
            self.failure = str(exc)
        else:
            self.failure = f"{task.get_name()} stopped: {exc!r}"
        log.error("gateway task %s failed", task.get_name(), exc_info=exc)
        self._emit("error", {"reason": self.failure})
        self.failed.set()

    # === events ==================================================================================
    def _tree_event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind in TREE_EVENTS:
            self._emit(f"tree_{kind}" if kind != "error" else "error", fields)

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, {**fields, "t": fields.get("t", time.time())})
        except Exception:
            log.exception("gateway event callback failed on %s", kind)


def _checked_id(value: str, what: str) -> str:
    """``value`` if it can name a peer and an MQTT client (1..128 characters of UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise GatewayError(f"{what} {value!r} is not valid UTF-8") from None
    if not 1 <= len(value) <= 128:
        raise GatewayError(f"{what} must be 1..128 characters")
    return value


def _refused(code: object) -> bool:
    """Whether one SUBACK return code refuses the subscription (0x80 and up)."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


# === command line ================================================================================
EPILOG = """
Examples:

  # a CoreTree 'iot' created by this gateway, fed by every sensors/… topic of a local broker
  hp2p iot gateway --mqtt mqtt://127.0.0.1:1883 --topic 'sensors/#' --create iot --id gw1

  # a second gateway (a second source) joins it, with JSON events on stdout
  hp2p iot gateway --topic 'sensors/#' --topic 'plant/+/power' --overlay iot --id gw2 \\
      --json-events

  # a small queue that keeps the newest readings when the tree falls behind
  hp2p iot gateway --topic 'sensors/#' --overlay iot --queue 1000 --when-full newest

Each MQTT message becomes one CoreTree broadcast (app-id hp2p-iot) numbered 1, 2, 3 … per
gateway run. A full queue drops a reading (counted, and a hole in the numbering); messages
larger than 60,000 bytes or with topics over 256 bytes are counted as malformed. Give --id:
the MQTT client id (hp2p-gw-ID) names a persistent session, so QoS 1 messages that arrive
while the gateway is away (or reconnecting) wait on the broker. The broker password can come
from $HP2P_MQTT_PASSWORD. Peer settings (--set, --config, HP2P_<KEY>) are those of hp2p peer.
JSON events: joined, mqtt_connected, mqtt_lost, mqtt_unreachable, malformed, queue_full,
queue_ok, status (every --status-interval s), tree_attached, tree_detached, error, left
(docs/iot.md).
"""


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"hp2p iot gateway: {message}", err=True)
    raise typer.Exit(code)


def command(
    topic: Annotated[
        list[str],
        typer.Option("--topic", help="MQTT topic filter to subscribe to (repeatable), 'a/#'."),
    ],
    mqtt: Annotated[
        str, typer.Option("--mqtt", help="MQTT broker, mqtt://[USER@]HOST[:PORT] or mqtts://.")
    ] = "mqtt://127.0.0.1:1883",
    homs: Annotated[
        str | None, typer.Option("--homs", help="HOMS URL (default http://127.0.0.1:8081).")
    ] = None,
    overlay: Annotated[
        str | None,
        typer.Option("--overlay", help="Join the CoreTree with this OVERLAY-ID or TITLE."),
    ] = None,
    create: Annotated[
        str | None, typer.Option("--create", help="Create a CoreTree with this TITLE and join it.")
    ] = None,
    peer_id: Annotated[
        str | None,
        typer.Option("--id", help="Peer-id, the readings' gateway (default: peer-<random>)."),
    ] = None,
    queue: Annotated[
        int, typer.Option("--queue", help="Readings waiting for the tree, at most.")
    ] = 10_000,
    queue_mib: Annotated[
        float, typer.Option("--queue-mib", help="Bytes of readings waiting, at most (MiB).")
    ] = 64.0,
    when_full: Annotated[
        str, typer.Option("--when-full", help="Drop the 'oldest' or 'newest' reading when full.")
    ] = "oldest",
    client_id: Annotated[
        str | None,
        typer.Option("--client-id", help="MQTT client id (default hp2p-gw-<peer-id>)."),
    ] = None,
    qos: Annotated[int, typer.Option("--qos", help="Subscription QoS: 0, 1 or 2.")] = 1,
    reconnect_max: Annotated[
        float, typer.Option("--reconnect-max", help="Longest wait (s) between reconnections.")
    ] = 10.0,
    status_interval: Annotated[
        float, typer.Option("--status-interval", help="Seconds between status reports.")
    ] = 5.0,
    json_events: Annotated[
        bool, typer.Option("--json-events", help="Print JSON lines (events, status) to stdout.")
    ] = False,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT for R2 (default 127.0.0.1:0).")
    ] = None,
    access_key: Annotated[
        str | None, typer.Option("--access-key", help="The CoreTree's access key, if closed.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML peer settings file (as hp2p peer).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Peer setting KEY=VALUE (repeatable; see hp2p peer --help)."),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Log level on stderr: error, warning, info, debug.")
    ] = "warning",
) -> None:
    """Gateway: subscribe to an MQTT broker, broadcast each message into a CoreTree."""
    from hp2p.apps.iot.broker import BrokerError
    from hp2p.peer.settings import SettingsError, merge, parse_assignments

    level = log_level.upper()
    if level not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        _fail(f"--log-level must be error, warning, info or debug, not {log_level!r}", 2)
    if (overlay is None) == (create is None):
        _fail("give --overlay ID-OR-TITLE (join a CoreTree) or --create TITLE, not both", 2)
    if when_full not in ("oldest", "newest"):
        _fail(f"--when-full is 'oldest' or 'newest', not {when_full!r}", 2)
    flags: dict[str, Any] = {
        "homs": homs,
        "create": create,
        "join": overlay,
        "peer_id": peer_id,
        "listen": listen,
        "access_key": access_key,
    }
    try:
        flags.update(parse_assignments(set_ or []))
        settings = merge(file=config, flags=flags)
        settings.check("tree", "a gateway is a CoreTree peer")
        gateway = Gateway(
            settings.node,
            config=settings.tree,
            broker=mqtt,
            topics=topic,
            queue=queue,
            queue_bytes=int(queue_mib * (1 << 20)),
            when_full=when_full,  # type: ignore[arg-type]
            client_id=client_id,
            subscribe_qos=qos,
            reconnect_max=reconnect_max,
            status_interval=status_interval,
            on_event=print_event if json_events else HumanEvents(),
        )
    except (SettingsError, BrokerError, GatewayError, ValueError) as exc:
        _fail(str(exc), 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = asyncio.run(_serve(gateway))
    if status:
        raise typer.Exit(status)


async def _serve(gateway: Gateway) -> int:
    """Run until SIGINT/SIGTERM or failure; leave cleanly; the exit status."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
    except GatewayError as exc:
        print(f"hp2p iot gateway: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gateway.failed.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
    finally:
        await gateway.close()
    if gateway.failed.is_set():
        print(f"hp2p iot gateway: {gateway.failure}", file=sys.stderr, flush=True)
        return 1
    return 0


class HumanEvents:
    """Events for a person: one line each on stdout, status as a one-line summary."""

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "status":
            line = (
                f"received={fields['received']} published={fields['published']} "
                f"dropped={fields['dropped']} malformed={fields['malformed']} "
                f"reconnects={fields['reconnects']} queued={fields['queued']} "
                f"mqtt={'up' if fields['mqtt_connected'] else 'down'} tree={fields['tree']}"
            )
        elif kind == "joined":
            line = (
                f"joined gateway={fields['gateway']} overlay-id={fields['overlay_id']} "
                f"mqtt={fields['mqtt']} topics={','.join(fields['topics'])} "
                f"client-id={fields['client_id']}"
            )
        else:
            shown = {k: v for k, v in fields.items() if k != "t"}
            line = f"{kind} " + " ".join(f"{k}={v}" for k, v in shown.items())
        with contextlib.suppress(BrokenPipeError, ValueError):  # the reader has gone
            print(f"hp2p iot gateway: {line}", flush=True)
