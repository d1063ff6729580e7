"""One IoT reading on the wire: what a gateway broadcasts for one MQTT message.

A reading travels as the payload of one CoreTree broadcast (app-id :data:`APP_ID`) and, after
the bridge, of one SubTree broadcast; the SubMesh carries readings inside segments. Its
identity is ``(gateway, epoch, number)``, not the tree's ``(source, sequence)``: the bridge
republishes under its own source id, and a history must count each reading exactly once
whichever overlay it came through. ``epoch`` changes at every gateway start, so a restarted
gateway numbering from 1 again never collides with its earlier readings.

Everything here comes from the network, so :func:`decode_reading` checks every field and
bounds every size before an application sees it.
"""

from __future__ import annotations

import json
import math

import msgspec

__all__ = [
    "APP_ID",
    "MAX_PAYLOAD",
    "MAX_TOPIC",
    "PAYLOAD_TYPE",
    "Reading",
    "ReadingError",
    "decode_reading",
    "device_timestamp",
    "encode_reading",
]

#: The app-id of IoT readings on the CoreTree and SubTree (the bridge selects by it).
APP_ID = "hp2p-iot"
PAYLOAD_TYPE = "application/x-hp2p-iot+msgpack"
#: Longest topic accepted, in UTF-8 bytes (MQTT allows 65,535; no sensor needs that).
MAX_TOPIC = 256
#: Largest MQTT payload carried, in bytes: one reading stays one small tree message.
MAX_PAYLOAD = 60_000


class ReadingError(ValueError):
    """A reading that cannot be accepted; ``str(err)`` says which field and why."""


class Reading(msgspec.Struct, array_like=True, frozen=True):
    """One MQTT message as a gateway saw it.

    ``device_ts`` is the device's own timestamp (unix seconds) when its payload carried one
    (a JSON object with a numeric ``ts``), else None; ``received_ts`` is the gateway's clock
    when the broker delivered it. Latency figures use ``device_ts``.
    """

    topic: str
    payload: bytes
    device_ts: float | None
    received_ts: float
    qos: int
    gateway: str
    epoch: int
    number: int

    @property
    def key(self) -> tuple[str, int, int]:
        """The reading's identity across overlays (see the module docstring)."""
        return (self.gateway, self.epoch, self.number)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Reading)


def encode_reading(reading: Reading) -> bytes:
    return _encoder.encode(reading)


def decode_reading(data: bytes) -> Reading:
    """The reading in ``data``, checked; :class:`ReadingError` says what is wrong."""
    if len(data) > MAX_PAYLOAD + MAX_TOPIC + 512:
        raise ReadingError(f"reading of {len(data)} bytes is larger than any valid one")
    try:
        reading = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ReadingError(f"not an IoT reading: {exc}") from None
    check_reading(reading)
    return reading


def check_reading(reading: Reading) -> None:
    """Raise :class:`ReadingError` unless every field is within bounds."""
    topic = reading.topic
    if not topic or len(topic.encode()) > MAX_TOPIC:
        raise ReadingError(f"topic must be 1..{MAX_TOPIC} bytes")
    if any(c in topic for c in "+#\0"):
        raise ReadingError(f"topic {topic[:40]!r} has a wildcard or NUL: a reading names one topic")
    if len(reading.payload) > MAX_PAYLOAD:
        raise ReadingError(f"payload of {len(reading.payload)} bytes exceeds {MAX_PAYLOAD}")
    if reading.qos not in (0, 1, 2):
        raise ReadingError(f"qos must be 0, 1 or 2, not {reading.qos}")
    if not reading.gateway or len(reading.gateway) > 128:
        raise ReadingError("gateway id must be 1..128 characters")
    if reading.number < 1 or reading.epoch < 0:
        raise ReadingError("number starts at 1 and epoch is not negative")
    for name, ts in (("device_ts", reading.device_ts), ("received_ts", reading.received_ts)):
        if ts is not None and not (math.isfinite(ts) and 0 <= ts < 1e11):
            raise ReadingError(f"{name} must be unix seconds, not {ts!r}")


def device_timestamp(payload: bytes) -> float | None:
    """The ``ts`` of a JSON-object payload in unix seconds (milliseconds are recognised).

    Anything else (not JSON, not an object, no numeric ``ts``, out of range) is None: a
    device that sends no timestamp is still a device.
    """
    if not payload.startswith(b"{") or len(payload) > MAX_PAYLOAD:
        return None
    try:
        value = json.loads(payload).get("ts")
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    ts = float(value)
    if ts > 1e11:  # milliseconds
        ts /= 1000.0
    return ts if math.isfinite(ts) and 0 < ts < 1e11 else None
