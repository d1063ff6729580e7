"""`hp2p bench mesh`: BENCHMARKS.md metric 9, a 1 MiB object to N SubMesh peers.

Measured in the deterministic harness (:mod:`hp2p.sim.mesh`) with the real ``MeshCore`` and
the real R2 codec (every frame encoded, counted and decoded), under a link model: every peer
has an uplink of ``--bandwidth`` bytes/s (frames queue behind each other) and each pair a
latency drawn from ``--latency``. Not real processes: on loopback the bandwidth is effectively
infinite and 100 processes on 2 shared cores would measure the scheduler, not the protocol.

The in-run baseline is the CoreTree path: the same object pushed as one BROADCAST_DATA down the
tree the real ``PeerCore`` builds for the same N (:mod:`hp2p.sim.network`), store-and-forward
under the same link model (a peer forwards after it has the whole frame, to its children one
after the other on its uplink).

Figures: per-peer delivery latency p50/p99, the last delivery (p50/p99 over seeds), and wire
amplification = bytes on the wire / (N × object size).
"""

from __future__ import annotations

import heapq
import random
import statistics
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hp2p.bench.progress import LineProgress
from hp2p.bench.results import check_writable, result_document, save_result
from hp2p.peer.mesh_config import MeshConfig
from hp2p.sim.mesh import MeshNetwork
from hp2p.sim.network import Network
from hp2p.wire.r2 import BroadcastData, encode

MiB = 1 << 20


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def mesh_run(
    peers: int,
    size: int,
    seed: int,
    *,
    bandwidth: float,
    latency: tuple[float, float],
    config: MeshConfig,
    deadline: float = 120.0,
) -> dict[str, Any]:
    """One SubMesh run: join N peers, let links settle, publish, run until all have it."""
    net = MeshNetwork(seed=seed, config=config, bandwidth=bandwidth, latency=latency)
    net.add_peer(net.source_id)
    for _ in range(peers):
        net.add_peer()
        net.run(net.now + 0.01)
    net.run(net.now + 2.0)
    data = random.Random(seed).randbytes(size)
    wire_before = net.bytes_on_wire
    start = net.now
    obj = net.publish(data)
    done = net.run_until(lambda: net.all_have(obj), deadline=start + deadline, step=0.02)
    receivers = net.receivers()
    latencies = [p.received[obj] - start for p in receivers if obj in p.received]
    ok = sum(1 for p in receivers if p.data.get(obj) == data)
    # the wire bytes of the transfer itself (heartbeats during it included)
    wire = net.bytes_on_wire - wire_before
    return {
        "complete": done,
        "delivered": ok,
        "latencies": latencies,
        "last": max(latencies) if latencies else float("nan"),
        "amplification": wire / (peers * size),
        "by_type": dict(net.bytes_by_type),
    }


def tree_run(
    peers: int, size: int, seed: int, *, bandwidth: float, latency: tuple[float, float]
) -> dict[str, Any]:
    """The CoreTree path: the real core's tree for N+1 peers, one 1 MiB push store-and-forward."""
    net = Network(seed=seed, latency=latency)
    for _ in range(peers + 1):
        net.add_peer()
        net.run(net.now + 0.05)
    net.run(net.now + 5.0)
    parents = net.parents()
    children: dict[str, list[str]] = {}
    root = None
    for child, parent in parents.items():
        if parent is None:
            root = child
        else:
            children.setdefault(parent, []).append(child)
    assert root is not None, "the tree has no root"
    frame = len(encode(BroadcastData(source=root, sequence=1, data=bytes(size))))
    lat = random.Random(f"{seed}:tree-latency")
    arrival: dict[str, float] = {root: 0.0}
    heap = [(0.0, root)]
    while heap:
        t, node = heapq.heappop(heap)
        uplink = t
        for child in sorted(children.get(node, [])):
            uplink += frame / bandwidth
            arrival[child] = uplink + lat.uniform(*latency)
            heapq.heappush(heap, (arrival[child], child))
    latencies = [t for n, t in arrival.items() if n != root]
    return {
        "complete": len(latencies) == peers,
        "delivered": len(latencies),
        "latencies": latencies,
        "last": max(latencies),
        "amplification": frame * len(latencies) / (peers * size),
        "depth": max(d for d in net.depths().values() if d is not None),
    }


