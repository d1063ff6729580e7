"""`hp2p bench homs`: HOMS join throughput and latency (BENCHMARKS.md metric 6).

What it runs, for each database (a SQLite file; PostgreSQL when reachable):

* a real ``hp2p homs`` process, reached over HTTP/1.1 keep-alive by a light load generator
  (``hp2p.bench.httpload``) in its own process;
* the **floor**: ``GET /health`` under the same load, i.e. what the web stack here costs per
  request before the HOMS does any work. Join figures are reported as ratios to it, which is
  what stays meaningful on a shared, noisy machine;
* joins (``POST /peer``, each a new peer into one overlay), sequentially on one connection
  and from 8 concurrent connections, repeated; the median repeat is reported (all are kept
  in the result file);
* the HOMS process's CPU time per join (from ``/proc``), which says where the time goes;
* cold start: from spawning a fresh ``hp2p homs`` until 300 peers have joined (HOMS side:
  tickets and peer lists issued; attaching to the tree is the peers' part).

Every join answer is checked afterwards (202, tickets 1..N without gaps or duplicates), so a
fast but wrong HOMS does not pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hp2p.bench.httpload import LoadResult, Request, load_in_process
from hp2p.bench.procs import cpu_seconds
from hp2p.bench.progress import LineProgress
from hp2p.bench.results import result_document, save_result
from hp2p.homs.db import create_scratch_database, drop_scratch_database
from hp2p.homs.launch import HomsProcess, HomsStartError, start_homs

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
STARTUP_DEADLINE_S = 60.0
CLIENTS = 8
#: Concurrent keep-alive connections per timed mode: metric 6 is the highest join rate whose
#: p99 stays within P99_TARGET_MS, so the load is swept instead of fixed.
MODES: tuple[tuple[str, int], ...] = (("seq", 1), ("c2", 2), ("c4", 4), ("c8", CLIENTS))
P99_TARGET_MS = 10.0

#: Wide enough for the table when the output is not a terminal (rich would use 80).
console = Console(width=max(110, Console().width))


class BenchError(Exception):
    """The benchmark cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------------------- requests


def _create_body(overlay_id: str) -> bytes:
    return json.dumps(
        {
            "overlay": {
                "overlay-id": overlay_id,
                "title": "bench",
                "type": "core",
                "sub-type": "tree",
                "owner-id": "bench",
                "description": "hp2p bench homs",
                "heartbeat-interval": 10,
                "heartbeat-timeout": 15,
                "auth": {"type": "open", "admin_key": "bench-admin"},
                # the joins below are a GO-2023 peer's, which has no key (docs/security.md)
                "security": "reference-compat",
            }
        }
    ).encode()


def join_request(overlay_id: str, peer_id: str) -> bytes:
    """A join as a GO-2023 peer sends it (with its 16-letter password)."""
    body = json.dumps(
        {
            "overlay": {"overlay-id": overlay_id, "type": "core", "sub-type": "tree"},
            "peer": {
                "peer-id": peer_id,
                "address": "ws://127.0.0.1:8082",
                "auth": {"password": "abcdefghijklmnop"},
                "expires": 3600,
            },
        }
    ).encode()
    return Request.build("POST", "/peer", body).raw


HEALTH = Request.build("GET", "/health").raw


def _split(items: list[bytes], clients: int) -> list[list[bytes]]:
    return [items[i::clients] for i in range(clients)]


# ---------------------------------------------------------------------------- the HOMS


@contextlib.contextmanager
def running_homs(
    database: str, workdir: Path, extra: tuple[str, ...] = ()
) -> Iterator[HomsProcess]:
    """A fresh ``hp2p homs`` on ``database``; its ``ready_s`` is spawn to serving."""
    try:
        homs = start_homs(workdir, database, *extra, deadline=STARTUP_DEADLINE_S)
    except HomsStartError as exc:
        raise BenchError(str(exc)) from None
    with homs:
        yield homs


def _cpu_s(homs: HomsProcess) -> float:
    """The HOMS process's CPU seconds so far (0.0 where ``/proc`` says nothing)."""
    return cpu_seconds(homs.pid) or 0.0


