"""``hp2p demo``: a HOMS and N hybrid peers as separate processes on loopback, traffic, summary.

It is the first thing a new user runs, so it shows the real thing: a ``hp2p homs`` process with a
fresh SQLite database in a temporary folder, then peer processes running the runtime of
``hp2p peer`` (the first creates the overlay and is the root, the others join it), each speaking
R2 over TCP on 127.0.0.1. Several
peers publish; the tree and the deliveries are shown live; at the end a summary (peers, depth,
messages, deliveries, duplicates, latency) is printed and, with ``--json FILE``, written in the
result format of BENCHMARKS.md.

The demo follows the peers through their ``--json-events`` output and drives them through
``--stdin`` commands, so it never guesses with sleeps: a peer has joined when it says so.
Every process it started is stopped on the way out (normal end, error or Ctrl-C): first asked
to leave, then SIGTERM, then SIGKILL, each step bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.tree import Tree

from hp2p.bench.events import events_from
from hp2p.bench.procs import rss_mb
from hp2p.bench.results import result_document, write_result
from hp2p.homs.launch import HomsProcess, HomsStartError, start_homs
from hp2p.peer.daemon import launch
from hp2p.peer.settings import SettingsError, merge
from hp2p.transport.faults import FaultPlan

EPILOG = """
Examples:

  hp2p demo                              # 12 peers, 20 s of traffic from 3 sources

  hp2p demo --peers 30 --seconds 10 --rate 20

  hp2p demo --peers 5 --seconds 5 --json demo.json

  hp2p demo --faults delay=0.005,jitter=0.002     # every link 5 ms slower