def run(
    peers: int,
    size: int,
    seeds: list[int],
    bandwidth: float,
    latency: tuple[float, float],
    piece_size: int,
    console: Console | None = None,
) -> dict[str, Any]:
    config = MeshConfig(piece_size=piece_size)
    mesh_runs, tree_runs = [], []
    quiet = Console(quiet=True)  # callers without a console (tests) see nothing
    with LineProgress(console=console or quiet, transient=True) as progress:
        task = progress.add_task(f"{peers} peers", total=2 * len(seeds))
        for seed in seeds:
            progress.update(task, description=f"seed {seed}: SubMesh pull, {peers} peers")
            mesh_runs.append(
                mesh_run(peers, size, seed, bandwidth=bandwidth, latency=latency, config=config)
            )
            progress.update(task, advance=1, description=f"seed {seed}: tree push, {peers} peers")
            tree_runs.append(tree_run(peers, size, seed, bandwidth=bandwidth, latency=latency))
            progress.advance(task)

    def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
        latencies = [x for r in runs for x in r["latencies"]]
        lasts = [r["last"] for r in runs]
        return {
            "delivery_ratio": sum(r["delivered"] for r in runs) / (peers * len(runs)),
            "latency_p50_ms": 1000 * _pct(latencies, 50),
            "latency_p99_ms": 1000 * _pct(latencies, 99),
            "last_delivery_p50_ms": 1000 * _pct(lasts, 50),
            "last_delivery_p99_ms": 1000 * _pct(lasts, 99),
            "wire_amplification": statistics.mean(r["amplification"] for r in runs),
        }

    metrics = figures(mesh_runs)
    tree = figures(tree_runs)
    tree["tree_depth"] = max(r["depth"] for r in tree_runs)
    by_type: dict[str, int] = {}
    for r in mesh_runs:
        for k, v in r["by_type"].items():
            by_type[k] = by_type.get(k, 0) + v
    total = sum(by_type.values()) or 1
    for k, v in sorted(by_type.items()):
        metrics[f"wire_share_{k}"] = round(v / total, 4)
    return result_document(
        "mesh",
        params={
            "peers": peers,
            "object_bytes": size,
            "piece_bytes": piece_size,
            "seeds": seeds,
            "uplink_bytes_per_s": bandwidth,
            "latency_s": list(latency),
            "neighbours": config.target_neighbours,
            "max_requests": config.max_requests,
            "max_requests_per_neighbour": config.max_requests_per_neighbour,
            "mode": "harness (hp2p.sim.mesh, real MeshCore and R2 codec, link model)",
            "baseline": "CoreTree push of one BROADCAST_DATA, store-and-forward, same links",
        },
        metrics=metrics,
        baselines={"tree_push": tree},
        ratios={
            "last_delivery_p50": metrics["last_delivery_p50_ms"] / tree["last_delivery_p50_ms"],
            "last_delivery_p99": metrics["last_delivery_p99_ms"] / tree["last_delivery_p99_ms"],
            "wire_amplification": metrics["wire_amplification"] / tree["wire_amplification"],
        },
    )


def _table(doc: dict[str, Any]) -> Table:
    m, t = doc["metrics"], doc["baselines"]["tree_push"]
    table = Table(
        title=f"1 object of {doc['params']['object_bytes']:,} B to "
        f"{doc['params']['peers']} peers (harness, link model)"
    )
    table.add_column("figure")
    table.add_column("SubMesh pull", justify="right")
    table.add_column("tree push", justify="right")
    table.add_column("target", justify="right")
    rows = [
        ("delivery ratio", "delivery_ratio", "{:.3f}", "1.000"),
        ("latency p50 (ms)", "latency_p50_ms", "{:.0f}", ""),
        ("latency p99 (ms)", "latency_p99_ms", "{:.0f}", ""),
        ("last delivery p50 (ms)", "last_delivery_p50_ms", "{:.0f}", ""),
        ("last delivery p99 (ms)", "last_delivery_p99_ms", "{:.0f}", "≤ 1000"),
        ("wire amplification", "wire_amplification", "{:.3f}", "≤ 1.3"),
    ]
    for label, key, fmt, target in rows:
        table.add_row(label, fmt.format(m[key]), fmt.format(t[key]), target)
    return table


def mesh(
    json_file: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Also write the result file (BENCHMARKS.md)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="N=30 peers and one seed (seconds, not minutes).")
    ] = False,
    peers: Annotated[
        int | None, typer.Option("--peers", help="SubMesh peers besides the source (default 100).")
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Object size in bytes.")] = MiB,
    piece_size: Annotated[int, typer.Option("--piece-size", help="Piece size in bytes.")] = 32768,
    bandwidth: Annotated[
        float, typer.Option("--bandwidth", help="Uplink per peer, bytes/s (12.5e6 = 100 Mbit/s).")
    ] = 12.5e6,
    latency_min: Annotated[float, typer.Option("--latency-min", help="Seconds.")] = 0.001,
    latency_max: Annotated[float, typer.Option("--latency-max", help="Seconds.")] = 0.010,
    seeds: Annotated[int, typer.Option("--seeds", help="Number of seeds (default 3).")] = 3,
) -> None:
    """SubMesh large-object benchmark (BENCHMARKS.md metric 9): a 1 MiB object pulled by N peers,
    against the same object pushed down the CoreTree, in the harness with a link model.

    Examples:

      hp2p bench mesh --quick

      hp2p bench mesh --json bench-results/mesh.json

      hp2p bench mesh --peers 200 --bandwidth 1.25e6 --piece-size 16384
    """
    console = Console()
    problems = []
    if seeds < 1:
        problems.append("--seeds must be at least 1")
    if size < 1 or piece_size < 1:
        problems.append("--size and --piece-size must be positive")
    if bandwidth <= 0 or not 0 <= latency_min <= latency_max:
        problems.append("--bandwidth must be > 0 and 0 <= --latency-min <= --latency-max")
    n = peers if peers is not None else (30 if quick else 100)
    if n < 1:
        problems.append("--peers must be at least 1")
    if problems:
        console.print("[red]" + "; ".join(problems) + "[/]")
        raise typer.Exit(2)
    check_writable(console, json_file)
    seed_list = [1] if quick else list(range(1, seeds + 1))
    doc = run(n, size, seed_list, bandwidth, (latency_min, latency_max), piece_size, console)
    console.print(_table(doc))
    r = doc["ratios"]
    console.print(
        f"SubMesh / tree push: last delivery p50 {r['last_delivery_p50']:.2f}×, "
        f"wire {r['wire_amplification']:.2f}×"
    )
    save_result(console, json_file, doc)