def _post(port: int, raw: bytes) -> tuple[int, bytes]:
    result = load_in_process("127.0.0.1", port, [[raw]], keep_bodies=True)
    return result.statuses[0], result.bodies[0]


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Run:
    """One timed load run."""

    n: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    client_cpu_us: float

    @property
    def per_s(self) -> float:
        return self.n / self.wall_s

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "per_s": round(self.per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "server_cpu_us": round(self.server_cpu_us, 1),
            "client_cpu_us": round(self.client_cpu_us, 1),
        }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Bench:
    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self.pool = pool

    def load(
        self, homs: HomsProcess, per_client: list[list[bytes]], keep: bool = False
    ) -> tuple[Run, LoadResult]:
        cpu0 = _cpu_s(homs)
        future = self.pool.submit(load_in_process, "127.0.0.1", homs.port, per_client, keep)
        result = future.result(timeout=600)
        cpu = _cpu_s(homs) - cpu0
        n = len(result.latencies)
        bad = [s for s in result.statuses if s >= 300 or s < 200]
        if bad:
            raise BenchError(f"{len(bad)} of {n} requests failed (statuses {sorted(set(bad))})")
        lat_ms = [x * 1000 for x in result.latencies]
        run = Run(
            n=n,
            wall_s=result.wall_s,
            p50_ms=_percentile(lat_ms, 0.50),
            p99_ms=_percentile(lat_ms, 0.99),
            server_cpu_us=cpu / n * 1e6,
            client_cpu_us=result.client_cpu_s / n * 1e6,
        )
        return run, result

    def joins(self, homs: HomsProcess, n: int, clients: int) -> Run:
        overlay_id = f"bench-{uuid.uuid4().hex[:8]}"
        status, body = _post(
            homs.port, Request.build("POST", "/homs", _create_body(overlay_id)).raw
        )
        if status != 200:
            raise BenchError(f"could not create the overlay: {status} {body[:200]!r}")
        reqs = [
            join_request(overlay_id, f"peer-{i:05d};{1_700_000_000_000_000 + i}") for i in range(n)
        ]
        run, result = self.load(homs, _split(reqs, clients), keep=True)
        tickets = sorted(json.loads(b)["peer"]["ticket-id"] for b in result.bodies)
        if tickets != list(range(1, n + 1)):
            raise BenchError(f"tickets are not 1..{n} without gaps or duplicates")
        return run

    def health(self, homs: HomsProcess, n: int, clients: int) -> Run:
        run, _ = self.load(homs, _split([HEALTH] * n, clients))
        return run


