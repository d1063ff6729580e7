"""``hp2p bench tree``: real peer processes on loopback against the floor and flood baselines.

BENCHMARKS.md metrics 3, 4, 5, 7 and 10. For each N: a real ``hp2p homs`` and N ``hp2p peer``
processes build their tree; the root publishes 1 KiB messages

1. at 10 msg/s (latency p50/p99 per depth and for the last peer, CPU per hop, control
   overhead, RSS per process), then
2. at a bounded ladder of rates (the throughput search: the highest rate with ≥ 99.9 %
   delivered and p99 ≤ 100 ms).

The same phases then run on the two baselines of :mod:`hp2p.bench.relay`, in the same run:
**floor** (a bare relay in hp2p's own tree shape) and **flood** (a bare relay flooding a random
mesh of average degree ``max_children``; hp2p has no "tree off" switch). RMR for hp2p comes
from the simulator running the same core at the same N, ``max_children``, payload and rate, and
so does control overhead:
the peer shell exposes neither received copies nor bytes per message kind, and /proc cannot
tell (``wchar`` does not count ``send()`` on sockets).
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from hp2p.bench.overlay import HpOverlay, RelayOverlay, settle
from hp2p.bench.phases import Overlay, figures, passes, quantile, run_phase
from hp2p.bench.procs import ProcError
from hp2p.bench.progress import LineProgress
from hp2p.bench.results import result_document, write_result

LATENCY_RATE = 10.0
FULL_LADDER = (50.0, 100.0, 200.0, 300.0, 450.0, 600.0)
QUICK_LADDER = (50.0, 100.0, 200.0)
GOSSIPSUB_PEERS = 30
GOSSIPSUB_SKIP = (
    "gossipsub baseline skipped: the optional extra hp2p[bench] (py-libp2p) is not installed "
    "here; see docs/benchmarks.md for why it is not part of the default set-up"
)


def measure(
    overlay: Overlay,
    *,
    payload: int,
    latency_messages: int,
    ladder: tuple[float, ...],
    step_s: float,
    advance: Callable[[str], None],
) -> dict[str, Any]:
    """Latency phase, then the throughput ladder (stops at the first failing rate)."""
    advance(f"{overlay.kind}: {latency_messages} messages at {LATENCY_RATE:g}/s")
    phase = run_phase(overlay, LATENCY_RATE, latency_messages, payload, drain_s=10.0)
    base = figures(overlay, phase)
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for rate in ladder:
        advance(f"{overlay.kind}: {rate:g} msg/s for {step_s:g} s")
        count = max(1, int(rate * step_s))
        step = figures(overlay, run_phase(overlay, rate, count, payload, drain_s=5.0))
        step["passed"] = passes(step)
        steps.append({k: v for k, v in step.items() if not k.startswith("_")})
        if not step["passed"]:
            break
        best = step
    rss = [r for r in (p.rss_mb() for p in overlay.peers) if r is not None]
    metrics = {k: v for k, v in base.items() if not k.startswith("_") and k != "rate"}
    metrics["cpu_us_per_hop_at_10_per_s"] = metrics.pop("cpu_us_per_hop")
    metrics["deliveries_per_s_at_10_per_s"] = metrics.pop("deliveries_per_s")
    metrics["broadcasts_per_s"] = None if best is None else best["rate"]
    metrics["deliveries_per_s"] = None if best is None else best["deliveries_per_s"]
    metrics["cpu_us_per_hop"] = None if best is None else best["cpu_us_per_hop"]
    metrics["rss_mb_per_process"] = round(statistics.median(rss), 1) if rss else None
    metrics["rss_mb_per_process_max"] = round(max(rss), 1) if rss else None
    return {"metrics": metrics, "steps": steps, "latencies_ms": base["_latencies_ms"]}


def _sim_redundancy(peers: int, max_children: int, payload: int, seed: int) -> dict[str, Any]:
    """RMR and control overhead of the same core at the same N, from the simulator."""
    from hp2p.sim.metrics import analyse
    from hp2p.sim.scenario import Scenario, run_scenario

    scenario = Scenario(
        peers=peers, rate=LATENCY_RATE, duration=10.0, payload=payload, max_children=max_children
    )
    metrics = analyse(run_scenario(scenario, seed))["metrics"]
    return {"rmr": metrics["rmr"], "control_overhead": metrics["control_overhead"]}


def run_size(
    peers: int,
    *,
    seed: int,
    max_children: int,
    payload: int,
    baselines: list[str],
    workdir: Path,
    progress: Progress,
    task: TaskID,
    ladder: tuple[float, ...],
    latency_messages: int,
    step_s: float,
    gossipsub_python: str | None = None,
    transport: str = "tcp",
) -> dict[str, Any]:
    """One N: hp2p, then floor in hp2p's tree shape, then flood; ratios hp2p / baseline.

    With ``transport="webrtc"`` the hp2p peers link over WebRTC data channels and the
    ``tcp`` baseline is the same peers over TCP, in the same run.
    """

    def advance(text: str) -> None:
        progress.update(task, description=f"N={peers} {text}", advance=1)

    common = {
        "payload": payload,
        "latency_messages": latency_messages,
        "ladder": ladder,
        "step_s": step_s,
        "advance": advance,
    }
    out: dict[str, Any] = {"peers": peers, "baselines": {}, "steps": {}, "latencies_ms": {}}
    hp = HpOverlay(workdir / f"hp2p-{peers}", peers, max_children, seed, transport=transport)
    (workdir / f"hp2p-{peers}").mkdir(parents=True, exist_ok=True)
    try:
        advance(f"hp2p: starting HOMS and {peers} peers")
        hp.start()
        settle(3.0)
        hp.survey()
        depths = [d for d in hp.depth.values() if d >= 0]
        measured = measure(hp, **common)  # type: ignore[arg-type]
        tree = hp.tree_children()
        connects = hp.connect_events()
    finally:
        hp.close()
    metrics = measured["metrics"]
    metrics.update(connect_figures(connects))
    metrics["max_depth"] = max(depths, default=None)
    metrics["mean_depth"] = round(statistics.fmean(depths), 3) if depths else None
    metrics["unattached"] = sum(1 for d in hp.depth.values() if d < 0)
    advance("simulator: RMR of the same core")
    metrics.update(_sim_redundancy(peers, max_children, payload, seed))
    out["metrics"] = metrics
    out["steps"]["hp2p"] = measured["steps"]
    out["latencies_ms"]["hp2p"] = measured["latencies_ms"]

    for name in baselines:
        if name == "gossipsub" and peers != GOSSIPSUB_PEERS:
            continue
        if name in ("unsigned", "tcp"):
            _hp_baseline(name, peers, max_children, seed, workdir, common, out)
            continue
        mode = {"floor": "tree", "flood": "flood"}.get(name, name)
        relay = RelayOverlay(
            workdir / f"{name}-{peers}",
            peers,
            mode,
            children=tree,
            degree=max_children,  # the flood mesh: as many links per node as hp2p's children
            seed=seed,
            python=gossipsub_python,
        )
        (workdir / f"{name}-{peers}").mkdir(parents=True, exist_ok=True)
        try:
            advance(f"{name}: starting {peers} processes")
            relay.start()
            if mode == "gossipsub":
                settle(3.0)  # its heartbeats (1 s) build the mesh
            got = measure(relay, **common)  # type: ignore[arg-type]
            copies, deliveries = relay.counters()
            got["metrics"]["rmr"] = (
                round(copies / deliveries - 1, 4) if deliveries and mode != "gossipsub" else None
            )
            if mode != "gossipsub":
                got["metrics"]["control_overhead"] = 0.0  # by construction: data frames only
        except ProcError as exc:
            # A baseline that cannot run is reported as such; hp2p's figures still stand.
            out["baselines"][name] = {"error": str(exc)[:300]}
            continue
        finally:
            relay.close()
        out["baselines"][name] = got["metrics"]
        out["steps"][name] = got["steps"]
        out["latencies_ms"][name] = got["latencies_ms"]
    out["ratios"] = _ratios(metrics, out["baselines"])
    unsigned = out["baselines"].get("unsigned", {})
    if "cpu_us_per_hop_at_10_per_s" in unsigned:
        # what membership credentials and source signatures cost per hop (issue #11)
        signed_cpu = metrics.get("cpu_us_per_hop_at_10_per_s")
        open_cpu = unsigned["cpu_us_per_hop_at_10_per_s"]
        if signed_cpu is not None and open_cpu is not None:
            metrics["signature_cost_us_per_hop"] = round(signed_cpu - open_cpu, 1)
    return out


def connect_figures(events: list[dict[str, Any]]) -> dict[str, Any]:
    """``connect_p50_ms``/``connect_p99_ms``: dial to open link (first frame can go), over
    every link the peers dialled (``link_open`` events); for WebRTC also the p50/p99 of each
    phase (``connect_answer_p99_ms``: the offer/answer round trip through the HOMS …)."""
    times = [float(e["ms"]) for e in events]
    out: dict[str, Any] = {
        "connects": len(times),
        "connect_p50_ms": _round(quantile(times, 0.5)),
        "connect_p99_ms": _round(quantile(times, 0.99)),
    }
    phases: dict[str, list[float]] = {}
    for event in events:
        got = event.get("phases")
        if isinstance(got, dict):
            for name, value in got.items():
                if isinstance(value, int | float):
                    phases.setdefault(str(name), []).append(float(value))
    for name, values in sorted(phases.items()):
        out[f"connect_{name}_p50_ms"] = _round(quantile(values, 0.5))
        out[f"connect_{name}_p99_ms"] = _round(quantile(values, 0.99))
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _hp_baseline(
    name: str,
    peers: int,
    max_children: int,
    seed: int,
    workdir: Path,
    common: dict[str, Any],
    out: dict[str, Any],
) -> None:
    """The same hp2p peers, changed in one respect: ``unsigned`` on a ``reference-compat``
    overlay (no AUTH, no signatures), or ``tcp`` (over TCP, the baseline of WebRTC)."""
    folder = workdir / f"{name}-{peers}"
    folder.mkdir(parents=True, exist_ok=True)
    security = "reference-compat" if name == "unsigned" else None
    overlay = HpOverlay(folder, peers, max_children, seed, security=security, kind=name)
    try:
        common["advance"](f"{name}: starting HOMS and {peers} peers")
        overlay.start()
        settle(3.0)
        got = measure(overlay, **common)
        connects = overlay.connect_events()
    except ProcError as exc:
        out["baselines"][name] = {"error": str(exc)[:300]}
        return
    finally:
        overlay.close()
    got["metrics"].update(connect_figures(connects))
    out["baselines"][name] = got["metrics"]
    out["steps"][name] = got["steps"]
    out["latencies_ms"][name] = got["latencies_ms"]


_RATIO_KEYS = (
    "latency_p50_ms",
    "latency_p99_ms",
    "last_delivery_p50_ms",
    "last_delivery_p99_ms",
    "deliveries_per_s",
    "broadcasts_per_s",
    "cpu_us_per_hop",
    "rss_mb_per_process",
    "connect_p50_ms",
    "connect_p99_ms",
)


def _ratios(metrics: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for name, base in baselines.items():
        for key in (*_RATIO_KEYS, "rmr"):
            mine, theirs = metrics.get(key), base.get(key)
            if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs:
                ratios[f"{key}_vs_{name}"] = round(mine / theirs, 3)
    return ratios


def tree(
    quick: Annotated[bool, typer.Option("--quick", help="N=50 only, fewer messages.")] = False,
    peers: Annotated[
        str | None, typer.Option(help="Comma-separated N values (default 50,100,200).")
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="Baselines: floor, flood, unsigned (hp2p without credentials and signatures), "
            "gossipsub (repeatable; default floor, flood, unsigned)."
        ),
    ] = None,
    max_children: Annotated[
        int, typer.Option("--max-children", help="Children per peer (setting max_children).")
    ] = 4,
    fanout: Annotated[
        int | None, typer.Option("--fanout", hidden=True, help="Deprecated: --max-children.")
    ] = None,
    payload: Annotated[int, typer.Option(help="Bytes per message.")] = 1024,
    seeds: Annotated[
        str,
        typer.Option(help="Comma-separated seeds (peers' choices, mesh); medians over them."),
    ] = "1",
    messages: Annotated[
        int | None, typer.Option(help="Messages of the 10 msg/s latency phase (default 100; 50).")
    ] = None,
    rates: Annotated[
        str | None,
        typer.Option(help="Throughput ladder, msg/s, comma-separated (default 50,…,600)."),
    ] = None,
    step: Annotated[
        float | None, typer.Option(help="Seconds per ladder step (default 3; quick 2).")
    ] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write the result file.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG plots into this folder.")] = None,
    transport: Annotated[
        str,
        typer.Option(
            help="tcp, or webrtc: the peers link over WebRTC data channels (hp2p[webrtc]) and "
            "the same peers over TCP run as the baseline 'tcp' in the same run."
        ),
    ] = "tcp",
    gossipsub_python: Annotated[
        str | None,
        typer.Option(
            envvar="HP2P_GOSSIPSUB_PYTHON",
            help="Interpreter with py-libp2p for --baseline gossipsub (default: this one).",
        ),
    ] = None,
) -> None:
    """Latency per depth, throughput, CPU per hop, RSS: real peers vs floor and flood relays.

    Examples:

      hp2p bench tree --quick

      hp2p bench tree --peers 50,100,200 --json bench-results/tree.json --plots bench-results/tree

      hp2p bench tree --peers 20 --baseline floor

      hp2p bench tree --peers 30 --baseline floor --baseline gossipsub \\
          --gossipsub-python /opt/gossip/bin/python     # py-libp2p in its own venv
    """
    console = Console()
    sizes = _sizes(peers, quick)
    seed_list = _seed_list(seeds)
    if transport not in ("tcp", "webrtc"):
        _fail(f"--transport must be tcp or webrtc, not {transport!r}")
    if transport == "webrtc" and importlib.util.find_spec("aiortc") is None:
        _fail("--transport webrtc needs aiortc: pip install 'hp2p[webrtc]'")
    chosen = baseline or (["tcp"] if transport == "webrtc" else ["floor", "flood", "unsigned"])
    if transport == "webrtc" and "tcp" not in chosen:
        chosen = ["tcp", *chosen]  # TCP is WebRTC's baseline, always in the same run
    unknown = sorted(set(chosen) - {"floor", "flood", "unsigned", "gossipsub", "tcp"})
    if unknown:
        _fail(f"unknown baseline(s) {unknown}: use floor, flood, unsigned, tcp or gossipsub")
    if fanout is not None:
        console.print("[yellow]--fanout is deprecated: use --max-children[/]")
        max_children = fanout
    if not 1 <= max_children <= 64 or not 0 <= payload <= 60_000:
        _fail("--max-children must be 1..64 and --payload 0..60000 (one publish line)")
    relays = [b for b in chosen if b in ("floor", "flood", "unsigned", "tcp")]
    notes: list[str] = []
    gossip_python: str | None = None
    if "gossipsub" in chosen:
        gossip_python, why = _find_libp2p(gossipsub_python)
        if gossip_python is None:
            notes.append(f"{GOSSIPSUB_SKIP} ({why})")
            console.print(f"[yellow]{notes[-1]}[/]")
        else:
            relays.append("gossipsub")
            if GOSSIPSUB_PEERS not in sizes:
                sizes.insert(0, GOSSIPSUB_PEERS)
            notes.append(f"gossipsub measured at N={GOSSIPSUB_PEERS} only ({gossip_python})")
    ladder = _ladder(rates, quick)
    latency_messages = messages if messages is not None else (50 if quick else 100)
    step_s = step if step is not None else (2.0 if quick else 3.0)
    if not 1 <= latency_messages <= 10_000 or not 0.2 <= step_s <= 60:
        _fail("--messages must be 1..10000 and --step 0.2..60 s")
    steps_per_size = 2 + len(ladder) + 1 + (len(relays) * (2 + len(ladder)))
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="hp2p-bench-tree-") as tmp,
        LineProgress(console=console) as progress,
    ):
        task = progress.add_task("bench tree", total=steps_per_size * len(sizes) * len(seed_list))
        for n in sizes:
            per_seed = []
            for seed in seed_list:
                try:
                    per_seed.append(
                        run_size(
                            n,
                            seed=seed,
                            max_children=max_children,
                            payload=payload,
                            baselines=relays,
                            workdir=Path(tmp) / f"seed{seed}",
                            progress=progress,
                            task=task,
                            ladder=ladder,
                            latency_messages=latency_messages,
                            step_s=step_s,
                            gossipsub_python=gossip_python,
                            transport=transport,
                        )
                    )
                except ProcError as exc:
                    _fail(f"N={n}, seed {seed}: {exc}")
            results.append(_over_seeds(per_seed, seed_list))
    for result in results:
        _print(console, result)
    if json_file is not None:
        if transport == "webrtc":
            notes.append(
                "hp2p = the peers over WebRTC data channels (--webrtc, host candidates on "
                "127.0.0.1, signalled through the HOMS); baseline tcp = the same peers over TCP"
            )
        notes.append("connect_p50_ms/connect_p99_ms: dial to open link, over every dialled link")
        document = _document(results, quick, max_children, payload, seed_list, chosen, notes)
        document["params"]["transport"] = transport
        console.print(f"result file: {write_result(json_file, document)}")
    if plots is not None:
        from hp2p.bench.plots import tree_plots

        console.print("plots: " + ", ".join(str(p) for p in tree_plots(plots, results)))


def _document(
    results: list[dict[str, Any]],
    quick: bool,
    max_children: int,
    payload: int,
    seeds: list[int],
    chosen: list[str],
    notes: list[str],
) -> dict[str, Any]:
    """The result file: the largest N is the headline; every N is under ``per_size``."""
    head = results[-1]
    document = result_document(
        "tree",
        params={
            "peers": [r["peers"] for r in results],
            "payload": payload,
            "max_children": max_children,
            "seeds": seeds,
            "quick": quick,
            "latency_rate": LATENCY_RATE,
            "baselines": chosen,
            "notes": [
                *notes,
                "rmr (hp2p) from the simulator with the same core and N",
                "control_overhead (hp2p) from the simulator: encoded bytes of every non-payload "
                "R2 message / payload bytes, same N, fan-out, payload, 10 msg/s",
                "flood = a bare relay flooding a random mesh (hp2p has no tree-off switch)",
                "relays print the same JSON line per delivery as hp2p peer --json-events",
            ],
        },
        metrics={"peers": head["peers"], **head["metrics"]},
        baselines=head["baselines"],
        ratios=head["ratios"],
    )
    document["per_size"] = [
        {
            "peers": r["peers"],
            "metrics": r["metrics"],
            "baselines": r["baselines"],
            "ratios": r["ratios"],
            "steps": r["steps"],
        }
        for r in results
    ]
    return document


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(seeds) > 10:
        _fail(f"--seeds wants 1 to 10 comma-separated integers, got {text!r}")
    return seeds


def _over_seeds(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One N over several seeds: medians of every figure (sim.metrics.combine), ratios anew.

    Steps and latency samples are kept per seed (``per_seed``) and pooled for the plots.
    """
    if len(runs) == 1:
        return runs[0]
    from hp2p.sim.metrics import combine

    names = list(runs[0]["baselines"])
    baselines = {
        name: combine(
            [
                r["baselines"].get(name, {})
                for r in runs
                if "error" not in r["baselines"].get(name, {})
            ]
        )
        for name in names
    }
    metrics = combine([r["metrics"] for r in runs])
    latencies: dict[str, list[float]] = {}
    for run in runs:
        for name, values in run["latencies_ms"].items():
            latencies.setdefault(name, []).extend(values)
    return {
        "peers": runs[0]["peers"],
        "metrics": metrics,
        "baselines": baselines,
        "ratios": _ratios(metrics, baselines),
        "steps": {f"seed{seed}": r["steps"] for seed, r in zip(seeds, runs, strict=True)},
        "latencies_ms": latencies,
    }


