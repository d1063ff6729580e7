"""A private Mosquitto broker for one benchmark run, and its ``$SYS`` byte counter.

Each run starts its own ``mosquitto`` on a free 127.0.0.1 port with a config file in the run's
temporary folder, so that no other client of a shared broker adds to its counters. The config
sets ``sys_interval 1``: the broker then publishes ``$SYS/broker/bytes/sent`` (and its load
figures) every second, which :class:`SysCounter` follows as a cross-check of the socket
counters (:mod:`hp2p.bench.sockets`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from hp2p.homs.launch import free_port

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_DEADLINE_S = 15.0
START_ATTEMPTS = 3
SYS_BYTES_SENT = "$SYS/broker/bytes/sent"


class BrokerError(RuntimeError):
    """Mosquitto is missing or did not start; the message says what to do."""


def find_mosquitto() -> str | None:
    """The mosquitto binary: on the PATH or in the usual sbin folders."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if Path(p).is_file()), None)


def _config(port: int) -> str:
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "sys_interval 1",
            "max_queued_messages 100000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_timestamp true",
            "",
        ]
    )


class Mosquitto:
    """One ``mosquitto -c CONF`` child on 127.0.0.1:``port``; stop it with :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto not found: install it (apt-get install mosquitto)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        for attempt in range(1, START_ATTEMPTS + 1):
            # free_port() can race with another program taking the port: try a new one
            self.port = free_port()
            self.conf.write_text(_config(self.port))
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(
                    [binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
                )
            self.pid = self.proc.pid
            try:
                self._wait_listening()
                return
            except BrokerError:
                if attempt == START_ATTEMPTS:
                    raise

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _wait_listening(self) -> None:
        """Bounded polling of the port: mosquitto prints nothing when it is ready."""
        end = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited at start: {self._tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen within {START_DEADLINE_S:g} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-400:].strip() or "no output"
        except OSError:
            return "no output"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class SysCounter:
    """Follows the broker's ``$SYS/broker/bytes/sent`` (one paho client, its own thread).

    :meth:`fresh` waits for a value the broker published after the call (at most
    ``sys_interval`` + a margin), so a reading taken after a phase covers all of it.
    This client's own ``$SYS`` messages (~40 bytes a second) are part of the count.
    """

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._cond = threading.Condition()
        self._value: int | None = None
        self._stamp = 0.0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(SYS_BYTES_SENT)
        try:
            self._client.connect("127.0.0.1", port)
        except OSError as exc:
            raise BrokerError(f"cannot follow $SYS on 127.0.0.1:{port}: {exc}") from None
        self._client.loop_start()

    def _on_message(self, _client: object, _userdata: object, message: object) -> None:
        try:
            value = int(getattr(message, "payload", b"").decode())
        except (ValueError, UnicodeDecodeError):
            return
        with self._cond:
            self._value = value
            self._stamp = time.monotonic()
            self._cond.notify_all()

    def fresh(self, timeout: float = 3.0) -> int | None:
        """The first value published after this call, or None if none came in ``timeout``."""
        asked = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: self._stamp > asked, timeout=timeout)
            return self._value if self._stamp > asked else None

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
