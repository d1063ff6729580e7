"""``--mqtt-out``: the live state republished to a local MQTT broker, retained.

Existing MQTT dashboards then read the overlay's latest values from the broker next to the
nearest peer. The tree must never wait for the broker, so :meth:`MqttOut.offer` only records
the topic's newest payload in a table (bounded by the number of topics: a newer value of a
topic replaces the one not yet sent, counted as ``coalesced``) and wakes the sender task; a
broker that is down or refuses is counted and retried with exponential backoff (0.5 s doubling
to 30 s), while the table keeps only each topic's latest value to send when it is back.

Loops: a gateway that reads the same broker with a wildcard would read these messages again.
Give ``--out-prefix`` (and keep the gateway's filter outside it) or use another broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from hp2p.apps.iot.reading import Reading

log = logging.getLogger("hp2p.iot.mqtt_out")

__all__ = ["MqttOut", "MqttOutStats", "parse_mqtt_url"]

MAX_BACKOFF = 30.0


class MqttUrlError(ValueError):
    """An ``--mqtt-out`` URL that cannot be used; ``str(err)`` says why."""


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://HOST[:PORT]`` → (host, port); only plain MQTT over TCP."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise MqttUrlError(f"--mqtt-out must look like mqtt://127.0.0.1:1883, not {url!r}")
    try:
        port = parts.port or 1883
    except ValueError:
        raise MqttUrlError(f"--mqtt-out {url!r} has an invalid port") from None
    return parts.hostname, port


@dataclass
class MqttOutStats:
    published: int = 0
    coalesced: int = 0
    dropped: int = 0
    connects: int = 0
    connect_failures: int = 0
    publish_failures: int = 0
    connected: bool = False


class MqttOut:
    """Republishes the latest reading per topic to ``url`` under ``prefix + topic``, retained."""

    def __init__(
        self, url: str, *, prefix: str = "", max_pending: int = 10_000, client_id: str = ""
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        if any(c in prefix for c in "+#\0") or len(prefix.encode()) > 1024:
            raise MqttUrlError(
                f"--out-prefix {prefix[:40]!r} must be a plain topic prefix (no + # or NUL, "
                "at most 1024 bytes), e.g. live/"
            )
        self.url = url
        self.prefix = prefix
        self.max_pending = max_pending
        self.client_id = client_id
        self.stats = MqttOutStats()
        self._pending: OrderedDict[str, bytes] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def offer(self, reading: Reading) -> None:
        """Queue the reading's payload for its topic (never waits)."""
        topic = self.prefix + reading.topic
        if topic in self._pending:
            self.stats.coalesced += 1
            del self._pending[topic]
        elif len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
            self.stats.dropped += 1
        self._pending[topic] = reading.payload
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hp2p-iot-mqtt-out")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "prefix": self.prefix, "pending": len(self._pending)} | asdict(
            self.stats
        )

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id or None, timeout=10
                ) as client:
                    self.stats.connects += 1
                    self.stats.connected = True
                    backoff = 0.5
                    await self._send_all(client)
            except aiomqtt.MqttError as exc:
                if self.stats.connected:
                    log.warning("MQTT broker %s lost: %s; reconnecting", self.url, exc)
                else:
                    log.warning(
                        "MQTT broker %s unreachable: %s; retry in %gs", self.url, exc, backoff
                    )
                self.stats.connect_failures += 0 if self.stats.connected else 1
                self.stats.connected = False
            await asyncio.sleep(backoff)  # backoff between attempts, not synchronisation
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _send_all(self, client: aiomqtt.Client) -> None:
        """Send what is pending, then wait for more or for the broker to go (which raises
        :class:`aiomqtt.MqttError`); a failed send puts the value back."""
        gone = asyncio.ensure_future(self._until_disconnected(client))
        try:
            while True:
                while self._pending:
                    topic, payload = self._pending.popitem(last=False)
                    try:
                        await client.publish(topic, payload, qos=0, retain=True)
                    except aiomqtt.MqttError:
                        self.stats.publish_failures += 1
                        if topic not in self._pending:
                            self._pending[topic] = payload
                            self._pending.move_to_end(topic, last=False)
                        raise
                    self.stats.published += 1
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([wake, gone], return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                if gone.done():
                    gone.result()  # the broker's disconnection, as MqttError
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await gone

    @staticmethod
    async def _until_disconnected(client: aiomqtt.Client) -> None:
        """Returns (raising MqttError) when the broker goes: nothing is subscribed, so the
        message iterator only ever ends. Waiting on it also collects aiomqtt's disconnection
        error, which would otherwise be logged as never retrieved."""
        async for _ in client.messages:
            pass
        raise aiomqtt.MqttError("disconnected from the broker")