def _median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.per_s)[len(runs) // 2]


# ---------------------------------------------------------------------------- databases


@contextlib.contextmanager
def database(kind: str, base: str | None, workdir: Path) -> Iterator[str]:
    """A fresh database: a new SQLite file, or a scratch database on the PostgreSQL server."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    assert base is not None
    url = asyncio.run(create_scratch_database(base, "hp2p_bench"))
    try:
        yield url
    finally:
        asyncio.run(drop_scratch_database(base, url))


def postgres_reachable(base: str) -> str | None:
    """``None`` if a scratch database can be made on ``base``, else the reason why not."""
    try:
        url = asyncio.run(create_scratch_database(base, "hp2p_bench"))
        asyncio.run(drop_scratch_database(base, url))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------- the command


def homs(
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer joins and one repeat (a smoke run, ~20 s).")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the result file here.")
    ] = None,
    database_url: Annotated[
        str,
        typer.Option(
            "--database",
            help=(
                "PostgreSQL server for the PostgreSQL rows (a scratch database is created "
                "there and dropped after); 'none' to skip PostgreSQL."
            ),
        ),
    ] = DEFAULT_POSTGRES,
    joins: Annotated[
        int, typer.Option("--joins", help="Joins per timed run (into one new overlay).")
    ] = 1000,
    repeats: Annotated[
        int, typer.Option("--repeats", help="Timed runs per figure; the median is reported.")
    ] = 3,
    cold_peers: Annotated[
        int,
        typer.Option("--cold-peers", help="Peers joined in the cold-start figure (0: skip it)."),
    ] = 300,
    homs_args: Annotated[
        str,
        typer.Option(
            "--homs-args",
            help="Extra options for the hp2p homs under test, as one string in shell syntax "
            "(e.g. '--peer-list-size 8 --idle-timeout 30'; `hp2p homs --help` lists them).",
        ),
    ] = "",
) -> None:
    """HOMS joins/s and p50/p99 latency at 1, 2, 4 and 8 connections, against GET /health.

    Metric 6 is the best join rate whose p99 stays ≤ 10 ms, so the load is swept.

    Examples:

      hp2p bench homs --quick

      hp2p bench homs --json bench-results/homs.json

      hp2p bench homs --database none          # SQLite only

      hp2p bench homs --database postgresql://postgres@db.example:5432/postgres

      hp2p bench homs --quick --homs-args '--peer-list-size 8 --idle-timeout 30'
    """
    if quick:
        joins, repeats = min(joins, 500), 1
    if joins < 10 or repeats < 1 or cold_peers < 0:
        raise typer.BadParameter("--joins must be >= 10, --repeats >= 1, --cold-peers >= 0")
    kinds = ["sqlite"]
    skipped: dict[str, str] = {}
    if database_url.lower() == "none":
        skipped["postgresql"] = "--database none"
    else:
        why = postgres_reachable(database_url)
        if why is None:
            kinds.append("postgresql")
        else:
            skipped["postgresql"] = f"not reachable at {database_url} ({why})"
            console.print(
                f"[yellow]PostgreSQL skipped: {skipped['postgresql']}. "
                "Start it or pass --database URL.[/yellow]"
            )
    try:
        extra = tuple(shlex.split(homs_args))
    except ValueError as exc:
        raise typer.BadParameter(f"--homs-args: {exc} in {homs_args!r}") from None
    try:
        doc = _run(kinds, joins, repeats, extra, skipped, database_url, cold_peers)
    except BenchError as exc:
        console.print(f"[red]hp2p bench homs: {exc}[/red]")
        raise typer.Exit(1) from None
    save_result(console, json_path, doc)


def _run(
    kinds: list[str],
    joins: int,
    repeats: int,
    extra: tuple[str, ...],
    skipped: dict[str, str],
    pg_base: str,
    cold_peers: int = 300,
) -> dict[str, Any]:
    metrics: dict[str, float | int | str | None] = {}
    floor: dict[str, float | int | str | None] = {}
    ratios: dict[str, float | int | str | None] = {}
    runs_log: dict[str, Any] = {}
    table = Table(
        title="hp2p bench homs (HTTP/1.1 keep-alive, real hp2p homs process)",
        caption="CPU µs = HOMS process CPU per request; × floor = req/s ÷ GET /health req/s",
    )
    columns = ("db", "load", "what", "per s", "p50 ms", "p99 ms", "CPU µs", "× floor")
    for col in columns:
        table.add_column(col, justify="left" if col in ("db", "load", "what") else "right")
    steps = len(kinds) * (2 * len(MODES) * repeats + 1)
    with (
        tempfile.TemporaryDirectory(prefix="hp2p-bench-homs-") as tmp,
        ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool,
        LineProgress(console=console, transient=True) as progress,
    ):
        task = progress.add_task("HOMS benchmark", total=steps)
        bench = Bench(pool)
        workdir = Path(tmp)
        for kind in kinds:
            with database(kind, pg_base, workdir) as url, running_homs(url, workdir, extra) as h:
                # Warm up the interpreter, the connection pools and the load generator.
                bench.health(h, 200, CLIENTS)
                bench.joins(h, 50, CLIENTS)
                for mode, clients in MODES:
                    h_runs, j_runs = [], []
                    for _ in range(repeats):
                        progress.update(task, description=f"{kind} {mode}: GET /health")
                        h_runs.append(bench.health(h, joins, clients))
                        progress.advance(task)
                        progress.update(task, description=f"{kind} {mode}: {joins} joins")
                        j_runs.append(bench.joins(h, joins, clients))
                        progress.advance(task)
                    hr, jr = _median_run(h_runs), _median_run(j_runs)
                    key = f"{kind}_{mode}"
                    runs_log[key] = {
                        "health": [r.as_dict() for r in h_runs],
                        "joins": [r.as_dict() for r in j_runs],
                    }
                    metrics[f"{key}_joins_per_s"] = round(jr.per_s, 1)
                    metrics[f"{key}_join_p50_ms"] = round(jr.p50_ms, 3)
                    metrics[f"{key}_join_p99_ms"] = round(jr.p99_ms, 3)
                    metrics[f"{key}_homs_cpu_us_per_join"] = round(jr.server_cpu_us, 1)
                    metrics[f"{key}_client_cpu_us_per_join"] = round(jr.client_cpu_us, 1)
                    floor[f"{key}_health_per_s"] = round(hr.per_s, 1)
                    floor[f"{key}_health_p50_ms"] = round(hr.p50_ms, 3)
                    floor[f"{key}_health_p99_ms"] = round(hr.p99_ms, 3)
                    floor[f"{key}_homs_cpu_us_per_health"] = round(hr.server_cpu_us, 1)
                    ratio = jr.per_s / hr.per_s
                    ratios[f"{key}_joins_per_s_vs_health"] = round(ratio, 3)
                    ratios[f"{key}_join_p99_vs_health"] = round(jr.p99_ms / hr.p99_ms, 2)
                    load = "seq" if clients == 1 else f"{clients} conc"
                    table.add_row(
                        kind,
                        load,
                        "GET /health",
                        f"{hr.per_s:,.0f}",
                        f"{hr.p50_ms:.2f}",
                        f"{hr.p99_ms:.2f}",
                        f"{hr.server_cpu_us:,.0f}",
                        "1.00",
                    )
                    table.add_row(
                        kind,
                        load,
                        "POST /peer",
                        f"{jr.per_s:,.0f}",
                        f"{jr.p50_ms:.2f}",
                        f"{jr.p99_ms:.2f}",
                        f"{jr.server_cpu_us:,.0f}",
                        f"{ratio:.2f}",
                    )
            if cold_peers == 0:
                continue
            progress.update(task, description=f"{kind}: cold start, {cold_peers} joins")
            cold = _cold_start(bench, kind, pg_base, workdir, extra, cold_peers)
            progress.advance(task)
            metrics[f"{kind}_cold_ready_s"] = round(cold[0], 3)
            metrics[f"{kind}_cold_joins_s"] = round(cold[1], 3)
            metrics[f"{kind}_attach_all_s"] = round(cold[0] + cold[1], 3)
            table.add_row(
                kind,
                "cold",
                f"start + {cold_peers} joins",
                f"{cold[0]:.2f} s + {cold[1]:.2f} s",
                "",
                "",
                "",
                "",
            )
    for kind in kinds:
        best = _best_within_target(metrics, kind)
        metrics[f"{kind}_joins_per_s_at_p99_target"] = best[1] if best else None
        metrics[f"{kind}_clients_at_p99_target"] = best[0] if best else None
    if "sqlite_c8_joins_per_s" in metrics:
        # Metric 6 as BENCHMARKS.md defines it: the best rate at p99 ≤ 10 ms (SQLite).
        best = _best_within_target(metrics, "sqlite")
        mode = f"c{best[0]}" if best and best[0] > 1 else "seq"
        metrics["joins_per_s"] = metrics[f"sqlite_{mode}_joins_per_s"] if best else None
        metrics["join_p99_ms"] = metrics[f"sqlite_{mode}_join_p99_ms"] if best else None
        metrics["attach_all_s"] = metrics.get("sqlite_attach_all_s")
    console.print(table)
    for kind, why in skipped.items():
        console.print(f"[yellow]{kind}: skipped ({why})[/yellow]")
    console.print(
        "Target (BENCHMARKS.md #6): ≥ 2,000 joins/s at p99 ≤ 10 ms (SQLite, keep-alive); "
        "300 peers in ≤ 3 s. '× floor' = joins/s ÷ GET /health/s under the same load."
    )
    for kind in kinds:
        rate = metrics[f"{kind}_joins_per_s_at_p99_target"]
        conns = metrics[f"{kind}_clients_at_p99_target"]
        console.print(
            f"{kind}: best join rate with p99 ≤ {P99_TARGET_MS:g} ms: "
            + (f"{rate:,.0f}/s with {conns} connection(s)" if rate else "none (every load missed)")
        )
    return result_document(
        "homs",
        params={
            "joins": joins,
            "repeats": repeats,
            "cold_peers": cold_peers,
            "clients": [clients for _, clients in MODES],
            "p99_target_ms": P99_TARGET_MS,
            "databases": kinds,
            "skipped": skipped,
            "homs_args": list(extra),
            "load_generator": "hp2p.bench.httpload (raw asyncio HTTP/1.1 keep-alive, own process)",
            "runs": runs_log,
        },
        metrics=metrics,
        baselines={"floor": floor},
        ratios=ratios,
    )


def _best_within_target(
    metrics: dict[str, float | int | str | None], kind: str
) -> tuple[int, float] | None:
    """(connections, joins/s) of the fastest mode whose join p99 met the target, if any."""
    best: tuple[int, float] | None = None
    for mode, clients in MODES:
        rate, p99 = (
            metrics.get(f"{kind}_{mode}_joins_per_s"),
            metrics.get(f"{kind}_{mode}_join_p99_ms"),
        )
        if not isinstance(rate, int | float) or not isinstance(p99, int | float):
            continue
        if p99 <= P99_TARGET_MS and (best is None or rate > best[1]):
            best = (clients, float(rate))
    return best


def _cold_start(
    bench: Bench,
    kind: str,
    pg_base: str,
    workdir: Path,
    extra: tuple[str, ...],
    peers: int,
) -> tuple[float, float]:
    """Seconds from spawning a fresh HOMS to ready, and from ready to ``peers`` joined."""
    with database(kind, pg_base, workdir) as url, running_homs(url, workdir, extra) as h:
        start = time.perf_counter()
        bench.joins(h, peers, CLIENTS)
        return h.ready_s or 0.0, time.perf_counter() - start
