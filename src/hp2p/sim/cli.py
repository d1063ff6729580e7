"""``hp2p sim``: simulate an overlay of many peers with the real core on a virtual clock."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hp2p.bench.progress import LineProgress
from hp2p.bench.results import result_document, write_result
from hp2p.sim.links import LatencyModel, LinkModel, LinkSpecError, Partition
from hp2p.sim.metrics import analyse, combine
from hp2p.sim.scenario import Scenario, ScenarioError, run_scenario

EPILOG = """
Examples:

  hp2p sim                                          # 100 peers, 10 msg/s for 10 s, seeds 1,2,3

  hp2p sim --peers 200 --fail 0.3 --plots sim-plots # kill 30 % at t=3 s; PNGs in sim-plots/

  hp2p sim --peers 200 --fail 0.3 --hang            # the same victims hang (SIGSTOP-like)

  hp2p sim --latency king --jitter 2 --loss 0.01    # geographic latencies, jitter, 1 % loss

  hp2p sim --join-rate 2 --leave-rate 2 --duration 30   # continuous churn

  hp2p sim --partition 2,6,0.3                      # cut 30 % off from t=2 s to t=6 s

  hp2p sim --peers 10000 --join-gap 0.005 --heartbeat 5 --cache-count 64 --seeds 1 \\
      --rate 100 --duration 2 --json bench-results/sim-10k.json     # scale run

