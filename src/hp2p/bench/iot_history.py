"""The history part of ``hp2p bench iot``: an hour of one topic into SubMesh history members.

Real processes on 127.0.0.1: a ``hp2p homs``, ``hp2p iot gateway`` (creating the CoreTree with
an admin key), ``hp2p iot bridge`` (the R3 bridge packing readings into segments on the SubMesh
``iot-history``; no SubTree) and M ``hp2p iot history`` members, each with its SQLite file and
its query API. The sensors publish 36,000 readings of one topic whose ``ts`` cover the hour
before now, through the broker and the gateway, as fast as ``rate``.

When the bridge has packed half of them, 30 % of the members (never the one queried) are
SIGKILLed. After the bridge has packed everything the sensors sent (bounded), every survivor is
asked for the hour, ``GET /history``, until it answers complete or a deadline passes:

* ``history_complete``: the smallest fraction of the packed readings a survivor returned;
* ``history_query_ms``: the median time of ``GET /history`` for the hour (36,000 readings,
  JSON) on one survivor, once it is complete: request sent to the last byte read.
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hp2p.bench.procs import Fleet, Proc, ProcError
from hp2p.homs.launch import HomsProcess, HomsStartError, start_homs

CORE_TITLE = "bench-iot-core"
MESH_TITLE = "iot-history"
TOPIC = "sensors/history/t1"
HOUR_S = 3600.0
READINGS = 36_000
KILL_FRACTION = 0.3
JOIN_TIMEOUT = 90.0
COMPLETE_DEADLINE_S = 120.0
QUERY_REPEATS = 5


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "hp2p", "iot", *args]


class HistoryRun:
    """HOMS, gateway, bridge and history members; :meth:`measure` runs the history part."""

    def __init__(
        self,
        workdir: Path,
        broker_port: int,
        members: int,
        seed: int,
        readings: int = READINGS,
        replicas: int = 0,
    ) -> None:
        self.replicas = replicas
        self.workdir = workdir
        self.fleet = Fleet()
        self.members: list[Proc] = []
        self.urls: dict[str, str] = {}
        self.homs: HomsProcess | None = None
        self.bridge: Proc | None = None
        self._port = broker_port
        self._count = members
        self.readings = readings
        self._rng = random.Random(seed)
        self._admin_key = secrets.token_hex(16)
        self.packed = 0
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        try:
            self.homs = start_homs(self.workdir)
        except HomsStartError as exc:
            raise ProcError(str(exc)) from None
        url = self.homs.url
        gateway = _python("gateway", "--homs", url, "--create", CORE_TITLE, "--id", "gateway-h")
        gateway += ["--mqtt", f"mqtt://127.0.0.1:{self._port}", "--topic", "sensors/history/#"]
        gateway += ["--set", f"admin_key={self._admin_key}", "--json-events"]
        gateway += ["--status-interval", "60"]
        self.fleet.start("gateway-h", gateway, self.workdir / "gateway.err").wait_event(
            {"joined"}, JOIN_TIMEOUT
        )
        bridge = _python("bridge", "--homs", url, "--core", CORE_TITLE, "--id", "b1")
        bridge += ["--subtree", "", "--submesh", MESH_TITLE, "--json-events"]
        bridge += ["--core-admin-key", self._admin_key]
        self.bridge = self.fleet.start("bridge", bridge, self.workdir / "bridge.err")
        self.bridge.wait_event({"joined"}, JOIN_TIMEOUT)
        for i in range(self._count):
            name = f"history-{i:02d}"
            args = _python("history", "--homs", url, "--join", MESH_TITLE, "--id", name)
            args += ["--db", str(self.workdir / f"{name}.sqlite"), "--api", "127.0.0.1:0"]
            args += ["--json-events", "--replicas", str(self.replicas)]
            self.members.append(self.fleet.start(name, args, self.workdir / f"{name}.err"))
        for proc in self.members:
            proc.wait_event({"joined"}, JOIN_TIMEOUT)
            self.urls[proc.name] = str(proc.wait_event({"api"}, JOIN_TIMEOUT)["url"])

    def _wait_packed(self, target: int, timeout: float) -> int:
        """Follow the bridge's ``packed`` events until ``target`` readings (or ``timeout``)."""
        assert self.bridge is not None
        end = time.monotonic() + timeout
        while self.packed < target and (left := end - time.monotonic()) > 0:
            try:
                event = self.bridge.wait_event({"packed"}, left)
            except ProcError:
                break
            count = event.get("count")
            self.packed += count if isinstance(count, int) else 0
        return self.packed

    def measure(self, sensors: Proc, rate: float, first: int) -> dict[str, Any]:
        """Publish the hour, kill 30 % of the members half-way, then query the survivors."""
        n = self.readings
        sensors.command(f"history {rate:g} {n} {HOUR_S:g} {first} {TOPIC}")
        self._wait_packed(n // 2, n / rate * 3 + 60)
        victims = self._kill()
        done = sensors.wait_event({"done"}, n / rate * 3 + 60)
        published = int(done.get("published", 0))
        self._wait_packed(published, COMPLETE_DEADLINE_S)
        end = time.time()
        survivors = [p for p in self.members if p.name not in victims]
        window = (end - HOUR_S - 120, end + 60)
        counts = {p.name: self._complete_count(self.urls[p.name], window) for p in survivors}
        timed, size = self._timed_queries(self.urls[survivors[0].name], window)
        lowest = min(counts.values(), default=0)
        return {
            "history_query_ms": round(statistics.median(timed), 1) if timed else None,
            "history_query_ms_max": round(max(timed), 1) if timed else None,
            "history_answer_bytes": size,
            "history_complete": round(lowest / self.packed, 6) if self.packed else None,
            "history_members": self._count,
            "history_members_killed": len(victims),
            "history_replicas": self.replicas,
            "history_readings_published": published,
            "history_publish_errors": done.get("publish_errors"),
            "history_readings_packed": self.packed,
            "history_readings_returned_min": lowest,
            "history_ingest_rate": rate,
        }

    def _kill(self) -> list[str]:
        """SIGKILL 30 % of the members (never the first: it is the one queried for time)."""
        count = round(self._count * KILL_FRACTION)
        victims = self._rng.sample(self.members[1:], min(count, len(self.members) - 1))
        for proc in victims:
            proc.popen.send_signal(signal.SIGKILL)
        return [p.name for p in victims]

    def _complete_count(self, url: str, window: tuple[float, float]) -> int:
        """Readings a member returns for the hour, asked until complete (bounded)."""
        end = time.monotonic() + COMPLETE_DEADLINE_S
        best = 0
        while time.monotonic() < end:
            answer = json.loads(_get(url, window, wait=5.0))
            best = max(best, int(answer.get("count", 0)))
            if answer.get("complete") and best >= self.packed:
                break
            _pause(1.0)
        return best

    def _timed_queries(self, url: str, window: tuple[float, float]) -> tuple[list[float], int]:
        """Milliseconds of each ``GET /history`` (to its last byte), and the answer's size."""
        times = []
        size = 0
        for _ in range(QUERY_REPEATS):
            start = time.perf_counter()
            size = len(_get(url, window, wait=0.0))
            times.append((time.perf_counter() - start) * 1e3)
        return times, size

    def close(self) -> None:
        for proc in self.fleet.procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        self.fleet.close()
        if self.homs is not None:
            self.homs.stop()


def _get(url: str, window: tuple[float, float], wait: float) -> bytes:
    """``GET /history`` of the bench topic over ``window``; the whole body."""
    query = f"topic={TOPIC}&from={window[0]:.3f}&to={window[1]:.3f}&limit=100000&wait={wait:g}"
    try:
        with urllib.request.urlopen(f"{url}/history?{query}", timeout=60) as answer:
            body: bytes = answer.read()
    except urllib.error.HTTPError as exc:
        reason = exc.read()[:200].decode("utf-8", "replace")
        raise ProcError(f"history query to {url} refused: {exc.code} {reason}") from None
    except OSError as exc:
        raise ProcError(f"history query to {url} failed: {exc}") from None
    return body


def _pause(seconds: float) -> None:
    """Between two polls of a member (bounded by the caller's deadline)."""
    time.sleep(seconds)


def not_measured(reason: str) -> dict[str, Any]:
    return {"history_query_ms": None, "history_complete": None, "history_note": reason}
