"""The processes of ``hp2p bench chain``: a chain on real overlays, every event kept with its time.

:class:`ChainNet` starts a HOMS, makes a chain with ``hp2p chain init``, then the producers
(``--json-events --trace-txs``: one ``tx`` line per transaction broadcast received), the R3
bridge and the full nodes, each as its own process on 127.0.0.1. One asyncio task per process
reads its JSON lines into :attr:`ChainNet.events` (each event carries the wall-clock time the
process printed it: every process shares this machine's clock). Waiting is on those events,
with deadlines; :meth:`ChainNet.stop` ends everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

from hp2p.homs.launch import HomsProcess, start_homs

__all__ = ["ChainNet", "ChainNetError"]

DEADLINE = 180.0


class ChainNetError(RuntimeError):
    """A process did not start or report in time; the message names it and ends its log."""


class ChainNet:
    """One chain: HOMS, producers, bridge, full nodes; ``await start(...)``, ``await stop()``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.homs: HomsProcess | None = None
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.apis: dict[str, str] = {}
        self.core_id = ""
        self.blocks_id = ""
        self._changed = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []

    @property
    def chain_dir(self) -> Path:
        return self.workdir / "chain"

    def _log(self, name: str) -> IO[bytes]:
        return open(self.workdir / f"{name}.log", "wb")

    async def run(self, name: str, *args: str) -> None:
        """Start ``python -m hp2p ARGS`` as ``name``; its JSON lines go to events[name]."""
        with self._log(name) as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hp2p", *args, stdout=asyncio.subprocess.PIPE,
                stderr=log, start_new_session=True, limit=1 << 20,
            )  # fmt: skip
        self.procs[name] = proc
        self.events[name] = []
        self._readers.append(asyncio.create_task(self._read(name, proc)))

    async def _read(self, name: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.events[name].append(event)
                    if event.get("event") != "tx":  # thousands of those: nobody waits on them
                        async with self._changed:
                            self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_event(self, name: str, kind: str, limit: float = DEADLINE) -> dict[str, Any]:
        """The first ``kind`` event of ``name`` (ChainNetError if it ends or times out)."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[name] if e.get("event") == kind), None)

        def ended() -> bool:
            return self.procs[name].returncode is not None

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: found() is not None or ended()), limit
                )
        event = found()
        if event is None:
            log = (self.workdir / f"{name}.log").read_bytes().decode(errors="replace")
            raise ChainNetError(f"{name} did not report {kind!r} in {limit:.0f} s: {log[-600:]}")
        return event

    async def init(self, producers: int, accounts: int, interval: float, start_in: float) -> None:
        args = [sys.executable, "-m", "hp2p", "chain", "init", "--dir", str(self.chain_dir)]
        args += ["--producers", str(producers), "--accounts", str(accounts), "--balance"]
        args += ["1000000000", "--interval", str(interval), "--finality", "2"]
        args += ["--start-in", str(start_in), "--max-block-txs", "5000"]
        made = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await made.communicate()
        if made.returncode != 0:
            raise ChainNetError(f"hp2p chain init failed: {err.decode(errors='replace')[-300:]}")

    def _producer(self, k: int, *where: str) -> tuple[str, ...]:
        return (
            "chain", "producer", "--genesis", str(self.chain_dir / "genesis.json"),
            "--key", str(self.chain_dir / f"producer-{k}.key"), "--homs", self.homs_url,
            "--api", "127.0.0.1:0", "--db", str(self.workdir / f"p{k}.db"), "--id", f"p{k}",
            "--json-events", "--trace-txs", *where,
        )  # fmt: skip

    @property
    def homs_url(self) -> str:
        assert self.homs is not None
        return self.homs.url

    async def start(self, producers: int, nodes: int) -> None:
        """HOMS (if not yet), producer 1 (creates the CoreTree), bridge, other producers,
        full nodes; returns once every one printed ``ready`` (API URLs in :attr:`apis`)."""
        if self.homs is None:
            self.homs = start_homs(self.workdir)
        admin = os.urandom(8).hex()
        await self.run("p1", *self._producer(1, "--create", "chain", "--admin-key", admin))
        self.core_id = str((await self.wait_event("p1", "ready"))["overlay_id"])
        await self.run(
            "bridge", "bridge", "--homs", self.homs_url, "--core", self.core_id, "--id", "b1",
            "--submesh", "blocks:hp2p-chain-block", "--core-admin-key", admin, "--json-events",
        )  # fmt: skip
        joined = await self.wait_event("bridge", "joined")
        self.blocks_id = str(joined["targets"][0]["overlay_id"])
        if any(e.get("event") == "head" for e in self.events["p1"]):
            raise ChainNetError("a block was made before the bridge was up: raise start_in")
        for k in range(2, producers + 1):
            where = ("--overlay", self.core_id, "--sync", self.blocks_id)
            await self.run(f"p{k}", *self._producer(k, *where))
        for n in range(1, nodes + 1):
            await self.add_node(f"n{n}")
        names = [f"p{k}" for k in range(1, producers + 1)] + [f"n{n}" for n in range(1, nodes + 1)]
        for name in names:
            self.apis[name] = str((await self.wait_event(name, "ready"))["api"])

    async def add_node(self, name: str) -> None:
        """Start one more full node on the blocks SubMesh (not waited for)."""
        await self.run(
            name, "chain", "node", "--genesis", str(self.chain_dir / "genesis.json"),
            "--join", self.blocks_id, "--homs", self.homs_url, "--api", "127.0.0.1:0",
            "--id", name, "--json-events",
        )  # fmt: skip

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items() if p.returncode is None}

    async def stop(self) -> None:
        """SIGTERM every process, SIGKILL what is left after 10 s; the HOMS last."""
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in self._readers:
            task.cancel()
        if self.homs is not None:
            self.homs.stop()
