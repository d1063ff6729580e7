"""Many benchmark processes on 127.0.0.1, followed through their JSON-lines stdout.

A process benchmark runs hundreds of ``hp2p peer`` (or relay) processes that each print one
JSON line per delivery. Reading them with a thread per process would put hundreds of threads
on the GIL next to the timed work; here one thread multiplexes every pipe with ``selectors``,
counts delivery lines as raw bytes (parsing waits until the run is over) and parses only the
rare control lines (``joined``, ``status`` …), which it hands out through per-process
:class:`~hp2p.bench.events.EventInbox` es.

Per-process CPU time and RSS come from ``/proc/PID/stat`` and ``/proc/PID/status`` (Linux),
so no dependency such as psutil is needed.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from hp2p.bench.events import DELIVER_PREFIX, Event, EventInbox, NoEventError, parse_event

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux ``/proc``); None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux ``/proc``); None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


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
        self.inbox = EventInbox(name)  # the other (control) events
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
            if line.startswith(DELIVER_PREFIX):
                self.deliveries.append(line)
                count += 1
            elif (event := parse_event(line)) is not None:
                self.inbox.put(event)
        return count

    def command(self, line: str) -> None:
        """Write one command line; a dead process raises :class:`ProcError`."""
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(line.encode() + b"\n")
        except (BrokenPipeError, OSError) as exc:
            raise ProcError(f"{self.name} is gone ({exc}); {self.tail()}") from exc

    def wait_event(self, kinds: Collection[str], timeout: float) -> Event:
        """The next event of one of ``kinds``; others are kept in the inbox."""
        try:
            return self.inbox.next(kinds, timeout)
        except NoEventError as exc:
            if self.inbox.ended:
                raise ProcError(
                    f"{self.name} exited with status {self.popen.poll()}; {self.tail()}"
                ) from None
            raise ProcError(f"{exc}; {self.tail()}") from None

    def tail(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")[-600:].strip()
        except OSError:
            text = ""
        return f"stderr: {text}" if text else "no stderr output"

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid)

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
                    proc.inbox.close()
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
