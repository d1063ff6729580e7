"""`hp2p bench churn`: delivery after mass failure and tree repair time (BENCHMARKS.md 1 and 2).

Real processes on 127.0.0.1: one ``hp2p homs`` and N ``hp2p peer --json-events --stdin``. Five
sources publish continuously (10 messages/s in all, 1 KiB each) through their stdin; at ``t0``
X % of the other peers get SIGKILL (crash) or SIGSTOP (hang: only heartbeats can tell). Every
peer prints one JSON line per delivery, which reader threads here timestamp and count, so:

* **metric 1** — for each message published by a surviving source, over every surviving peer:
  delivered exactly once by the end of the run (``delivery_ratio_during`` for messages
  published in [t0, t0+2 s], ``delivery_ratio_after`` after t0+2 s), and also within 1 s of
  publication (``live_ratio_*``: what the tree did before data recovery filled the holes);
* **metric 2** — for each orphan (a survivor that printed ``detached`` after t0): from t0 to
  its ``attached`` event, p50/p99 over orphans, for crash and hang separately. Both ends are
  Unix times on this one machine: t0 just before the signals, ``attached`` from the event's
  own ``t`` (the peer's clock when it re-attached, not when this reader read the line).

One cluster serves every case of one N: after a case the hung peers are killed and new peers
join until there are N again. Every wait has a deadline; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hp2p.bench.events import EOF, Event, follow
from hp2p.bench.progress import LineProgress
from hp2p.bench.results import check_writable, result_document, save_result
from hp2p.homs.launch import HomsStartError, start_homs

PAYLOAD = 1024
SOURCES = 5
RATE = 10.0  # messages per second, all sources together
WARMUP = 2.0
AFTER = 6.0  # publishing goes on this long after t0
SETTLE = 10.0  # then recovery gets this long before counting
LIVE = 1.0  # "live" delivery: within this of publication
HEARTBEAT = ("1", "2")  # overlay heartbeat interval / timeout, s (HOMP takes integers)
START_DEADLINE = 90.0


class BenchError(RuntimeError):
    """The cluster could not be set up; the message says what to check."""


@dataclass(eq=False)
class Peer:
    """One ``hp2p peer`` process and what its JSON lines said."""

    name: str
    proc: subprocess.Popen[str]
    joined: threading.Event = field(default_factory=threading.Event)
    info: dict[str, Any] = field(default_factory=dict)
    got: Counter[tuple[str, int]] = field(default_factory=Counter)
    first: dict[tuple[str, int], float] = field(default_factory=dict)
    published: dict[int, float] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    alive: bool = True
    ended: threading.Event = field(default_factory=threading.Event)

    def on_event(self, event: Event) -> None:
        """One event line, on the reading thread (:func:`hp2p.bench.events.follow`)."""
        # the peer's own time of the event, else when this reader got to the line
        kind, t = event.kind, event.t_or(time.time())
        if kind == "deliver":
            key = event.message
            self.got[key] += 1
            self.first.setdefault(key, t)
        elif kind == "published":
            self.published[event.message[1]] = t
        elif kind in ("detached", "attached"):
            self.timeline.append((t, kind))
        elif kind == "joined":
            self.info = event
            self.joined.set()
        elif kind == EOF:
            self.ended.set()

    def command(self, line: str) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True


class Cluster:
    """A HOMS process and N peer processes on loopback."""

    def __init__(self, workdir: Path, console: Console, security: str = "credentials") -> None:
        self.workdir = workdir
        self.console = console
        self.security = security
        self.peers: dict[str, Peer] = {}
        self.overlay_id = ""
        self._count = 0
        try:
            self.homs = start_homs(workdir, deadline=START_DEADLINE, log_level="error")
        except HomsStartError as exc:
            raise BenchError(str(exc)) from None
        self.url = self.homs.url

    def _spawn(self, *args: str) -> Peer:
        self._count += 1
        name = f"b{self._count:04d}"
        cmd = [sys.executable, "-m", "hp2p", "peer", "--homs", self.url, "--id", name]
        cmd += ["--json-events", "--stdin", "--log-level", "error", "--expires", "10"]
        cmd += ["--set", f"heartbeat_interval={HEARTBEAT[0]}"]
        cmd += ["--set", f"heartbeat_timeout={HEARTBEAT[1]}", *args]
        err = (self.workdir / f"{name}.err").open("wb")
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1
        )
        err.close()
        peer = Peer(name, proc)
        assert proc.stdout is not None
        follow(proc.stdout, peer.on_event, name)
        self.peers[name] = peer
        return peer

    def grow(self, n: int, progress: Progress | None = None, batch: int = 8) -> None:
        """Start peers until ``n`` are alive, ``batch`` at a time, each waited for."""
        if not self.peers:
            root = self._spawn("--create", "churn-bench", "--security", self.security)
            if not _wait(root.joined, root.ended, START_DEADLINE):
                raise BenchError(f"the root peer did not join: see {self.workdir}/b0001.err")
            self.overlay_id = str(root.info.get("overlay_id"))
        task = None if progress is None else progress.add_task("starting peers", total=n)
        for _ in range(4 * n):  # bounded: each round starts at most `batch` peers
            alive = self.alive()
            if progress is not None and task is not None:
                progress.update(task, completed=len(alive))
                progress.refresh()
            if len(alive) >= n:
                break
            fresh = [
                self._spawn("--join", self.overlay_id) for _ in range(min(batch, n - len(alive)))
            ]
            for peer in fresh:
                if not _wait(peer.joined, peer.ended, START_DEADLINE):
                    peer.alive = False
                    with contextlib.suppress(ProcessLookupError):
                        peer.proc.kill()
        if progress is not None and task is not None:
            progress.remove_task(task)
        if len(self.alive()) < n:
            raise BenchError(f"only {len(self.alive())} of {n} peers joined; see {self.workdir}")

    def alive(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.alive and not p.ended.is_set()]

    @property
    def root(self) -> Peer:
        return self.peers["b0001"]

    def close(self) -> None:
        for peer in self.peers.values():
            with contextlib.suppress(ProcessLookupError):
                peer.proc.send_signal(signal.SIGCONT)
                peer.proc.kill()
        for peer in self.peers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                peer.proc.wait(timeout=10)
        self.homs.stop()


def _wait(flag: threading.Event, ended: threading.Event, deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if flag.wait(0.2):
            return True
        if ended.is_set():
            return False
    return False


class Publisher:
    """Sources publishing round-robin at ``rate`` in all, until stopped (bounded by a count)."""

    def __init__(self, sources: list[Peer], rate: float, limit: int) -> None:
        self.sources = sources
        self.rate = rate
        self.limit = limit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="publisher")

    def _run(self) -> None:
        pad = "x" * (PAYLOAD - 16)
        start = time.monotonic()
        for k in range(self.limit):
            due = start + k / self.rate
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            source = self.sources[k % len(self.sources)]
            source.command(f"publish {k:08d} {pad}")


@dataclass
class CaseResult:
    n: int
    fault: str
    share: float
    metrics: dict[str, float | int]
    series: list[tuple[float, float, float]]  # (publish time - t0, eventual ratio, live ratio)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def run_case(
    cluster: Cluster, n: int, fault: str, share: float, seed: int, progress: Progress
) -> CaseResult:
    """One mass failure on a cluster of ``n`` peers; the cluster is healed afterwards."""
    rng = random.Random(seed)
    cluster.grow(n, progress)
    alive = cluster.alive()
    root = cluster.root
    others = [p for p in alive if p is not root]
    sources = rng.sample(others, SOURCES)
    candidates = [p for p in others if p not in sources]
    victims = rng.sample(candidates, min(len(candidates), round(share * n)))
    total = int(RATE * (WARMUP + AFTER)) + 10
    publisher = Publisher(sources, RATE, total)
    task = progress.add_task(f"N={n} {fault} {share:.0%}", total=WARMUP + AFTER + SETTLE)
    start = time.time()
    publisher.thread.start()
    _tick(progress, task, WARMUP)
    t0 = time.time()
    sig = signal.SIGKILL if fault == "crash" else signal.SIGSTOP
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            victim.proc.send_signal(sig)
        victim.alive = False
    _tick(progress, task, AFTER)
    publisher.stop.set()
    publisher.thread.join(timeout=5)
    _tick(progress, task, SETTLE)
    progress.remove_task(task)
    survivors = [p for p in alive if p.alive and not p.ended.is_set()]
    metrics, series = _measure(start, t0, sources, survivors)
    metrics["victims"] = len(victims)
    metrics["survivors"] = len(survivors)
    # Peers that were not failed but exited (hp2p peer exits after JoinFailed): not counted
    # as survivors above, so they are reported here.
    metrics["gave_up"] = sum(1 for p in alive if p.alive and p.ended.is_set())
    for victim in victims:  # heal: hung peers die now, the next case starts from n again
        with contextlib.suppress(ProcessLookupError):
            victim.proc.send_signal(signal.SIGKILL)
    return CaseResult(n, fault, share, metrics, series)


def _tick(progress: Progress, task: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.25, left))  # a benchmark's clock, not a synchronisation point
        progress.advance(task, min(0.25, left))
        progress.refresh()


def _measure(
    start: float, t0: float, sources: list[Peer], survivors: list[Peer]
) -> tuple[dict[str, float | int], list[tuple[float, float, float]]]:
    expected: list[tuple[str, int, float]] = [
        (s.name, seq, t) for s in sources for seq, t in s.published.items() if t >= start
    ]
    windows = {"during": (t0, t0 + 2.0), "after": (t0 + 2.0, math.inf), "before": (-math.inf, t0)}
    ok = dict.fromkeys(windows, 0)
    live = dict.fromkeys(windows, 0)
    due = dict.fromkeys(windows, 0)
    duplicates = 0
    bins: dict[int, list[int]] = {}
    for peer in survivors:
        duplicates += sum(c - 1 for c in peer.got.values() if c > 1)
        for source, seq, t in expected:
            if source == peer.name:
                continue
            window = next(w for w, (a, b) in windows.items() if a <= t < b)
            count = peer.got.get((source, seq), 0)
            arrived = peer.first.get((source, seq))
            in_time = arrived is not None and arrived - t <= LIVE
            due[window] += 1
            ok[window] += count == 1
            live[window] += in_time
            slot = bins.setdefault(math.floor((t - t0) / 0.25), [0, 0, 0])
            slot[0] += 1
            slot[1] += count == 1
            slot[2] += in_time
    repairs = []
    unrepaired = 0
    for peer in survivors:
        detached = [t for t, kind in peer.timeline if kind == "detached" and t >= t0 - 0.05]
        if not detached:
            continue
        attached = [t for t, kind in peer.timeline if kind == "attached" and t >= detached[0]]
        if attached:
            repairs.append((attached[0] - t0) * 1000)
        else:
            unrepaired += 1

    def ratio(window: str, table: dict[str, int]) -> float:
        return table[window] / due[window] if due[window] else math.nan

    metrics: dict[str, float | int] = {
        "delivery_ratio_during": ratio("during", ok),
        "delivery_ratio_after": ratio("after", ok),
        "delivery_ratio_before": ratio("before", ok),
        "live_ratio_during": ratio("during", live),
        "live_ratio_after": ratio("after", live),
        "duplicates_to_app": duplicates,
        "messages": len(expected),
        "orphans": len(repairs) + unrepaired,
        "unrepaired": unrepaired,
        "repair_p50_ms": _percentile(repairs, 50),
        "repair_p99_ms": _percentile(repairs, 99),
    }
    series = [(k * 0.25, v[1] / v[0], v[2] / v[0]) for k, v in sorted(bins.items()) if v[0] > 0]
    return metrics, series


def _plot(results: list[CaseResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for r in results:
        label = f"N={r.n} {r.fault} {r.share:.0%}"
        xs = [x for x, _, _ in r.series]
        top.plot(xs, [e for _, e, _ in r.series], label=label)
        bottom.plot(xs, [lv for _, _, lv in r.series], label=label)
    for ax, title in (
        (top, "delivered exactly once by the end (with data recovery)"),
        (bottom, f"delivered within {LIVE:g} s of publication"),
    ):
        ax.axvspan(0, 2, color="grey", alpha=0.15)
        ax.axvline(0, color="red", linewidth=0.8)
        ax.set_ylabel("delivery ratio")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    bottom.set_xlabel("publication time − t0 (s); shaded: [t0, t0+2 s]")
    top.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_case(text: str) -> tuple[str, float]:
    """``crash:80`` → ("crash", 0.8); a clear error for anything else."""
    fault, _, percent = text.partition(":")
    try:
        share = float(percent) / 100
    except ValueError:
        share = -1.0
    if fault not in ("crash", "hang") or not 0 < share < 1:
        raise typer.BadParameter(
            f"{text!r}: expected FAULT:PERCENT with FAULT crash or hang, e.g. crash:80"
        )
    return fault, share


def plan(
    quick: bool, sizes: list[int] | None, only: list[tuple[str, float]] | None = None
) -> list[tuple[int, str, float]]:
    if quick:
        cases = [(50, "crash", 0.3), (50, "hang", 0.3)]
    else:
        cases = [
            (100, "crash", 0.3),
            (100, "crash", 0.5),
            (100, "crash", 0.8),
            (100, "hang", 0.3),
            (200, "crash", 0.3),
            (200, "hang", 0.3),
        ]
    if sizes or only:
        kinds = only or list(dict.fromkeys((fault, share) for _, fault, share in cases))
        ns = sizes or list(dict.fromkeys(n for n, _, _ in cases))
        cases = [(n, fault, share) for n in ns for fault, share in kinds]
    return cases


def run(
    quick: bool,
    sizes: list[int] | None,
    seed: int,
    console: Console,
    only: list[tuple[str, float]] | None = None,
    security: str = "credentials",
) -> tuple[dict[str, Any], list[CaseResult]]:
    cases = plan(quick, sizes, only)
    results: list[CaseResult] = []
    with LineProgress(console=console, transient=True, auto_refresh=False) as progress:
        for n in dict.fromkeys(n for n, _, _ in cases):
            with tempfile.TemporaryDirectory(prefix="hp2p-churn-") as tmp:
                cluster = Cluster(Path(tmp), console, security)
                try:
                    for k, (size, fault, share) in enumerate(c for c in cases if c[0] == n):
                        results.append(run_case(cluster, size, fault, share, seed + k, progress))
                        got = results[-1].metrics
                        console.print(
                            f"N={n} {fault} {share:.0%}: during "
                            f"{got['delivery_ratio_during']:.4%}, after "
                            f"{got['delivery_ratio_after']:.4%}, repair p50 "
                            f"{got['repair_p50_ms']:.0f} ms p99 {got['repair_p99_ms']:.0f} ms"
                        )
                finally:
                    cluster.close()
    metrics: dict[str, float | int | str | None] = {}
    for r in results:
        prefix = f"n{r.n}_{r.fault}_{round(r.share * 100)}_"
        metrics.update({prefix + k: v for k, v in r.metrics.items()})
    headline = next((r for r in results if r.fault == "crash"), None)
    if headline is not None:
        metrics["delivery_ratio_during"] = headline.metrics["delivery_ratio_during"]
        metrics["delivery_ratio_after"] = headline.metrics["delivery_ratio_after"]
        metrics["duplicates_to_app"] = sum(int(r.metrics["duplicates_to_app"]) for r in results)
    for fault in ("crash", "hang"):
        repaired = [r for r in results if r.fault == fault]
        if repaired:
            metrics[f"repair_p50_ms_{fault}"] = max(r.metrics["repair_p50_ms"] for r in repaired)
            metrics[f"repair_p99_ms_{fault}"] = max(r.metrics["repair_p99_ms"] for r in repaired)
    doc = result_document(
        "churn",
        params={
            "cases": [{"peers": n, "fault": f, "share": s} for n, f, s in cases],
            "payload": PAYLOAD,
            "sources": SOURCES,
            "rate_msgs_per_s": RATE,
            "heartbeat_interval_s": int(HEARTBEAT[0]),
            "heartbeat_timeout_s": int(HEARTBEAT[1]),
            "max_children": 4,
            "seed": seed,
            "cpus": os.cpu_count(),
            "security": security,
        },
        metrics={
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()
        },
    )
    return doc, results


def _table(results: list[CaseResult], security: str) -> Table:
    table = Table(title="Delivery after mass failure and repair time (real processes, loopback)")
    table.caption = f"overlay security profile: {security}"
    for column in (
        "N",
        "fault",
        "killed",
        "during [t0,t0+2s]",
        "after t0+2s",
        "live ≤1 s during",
        "dup",
        "orphans",
        "repair p50",
        "repair p99",
    ):
        table.add_column(column, justify="right")
    for r in results:
        m = r.metrics
        table.add_row(
            str(r.n),
            r.fault,
            f"{r.share:.0%}",
            f"{m['delivery_ratio_during']:.4%}",
            f"{m['delivery_ratio_after']:.4%}",
            f"{m['live_ratio_during']:.2%}",
            str(m["duplicates_to_app"]),
            f"{m['orphans']} ({m['unrepaired']} not)",
            f"{m['repair_p50_ms']:.0f} ms",
            f"{m['repair_p99_ms']:.0f} ms",
        )
    return table


def churn(
    json_file: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Also write the result file (BENCHMARKS.md)."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE", help="PNG of delivery ratio over time."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="N=50 only, crash and hang at 30 % (a few minutes).")
    ] = False,
    peers: Annotated[
        list[int] | None,
        typer.Option("--peers", metavar="N", help="Run the cases at these sizes instead."),
    ] = None,
    case: Annotated[
        list[str] | None,
        typer.Option(
            "--case", metavar="FAULT:PERCENT", help="Only these failures, e.g. crash:80, hang:30."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the choice of sources and victims.")] = 1,
    security: Annotated[
        str,
        typer.Option(
            help="Overlay security profile: credentials (AUTH on every link, signed data; the "
            "default) or reference-compat (neither: the cost of trust by difference)."
        ),
    ] = "credentials",
) -> None:
    """Metrics 1 and 2 of BENCHMARKS.md with real `hp2p homs` and `hp2p peer` processes:
    delivery ratio after a mass failure (SIGKILL 30/50/80 % of the peers) during and after
    \\[t0, t0+2 s], and tree repair time p50/p99 for crash (SIGKILL) and hang (SIGSTOP).
    Full run: N=100 (crash 30/50/80 %, hang 30 %) and N=200 (crash and hang 30 %), several
    minutes on 2 cores.

    Examples:

      hp2p bench churn --quick

      hp2p bench churn --json bench-results/churn.json --plot bench-results/churn.png

      hp2p bench churn --peers 80 --seed 3

      hp2p bench churn --peers 100 --case crash:80 --case hang:30

      hp2p bench churn --quick --security reference-compat   # the same without credentials
    """
    if security not in ("credentials", "reference-compat"):
        Console().print(
            f"[red]hp2p bench churn: --security {security!r}: use credentials or "
            "reference-compat[/]"
        )
        raise typer.Exit(2)
    only = [parse_case(c) for c in case] if case else None
    console = Console(width=None if sys.stdout.isatty() else 140)
    check_writable(console, json_file, plot)

    def _interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so that every peer process is killed on the way out

    signal.signal(signal.SIGTERM, _interrupted)
    try:
        doc, results = run(quick, peers, seed, console, only, security)
    except KeyboardInterrupt:
        console.print("[red]hp2p bench churn: interrupted; every process it started was stopped[/]")
        raise typer.Exit(130) from None
    except BenchError as exc:
        console.print(f"[red]hp2p bench churn: {exc}[/]")
        raise typer.Exit(1) from None
    console.print(_table(results, security))
    if plot is not None:
        console.print(f"plot: {_plot(results, plot)}")
    save_result(console, json_file, doc)