def _find_libp2p(python: str | None) -> tuple[str | None, str]:
    """An interpreter that can import libp2p and trio, or None and the reason."""
    candidate = python or sys.executable
    if python is None and importlib.util.find_spec("libp2p") is None:
        return None, "not importable here; give --gossipsub-python PATH"
    try:
        done = subprocess.run(
            [candidate, "-c", "import libp2p, trio"], capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{candidate}: {exc}"
    if done.returncode != 0:
        return None, f"{candidate} cannot import libp2p/trio"
    return candidate, ""


def _ladder(rates: str | None, quick: bool) -> tuple[float, ...]:
    if rates is None:
        return QUICK_LADDER if quick else FULL_LADDER
    try:
        ladder = tuple(float(v) for v in rates.split(",") if v.strip())
    except ValueError:
        ladder = ()
    if not ladder or len(ladder) > 12 or any(not 1 <= r <= 20_000 for r in ladder):
        _fail(f"--rates wants up to 12 comma-separated rates in 1..20000 msg/s, got {rates!r}")
    return ladder


def _sizes(peers: str | None, quick: bool) -> list[int]:
    if peers is None:
        return [50] if quick else [50, 100, 200]
    try:
        sizes = [int(v) for v in peers.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(not 2 <= n <= 500 for n in sizes):
        _fail(f"--peers wants comma-separated N values in 2..500, got {peers!r}")
    return sizes


def _fail(message: str) -> None:
    Console(stderr=True).print(f"hp2p bench tree: {message}")
    raise typer.Exit(2)


_SHOWN = (
    "delivery_ratio",
    "latency_p50_ms",
    "latency_p99_ms",
    "last_delivery_p50_ms",
    "last_delivery_p99_ms",
    "broadcasts_per_s",
    "deliveries_per_s",
    "cpu_us_per_hop",
    "cpu_us_per_hop_at_10_per_s",
    "rmr",
    "control_overhead",
    "rss_mb_per_process",
    "connect_p50_ms",
    "connect_p99_ms",
    "max_depth",
)


def _print(console: Console, result: dict[str, Any]) -> None:
    names = list(result["baselines"])
    table = Table(title=f"hp2p bench tree: N={result['peers']}")
    table.add_column("metric")
    table.add_column("hp2p", justify="right")
    for name in names:
        table.add_column(name, justify="right")
        table.add_column(f"hp2p/{name}", justify="right")
    keys = list(_SHOWN) + sorted(k for k in result["metrics"] if k.startswith("latency_depth"))
    for key in keys:
        row = [key, _fmt(result["metrics"].get(key))]
        for name in names:
            row.append(_fmt(result["baselines"][name].get(key)))
            row.append(_fmt(result["ratios"].get(f"{key}_vs_{name}")))
        table.add_row(*row)
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