Times are virtual seconds; nothing touches the network or the real clock, and the same seeds
give the same results. See docs/simulator.md.
"""


def _fail(message: str) -> None:
    typer.echo(f"hp2p sim: {message}", err=True)
    raise typer.Exit(2)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(seeds) > 50:
        _fail(f"--seeds wants 1 to 50 comma-separated integers, e.g. 1,2,3 (got {text!r})")
    return seeds


def sim(
    peers: Annotated[int, typer.Option(help="Peers that join before traffic starts.")] = 100,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; medians over them.")] = "1,2,3",
    join_gap: Annotated[float, typer.Option(help="Virtual seconds between two joins.")] = 0.01,
    settle: Annotated[float, typer.Option(help="Quiet time after the last join.")] = 5.0,
    rate: Annotated[float, typer.Option(help="Broadcasts per second during traffic.")] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds of traffic.")] = 10.0,
    drain: Annotated[float, typer.Option(help="Seconds simulated after the last publish.")] = 5.0,
    payload: Annotated[int, typer.Option(help="Payload bytes per broadcast.")] = 1024,
    sources: Annotated[str, typer.Option(help="root (latency by depth) or random.")] = "root",
    max_children: Annotated[
        int, typer.Option("--max-children", help="Children per peer (max_children).")
    ] = 4,
    fanout: Annotated[
        int | None, typer.Option("--fanout", hidden=True, help="Deprecated: --max-children.")
    ] = None,
    heartbeat: Annotated[float, typer.Option(help="Overlay heartbeat interval (s).")] = 1.0,
    heartbeat_timeout: Annotated[
        float | None, typer.Option(help="Heartbeat timeout (s); default 3 x --heartbeat.")
    ] = None,
    cache_count: Annotated[int, typer.Option(help="Cached messages per source.")] = 1024,
    latency: Annotated[
        str, typer.Option(help="fixed:MS | uniform:LO,HI | lognormal:MEDIAN,SIGMA | king[:SCALE]")
    ] = "uniform:1,10",
    jitter: Annotated[
        float, typer.Option(help="Extra delay per message, uniform in [0, MS].")
    ] = 0.0,
    loss: Annotated[
        float, typer.Option(help="Loss probability of live BROADCAST_DATA per link copy.")
    ] = 0.0,
    loss_all: Annotated[
        bool, typer.Option(help="--loss hits every message (a datagram link), not only data.")
    ] = False,
    bandwidth: Annotated[float, typer.Option(help="Bytes/s per link (0: unlimited).")] = 0.0,
    partition: Annotated[
        list[str] | None,
        typer.Option(help="START,END,FRACTION (s after traffic starts); repeatable."),
    ] = None,
    fail: Annotated[float, typer.Option(help="Mass failure: fraction of peers, e.g. 0.3.")] = 0.0,
    fail_at: Annotated[float, typer.Option(help="Failure time, s after traffic starts.")] = 3.0,
    hang: Annotated[bool, typer.Option(help="Victims hang (silent) instead of crashing.")] = False,
    join_rate: Annotated[float, typer.Option(help="Churn: joins per second.")] = 0.0,
    leave_rate: Annotated[float, typer.Option(help="Churn: departures per second.")] = 0.0,
    leave_mode: Annotated[
        str, typer.Option(help="Churn departures: crash, leave, hang.")
    ] = "crash",
    codec: Annotated[bool, typer.Option(help="Encode/decode every message (slower).")] = False,
    max_events: Annotated[
        int, typer.Option(help="Bound on simulated events per seed.")
    ] = 200_000_000,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write the result file.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG plots into this folder.")] = None,
) -> None:
    """Simulate an overlay with the real sans-IO peer core, an in-process HOMS and a virtual clock.

    Prints delivery, repair time, RMR, control overhead and latency by depth (BENCHMARKS.md),
    and how many simulated deliveries per wall second the simulator reached.
    """
    seed_list = _seeds(seeds)
    if fanout is not None:
        typer.echo("hp2p sim: --fanout is deprecated: use --max-children", err=True)
        max_children = fanout
    try:
        links = LinkModel(
            latency=LatencyModel.parse(latency),
            jitter=jitter / 1000,
            loss=loss,
            loss_all=loss_all,
            bandwidth=bandwidth,
            partitions=tuple(Partition.parse(p) for p in partition or []),
        )
        scenario = Scenario(
            peers=peers,
            join_gap=join_gap,
            settle=settle,
            rate=rate,
            duration=duration,
            drain=drain,
            payload=payload,
            sources=sources,
            max_children=max_children,
            heartbeat_interval=heartbeat,
            heartbeat_timeout=heartbeat_timeout if heartbeat_timeout is not None else 3 * heartbeat,
            cache_count=cache_count,
            fail_fraction=fail,
            fail_at=fail_at,
            fail_mode="hang" if hang else "crash",
            join_rate=join_rate,
            leave_rate=leave_rate,
            leave_mode=leave_mode,
            links=links,
            codec=codec,
            max_events=max_events,
        )
        scenario.check()
    except (LinkSpecError, ScenarioError) as exc:
        _fail(str(exc))
    console = Console(stderr=True)
    runs: list[dict[str, Any]] = []
    with LineProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("virtual {task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for seed in seed_list:
            task = progress.add_task(f"seed {seed}: {peers} peers", total=scenario.end)

            def tick(now: float, end: float, task: Any = task) -> None:
                progress.update(task, completed=now)

            try:
                record = run_scenario(scenario, seed, progress=tick)
            except ScenarioError as exc:
                _fail(f"seed {seed}: {exc}")
            result = analyse(record)
            result["seed"] = seed
            runs.append(result)
    metrics = combine([r["metrics"] for r in runs])
    _print_table(console, metrics, peers, seed_list)
    if json_file is not None:
        document = result_document(
            "sim",
            params=_params(scenario, seed_list, latency),
            metrics=metrics,
        )
        document["per_seed"] = [{"seed": r["seed"], **r["metrics"]} for r in runs]
        console.print(f"result file: {write_result(json_file, document)}")
    if plots is not None:
        from hp2p.sim.plots import PlotsUnavailableError, write_sim_plots

        try:
            files = write_sim_plots(plots, runs, f"{peers} peers")
        except PlotsUnavailableError as exc:
            _fail(str(exc))
        console.print("plots: " + ", ".join(str(f) for f in files))


def _params(scenario: Scenario, seeds: list[int], latency: str) -> dict[str, Any]:
    links = scenario.links
    return {
        "peers": scenario.peers,
        "seeds": seeds,
        "join_gap": scenario.join_gap,
        "rate": scenario.rate,
        "duration": scenario.duration,
        "payload": scenario.payload,
        "max_children": scenario.max_children,
        "sources": scenario.sources,
        "heartbeat_interval": scenario.heartbeat_interval,
        "heartbeat_timeout": scenario.heartbeat_timeout,
        "cache_count": scenario.cache_count,
        "latency": latency,
        "jitter_s": links.jitter,
        "loss": links.loss,
        "loss_all": links.loss_all,
        "bandwidth": links.bandwidth,
        "partitions": [[p.start, p.end, p.fraction] for p in links.partitions],
        "fail_fraction": scenario.fail_fraction,
        "fail_at": scenario.fail_at,
        "fail_mode": scenario.fail_mode,
        "join_rate": scenario.join_rate,
        "leave_rate": scenario.leave_rate,
        "leave_mode": scenario.leave_mode,
        "codec": scenario.codec,
    }


def _print_table(console: Console, metrics: dict[str, Any], peers: int, seeds: list[int]) -> None:
    table = Table(title=f"hp2p sim: {peers} peers, medians over seeds {seeds}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(
            key, "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        )
    Console().print(table)
