"""The process group behind the one-command examples (``examples/*/run.py``).

An example starts every part of a service as its own ``python -m hp2p …`` process, follows
each through its ``--json-events`` lines and must stop them all however it ends. It waits on
what a process *says* (an event), never on time, and a process that dies before saying it
ends the wait at once with its log rather than after the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["ProcessGroup"]


class ProcessGroup:
    """Every process an example starts, with its JSON events; all stopped by :meth:`stop`."""

    def __init__(self, workdir: Path, deadline: float = 60.0) -> None:
        self.workdir = workdir
        self.deadline = deadline
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, name: str, *args: str) -> None:
        """``python -m hp2p ARGS`` in its own session; stderr to ``WORKDIR/NAME.log``."""
        with (self.workdir / f"{name}.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hp2p", *args,
                stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        self.events[name] = []
        self._readers.append(asyncio.create_task(self._read(name, proc)))

    def adopt(self, name: str, proc: asyncio.subprocess.Process) -> None:
        """Stop ``proc`` (started elsewhere, e.g. a broker) with the others."""
        self.procs[name] = proc
        self.events[name] = []

    async def _read(self, name: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:  # ends with the process
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    async with self._changed:
                        self.events[name].append(event)
                        self._changed.notify_all()
        async with self._changed:  # its end wakes the waiters, who then say so
            self._changed.notify_all()

    def _ended(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.returncode is not None

    async def wait_event(self, name: str, kind: str, limit: float | None = None) -> dict[str, Any]:
        """The first ``kind`` event of ``name``; ``SystemExit`` with its log if none comes."""
        limit = self.deadline if limit is None else limit

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[name] if e.get("event") == kind), None)

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: found() is not None or self._ended(name)),
                    limit,
                )
        event = found()
        if event is None:
            log = (self.workdir / f"{name}.log").read_bytes().decode(errors="replace")
            raise SystemExit(f"{name} did not report {kind!r} in {limit:.0f} s:\n{log[-800:]}")
        return event

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to every process group (last started first), SIGKILL after ``grace``."""
        for proc in reversed(list(self.procs.values())):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in self._readers:
            task.cancel()
