"""Many benchmark processes on 127.0.0.1, followed through their JSON-lines stdout.

A process benchmark runs hundreds of ``hp2p peer`` (or relay) processes that each print one
JSON line per delivery. Reading them with a thread per process would put hundreds of threads
on the GIL next to the timed work; here one thread multiplexes every pipe with ``selectors``,
counts delivery lines as raw bytes (parsing waits until the run is over) and parses only the
rare control lines (``joined``, ``status`` …), which it hands out through per-process queues.

Per-process CPU time and RSS come from ``/proc/PID/stat`` and ``/proc/PID/status`` (Linux),
so no dependency such as psutil is needed.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_DELIVER_PREFIX = b'{"event":"deliver"'
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcError(RuntimeError):
    """A benchmark process did not start, answer or behave; the message says which and why."""


class Proc:
    """One child process with a JSON-lines stdout and commands on stdin."""

    def __init__(self, name: str, args: Sequence[str], stderr_path: Path) -> None:
        self.name = name
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                list(args),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
            )
        self.pid = self.popen.pid
        self.deliveries: list[bytes] = []  # raw delivery lines, parsed after the run
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.others: list[dict[str, Any]] = []  # control events nobody waited for
        self._partial = b""
        self.stdout_bytes = 0

    def feed(self, chunk: bytes) -> int:
        """Split a chunk into lines; returns how many were deliveries."""
        self.stdout_bytes += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        count = 0
        for line in lines:
            if line.startswith(_DELIVER_PREFIX):
                self.deliveries.append(line)
                count += 1
            elif line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "garbage", "line": line[:200].decode("utf-8", "replace")}
                self.events.put(event)
        return count

    def command(self, line: str) -> None:
        """Write one command line; a dead process raises :class:`ProcError`."""
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(line.encode() + b"\n")
        except (BrokenPipeError, OSError) as exc:
            raise ProcError(f"{self.name} is gone ({exc}); {self.tail()}") from exc

    def wait_event(self, kinds: set[str], timeout: float) -> dict[str, Any]:
        """The next event of one of ``kinds``; others are kept in ``others``."""
        end = time.monotonic() + timeout
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise ProcError(
                    f"{self.name}: no {sorted(kinds)} within {timeout:g} s; {self.tail()}"
                )
            try:
                event = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None and self.events.empty():
                    raise ProcError(
                        f"{self.name} exited with status {self.popen.returncode}; {self.tail()}"
                    ) from None
                continue
            if event.get("event") in kinds:
                return event
            self.others.append(event)

    def tail(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")[-600:].strip()
        except OSError:
            text = ""
        return f"stderr: {text}" if text else "no stderr output"

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (None once it is gone)."""
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = raw.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self, grace: float = 5.0) -> None:
        """Close stdin (the programs leave on end of input), then SIGTERM, then SIGKILL."""
        if self.popen.poll() is not None:
            return
        try:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=grace)


class Fleet:
    """Processes whose stdout one reader thread follows; delivery lines are only counted."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.deliveries = 0
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._read, name="fleet-reader", daemon=True)
        self._thread.start()

    def start(self, name: str, args: Sequence[str], stderr_path: Path) -> Proc:
        proc = Proc(name, args, stderr_path)
        assert proc.popen.stdout is not None
        with self._lock:
            self.procs.append(proc)
            self._selector.register(proc.popen.stdout, selectors.EVENT_READ, proc)
        os.write(self._wake_w, b"x")
        return proc

    def _read(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.5):
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    continue
                proc: Proc = key.data
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    with self._lock:
                        self._selector.unregister(key.fileobj)
                    proc.events.put({"event": "eof"})
                    continue
                count = proc.feed(chunk)
                if count:
                    with self._lock:
                        self.deliveries += count

    def wait_deliveries(self, target: int, timeout: float) -> int:
        """Wait until ``target`` delivery lines were read in all, or ``timeout``; the count."""
        end = time.monotonic() + timeout
        while self.deliveries < target and time.monotonic() < end:
            self._stop.wait(0.02)  # polling a counter, bounded by the deadline
        return self.deliveries

    def cpu_seconds(self) -> float:
        return sum(c for c in (p.cpu_seconds() for p in self.procs) if c is not None)

    def close(self) -> None:
        """Stop every process (they get end of input first) and the reader thread."""
        for proc in self.procs:
            try:
                if proc.popen.stdin is not None:
                    proc.popen.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            proc.stop()
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