Everything runs on 127.0.0.1 with free ports and a temporary SQLite database; it is all
removed at the end. See docs/demo.md.
"""

STARTUP_DEADLINE = 30.0
DRAIN_DEADLINE = 5.0
SCAN_LEAD = 3.5  # seconds: the peers' scan_timeout (3 s) plus a margin
STOP_DEADLINE = 5.0


class DemoError(Exception):
    """Something the demo needs failed; the message says what and where to look."""


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class PeerProc:
    """One ``hp2p peer`` child and what it said about itself."""

    name: str
    proc: asyncio.subprocess.Process
    stderr_path: Path
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    info: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    depth: int | None = None
    delivered: Counter[tuple[str, int]] = field(default_factory=Counter)
    published: int = 0
    errors: int = 0
    reader: asyncio.Task[None] | None = None
    scans: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-1500:]


@dataclass
class Traffic:
    """Publish and delivery times by (source, sequence), for latency and exactly-once."""

    published_at: dict[tuple[str, int], float] = field(default_factory=dict)
    delivered_at: list[tuple[tuple[str, int], float]] = field(default_factory=list)
    deliveries: int = 0
    duplicates: int = 0


class Demo:
    def __init__(
        self,
        peers: int,
        seconds: float,
        sources: int,
        rate: float,
        faults: str | None,
        console: Console,
    ) -> None:
        self.n = peers
        self.seconds = seconds
        self.n_sources = min(sources, peers)
        self.rate = rate
        self.faults = faults
        self.console = console
        self.workdir = Path(tempfile.mkdtemp(prefix="hp2p-demo-"))
        self.homs: HomsProcess | None = None
        self.peers: list[PeerProc] = []
        self.traffic = Traffic()
        self.overlay_id = ""
        self.failure: str | None = None
        self.dead = asyncio.Event()
        self.stopping = False
        self.phase = "starting"
        self.started = time.monotonic()
        self.target: int | None = None  # deliveries expected once publishing has ended
        self.all_delivered = asyncio.Event()
        self.sent = 0  # publish commands given to the sources

    # --- processes --------------------------------------------------------------------------
    async def start_homs(self) -> None:
        try:
            self.homs = await asyncio.to_thread(start_homs, self.workdir, deadline=STARTUP_DEADLINE)
        except HomsStartError as exc:
            raise DemoError(f"the HOMS did not start: {exc}") from None

    async def start_peer(self, index: int, first: bool) -> PeerProc:
        """One peer process, as ``hp2p peer … --json-events --stdin`` would run it.

        The settings go through the same merge as ``hp2p peer`` (environment ``HP2P_*``
        included); the process starts the peer runtime directly, without the command-line
        stack, which halves each peer's start-up CPU (the demo's start-up time on 2 cores).
        """
        name = f"demo-{index:02d}"
        assert self.homs is not None
        flags: dict[str, Any] = {"homs": self.homs.url, "peer_id": name}
        if first:
            flags["create"] = f"hp2p-demo-{os.getpid()}"
        else:
            flags["join"] = self.overlay_id
        if self.faults:
            flags.update(faults=self.faults, fault_seed=index)
        try:
            settings = merge(flags=flags)
        except SettingsError as exc:
            raise DemoError(f"bad peer setting: {exc}") from None
        argv, env = launch(settings, json_events=True, stdin=True, log_level="WARNING")
        stderr_path = self.workdir / f"{name}.err"
        with stderr_path.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.PIPE,
                stderr=err,
                # the demo's overlays go with its folder: their admin keys are kept there too
                env={**os.environ, **env, "HP2P_ADMIN_KEY_DIR": str(self.workdir / "admin-keys")},
            )
        peer = PeerProc(name, proc, stderr_path)
        peer.reader = asyncio.create_task(self.read_events(peer), name=f"read-{name}")
        self.peers.append(peer)
        return peer

    async def read_events(self, peer: PeerProc) -> None:
        assert peer.proc.stdout is not None
        traffic = self.traffic
        async for event in events_from(peer.proc.stdout):
            kind = event.kind
            if kind == "deliver":
                key = event.message
                peer.delivered[key] += 1
                traffic.deliveries += 1
                if peer.delivered[key] > 1:
                    traffic.duplicates += 1
                traffic.delivered_at.append((key, event["t"]))
                if self.target is not None and traffic.deliveries >= self.target:
                    self.all_delivered.set()
            elif kind == "published":
                traffic.published_at[event.message] = event["t"]
                peer.published += 1
            elif kind in ("joined", "attached"):
                peer.parent, peer.depth = event.get("parent"), event.get("depth")
                if kind == "joined":
                    peer.info = event
                    peer.joined.set()
            elif kind == "scan":
                peer.scans.put_nowait(event)
            elif kind in ("error", "join_failed"):
                peer.errors += 1
        code = await peer.proc.wait()
        if not peer.joined.is_set() or not self.stopping:
            self.failure = self.failure or (
                f"peer {peer.name} exited with status {code}: {peer.stderr_tail() or '(no output)'}"
            )
            self.dead.set()

    async def wait_joined(self, peers: list[PeerProc], deadline: float) -> None:
        waits = [asyncio.ensure_future(p.joined.wait()) for p in peers]
        dead = asyncio.ensure_future(self.dead.wait())
        try:
            async with asyncio.timeout(deadline):
                pending = set(waits)
                while pending:
                    done, pending = await asyncio.wait(
                        pending | {dead}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if dead in done:
                        raise DemoError(self.failure or "a peer died")
                    pending.discard(dead)
        except TimeoutError:
            late = [p.name for p in peers if not p.joined.is_set()]
            raise DemoError(
                f"{len(late)} peer(s) not joined within {deadline:g} s: {', '.join(late[:8])}"
            ) from None
        finally:
            for w in (*waits, dead):
                w.cancel()

    async def command(self, peer: PeerProc, line: str) -> None:
        stdin = peer.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write(line.encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await stdin.drain()

    async def stop_all(self) -> None:
        """Leave, then SIGTERM, then SIGKILL; each step bounded. Never raises."""
        self.stopping = True
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await self.command(peer, "leave")
        procs = [p.proc for p in self.peers]
        await _reap(procs, STOP_DEADLINE)
        if self.homs is not None:
            await asyncio.to_thread(self.homs.stop, STOP_DEADLINE)
        for peer in self.peers:
            if peer.reader is not None:
                peer.reader.cancel()
                with contextlib.suppress(BaseException):
                    await peer.reader

    # --- the run ----------------------------------------------------------------------------
    def sources(self) -> list[PeerProc]:
        """Spread the sources over the join order: the root, the middle, the last …"""
        if self.n_sources <= 0:
            return []
        step = max(1, self.n // self.n_sources)
        return [self.peers[min(i * step, self.n - 1)] for i in range(self.n_sources)]

    def render(self) -> Group:
        tree = Tree(f"[bold]overlay[/] {self.overlay_id or '…'}")
        nodes: dict[str, Tree] = {}
        by_name = {p.name: p for p in self.peers}
        pending = [p for p in self.peers if p.joined.is_set()]
        for _ in range(len(pending) + 1):  # parents before children; bounded passes
            rest = []
            for p in pending:
                label = f"{p.name} [dim]d{p.depth}[/] [green]{sum(p.delivered.values())}[/]"
                if p.parent is None:
                    nodes[p.name] = tree.add(f"[bold]{label}[/] (root)")
                elif p.parent in nodes:
                    nodes[p.name] = nodes[p.parent].add(label)
                elif p.parent in by_name:
                    rest.append(p)
                else:
                    nodes[p.name] = tree.add(f"{label} [red](parent {p.parent} ?)[/]")
            if not rest:
                break
            pending = rest
        t = self.traffic
        table = Table.grid(padding=(0, 2))
        elapsed = f"{time.monotonic() - self.started:4.1f} s"
        table.add_row("phase", self.phase, "elapsed", elapsed)
        joined = sum(p.joined.is_set() for p in self.peers)
        table.add_row("peers joined", f"{joined}/{self.n}", "published", str(len(t.published_at)))
        table.add_row("deliveries", str(t.deliveries), "duplicates", str(t.duplicates))
        return Group(tree, table)

    async def run(self) -> dict[str, Any]:
        with Live(console=self.console, refresh_per_second=4, get_renderable=self.render):
            await self.start_homs()
            self.phase = "starting peers"
            root = await self.start_peer(0, first=True)
            await self.wait_joined([root], STARTUP_DEADLINE)
            self.overlay_id = root.info["overlay_id"]
            others = [await self.start_peer(i, first=False) for i in range(1, self.n)]
            self.phase = "joining"
            await self.wait_joined(others, STARTUP_DEADLINE * 2)
            attach_all = time.monotonic() - self.started
            self.phase = "publishing"
            await self.publish(self.sources(), root)
            self.phase = "draining"
            self.target = self.expected_deliveries()
            if self.traffic.deliveries >= self.target:
                self.all_delivered.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_delivered.wait(), DRAIN_DEADLINE)
            try:
                scan = await asyncio.wait_for(root.scans.get(), 10)
            except TimeoutError:
                scan = {"paths": []}
            self.phase = "done"
            return self.summary(scan, attach_all)

    async def publish(self, sources: list[PeerProc], root: PeerProc) -> None:
        """Each source publishes ``rate`` messages per second for ``seconds`` seconds.

        The root's SCAN_TREE is started ``SCAN_LEAD`` s before the end, so that its answer
        (after the peer's scan timeout) arrives while the last messages drain.
        """
        interval = 1.0 / self.rate
        rounds = max(1, int(self.seconds * self.rate))
        start = time.monotonic()
        scanned = False
        for i in range(rounds):
            if self.dead.is_set():
                raise DemoError(self.failure or "a peer died")
            if not scanned and time.monotonic() >= start + self.seconds - SCAN_LEAD:
                scanned = True
                await self.command(root, "scan")
            for src in sources:
                await self.command(src, f"publish {src.name}#{i}")
                self.sent += 1
            # Pace the traffic; a peer dying meanwhile ends the wait at once.
            with contextlib.suppress(TimeoutError):
                delay = max(0.0, start + (i + 1) * interval - time.monotonic())
                await asyncio.wait_for(self.dead.wait(), delay)
        if not scanned:
            await self.command(root, "scan")

    def expected_deliveries(self) -> int:
        """Every message a source was told to publish reaches every peer but its source."""
        return self.sent * (self.n - 1)

    def summary(self, scan: dict[str, Any], attach_all: float) -> dict[str, Any]:
        t = self.traffic
        expected = self.expected_deliveries()
        unique = sum(len(p.delivered) for p in self.peers)
        depths = [len(path) for path in scan.get("paths", [])]
        joined_depths = [p.depth for p in self.peers if isinstance(p.depth, int)]
        # Matched at the end: a delivery line may be read before its source's 'published' line.
        latencies = [
            at - t.published_at[key] for key, at in t.delivered_at if key in t.published_at
        ]
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        rss = [r for r in (rss_mb(p.proc.pid) for p in self.peers) if r is not None]
        return {
            "peers": self.n,
            "joined": sum(p.joined.is_set() for p in self.peers),
            "tree_depth": max(depths or joined_depths or [0]),
            "sources": self.n_sources,
            "messages": self.sent,
            "expected_deliveries": expected,
            "deliveries": t.deliveries,
            "delivery_ratio": round(unique / expected, 6) if expected else 1.0,
            "duplicates_to_app": t.duplicates,
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "latency_p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "attach_all_s": round(attach_all, 3),
            "rss_mb_per_peer": round(sum(rss) / len(rss), 1) if rss else None,
            "rss_mb_max": round(max(rss), 1) if rss else None,
            "protocol_errors": sum(p.errors for p in self.peers),
        }


async def _reap(procs: list[asyncio.subprocess.Process], grace: float) -> None:
    """Wait ``grace`` s for the processes to end, then SIGTERM, then SIGKILL (bounded)."""
    for step in (None, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if p.returncode is None]
        if not alive:
            return
        if step is not None:
            for p in alive:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(step)
        wait = grace if step is None else STOP_DEADLINE
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.gather(*(p.wait() for p in alive))


def _print_summary(console: Console, figures: dict[str, Any]) -> None:
    table = Table(title="hp2p demo: summary", show_header=False)
    for key, value in figures.items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


async def _main(demo: Demo) -> dict[str, Any]:
    """Run the demo; SIGTERM ends it like Ctrl-C (asyncio turns SIGINT into a cancellation)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await demo.run()
    finally:
        await asyncio.shield(demo.stop_all())


def demo(
    peers: Annotated[int, typer.Option("--peers", min=1, max=200, help="Peer processes.")] = 12,
    seconds: Annotated[
        float, typer.Option("--seconds", min=1.0, max=600.0, help="Seconds of traffic.")
    ] = 20.0,
    sources: Annotated[
        int, typer.Option("--sources", min=1, help="Peers that publish (spread over the tree).")
    ] = 3,
    rate: Annotated[
        float, typer.Option("--rate", min=0.1, max=1000.0, help="Messages/s per source.")
    ] = 5.0,
    faults: Annotated[
        str | None, typer.Option("--faults", help="Fault injection on every link (see hp2p peer).")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the summary as a BENCHMARKS.md result.")
    ] = None,
) -> None:
    """Start a HOMS and N peers on this machine, publish, show the tree live, summarise."""
    console = Console()
    if faults:
        try:
            FaultPlan.parse(faults)
        except ValueError as exc:
            console.print(f"[bold red]hp2p demo:[/] --faults: {exc}")
            raise typer.Exit(2) from None
    runner = Demo(peers, seconds, sources, rate, faults, console)
    code = 0
    try:
        figures = asyncio.run(_main(runner))
    except DemoError as exc:
        console.print(f"[bold red]hp2p demo failed:[/] {exc}")
        console.print(f"(logs kept in {runner.workdir})")
        raise typer.Exit(1) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("hp2p demo: interrupted; every process it started has been stopped.")
        shutil.rmtree(runner.workdir, ignore_errors=True)
        raise typer.Exit(130) from None
    _print_summary(console, figures)
    if figures["delivery_ratio"] < 1.0 or figures["duplicates_to_app"]:
        code = 1
        console.print("[bold red]not every message reached every peer exactly once[/]")
    if json_file is not None:
        params: dict[str, Any] = {
            "peers": peers,
            "seconds": seconds,
            "sources": runner.n_sources,
            "rate": rate,
        }
        if faults:
            params["faults"] = faults
        path = write_result(json_file, result_document("demo", params=params, metrics=figures))
        console.print(f"result written to {path}")
    shutil.rmtree(runner.workdir, ignore_errors=True)
    raise typer.Exit(code)
