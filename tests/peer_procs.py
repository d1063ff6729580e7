"""Real ``hp2p homs`` and ``hp2p peer`` processes on 127.0.0.1, followed through their output.

Nothing here sleeps to synchronise: a HOMS is up when it prints its serving line, a peer has
joined when it prints its ``joined`` JSON event, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEADLINE = 60.0


class HomsProc:
    """``hp2p homs --port 0`` with a fresh SQLite file; the URL comes from its start-up line."""

    def __init__(self, workdir: Path) -> None:
        self.err_path = workdir / "homs.err"
        args = [sys.executable, "-m", "hp2p", "homs", "--port", "0", "--log-level", "warning"]
        args += ["--database", f"sqlite:///{workdir / 'homs.db'}"]
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        line = _readline(self.proc, DEADLINE)
        if "serving " not in line:
            self.stop()
            raise AssertionError(f"HOMS did not start: {line!r} {self.err_path.read_text()}")
        self.url = line.split("serving ", 1)[1].split()[0]

    def stop(self) -> None:
        _stop(self.proc)


def _readline(proc: subprocess.Popen[str], deadline: float) -> str:
    """One stdout line, read on a thread so that the wait is bounded."""
    box: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: box.put(stdout.readline()), daemon=True).start()
    try:
        return box.get(timeout=deadline)
    except queue.Empty:
        return ""


def _stop(proc: subprocess.Popen[str], grace: float = 20.0, term: bool = True) -> int | None:
    """Wait for the process to end (when it was asked to), then SIGTERM, then SIGKILL."""
    for step in ("wait", "term", "kill"):
        if step == "wait" and term:
            continue
        if step == "term":
            proc.send_signal(signal.SIGTERM)
        elif step == "kill":
            proc.kill()
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode


class PeerProc:
    """``hp2p peer --json-events --stdin``; a thread turns its stdout into a queue of events."""

    def __init__(self, workdir: Path, homs_url: str, name: str, *args: str) -> None:
        self.name = name
        self.err_path = workdir / f"{name}.err"
        cmd = [sys.executable, "-m", "hp2p", "peer", "--homs", homs_url, "--id", name]
        cmd += ["--json-events", "--stdin", "--log-level", "warning", *args]
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.joined: dict[str, Any] | None = None
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True, name=f"read-{name}").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "garbage", "line": line})
        self.events.put({"event": "eof"})

    def next_event(self, kinds: set[str], deadline: float) -> dict[str, Any]:
        """The next event of one of ``kinds``; the others are kept in ``seen``."""
        for i, kept in enumerate(self.seen):
            if kept["event"] in kinds:
                return self.seen.pop(i)
        end = time.monotonic() + deadline
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {kinds} event within {deadline} s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event["event"] in kinds:
                return event
            if event["event"] == "eof":
                raise AssertionError(
                    f"{self.name} exited ({self.proc.wait(timeout=10)}): "
                    f"{self.err_path.read_text()[-2000:]}"
                )
            self.on_other(event)

    def on_other(self, event: dict[str, Any]) -> None:
        """Events read while waiting for others; kept for the test to look at."""
        self.seen.append(event)

    def wait_joined(self, deadline: float = DEADLINE) -> dict[str, Any]:
        self.joined = self.next_event({"joined"}, deadline)
        return self.joined

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def leave(self) -> None:
        """Ask the peer to leave (``leave`` on stdin); :meth:`stop` then waits for it."""
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):  # it has gone already
            self.command("leave")

    def stop(self) -> int | None:
        """Wait for a peer that was asked to leave; SIGTERM (then SIGKILL) if it does not."""
        return _stop(self.proc, term=False)
