"""``hp2p bench iot``: MQTT sensors to N consumers, through hp2p or straight from the broker.

Issue #13. Ten simulated sensors (:mod:`hp2p.bench.iot_sensors`) publish 64 B–1 KiB JSON
readings ``{"ts": …}`` to a private Mosquitto (:mod:`hp2p.bench.broker`). Two systems carry
them to N consumers, one after the other in the same run, with the same payloads:

* **hp2p**: broker → ``hp2p iot gateway`` (a CoreTree source peer) → the CoreTree → N consumer
  peers (:mod:`hp2p.bench.iot_consumer`, members of the tree);
* **mosquitto** (the baseline): the same N consumers subscribed to the broker directly.

Per N and rate: delivery ratio, duplicates, latency p50/p99 (the reading's ``ts``, taken just
before the MQTT publish, to the consumer's receipt), bytes the source (gateway peer; broker)
sent to the consumers per message (kernel TCP counters, :mod:`hp2p.bench.sockets`), and CPU
time per delivery of every process of the system. The issue's targets are recorded as
passed/failed in the result file, not asserted.
"""

from __future__ import annotations

import copy
import importlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hp2p.bench.broker import BrokerError, Mosquitto, SysCounter
from hp2p.bench.iot_history import READINGS, HistoryRun, not_measured
from hp2p.bench.iot_phase import iot_figures, quiesce, run_iot_phase
from hp2p.bench.iot_systems import Hp2pIot, MqttIot
from hp2p.bench.overlay import settle
from hp2p.bench.procs import Fleet, Proc, ProcError
from hp2p.bench.progress import LineProgress
from hp2p.bench.results import check_writable, result_document, save_result
from hp2p.bench.sockets import SocketCountersError

QUICK_PEERS = (20, 50)
FULL_PEERS = (50, 100)
QUICK_RATES = (100.0,)
FULL_RATES = (100.0, 1000.0)
SETTLE_S = 2.0
BACKLOG_LIMIT_S = 120.0
#: the gateway of branch iot-ingest: ``{homs}``, ``{port}``, ``{title}`` are filled in
REAL_GATEWAY = [
    sys.executable,
    "-m",
    "hp2p",
    "iot",
    "gateway",
    "--homs",
    "{homs}",
    "--create",
    "{title}",
    "--id",
    "gateway",
    "--mqtt",
    "mqtt://127.0.0.1:{port}",
    "--topic",
    "sensors/#",
    "--json-events",
    "--status-interval",
    "60",
]


def real_gateway_available() -> bool:
    """True when ``hp2p iot gateway`` is mounted in this build."""
    try:
        cli = importlib.import_module("hp2p.apps.iot.cli")
    except ImportError:
        return False
    return "gateway" in getattr(cli, "COMMANDS", {})


def _run_system(
    system: Hp2pIot | MqttIot,
    sensors: Proc,
    counter: SysCounter,
    plan: dict[str, Any],
    advance: Callable[[str], None],
) -> dict[tuple[int, float], dict[str, Any]]:
    """Grow ``system`` through every N; at each N one phase per rate."""
    out: dict[tuple[int, float], dict[str, Any]] = {}
    for n in plan["peers"]:
        advance(f"{system.kind}: starting consumers up to N={n}")
        system.grow(n)
        settle(SETTLE_S)  # the last joiners' links settle
        for rate in plan["rates"]:
            advance(f"{system.kind}: N={n}, {rate:g} msg/s for {plan['duration']:g} s")
            count = max(1, int(rate * plan["duration"]))
            gateway = system.source_pid if isinstance(system, Hp2pIot) else None
            phase = run_iot_phase(
                system,
                sensors,
                counter,
                rate=rate,
                count=count,
                first=plan["next"],
                seed=plan["seed"] * 1000 + n,
                drain_s=plan["drain"],
                gateway_pid=gateway,
                broker_pid=plan["broker_pid"],
            )
            plan["next"] += count
            out[(n, rate)] = iot_figures(phase)
            if not out[(n, rate)]["kept_up"]:
                advance(f"{system.kind}: N={n}, waiting for the backlog to clear")
                out[(n, rate)]["backlog_cleared_s"] = quiesce(system.fleet, BACKLOG_LIMIT_S)
    return out


def measure_all(plan: dict[str, Any], workdir: Path, progress: Progress) -> dict[str, Any]:
    """Broker and sensors, then hp2p through every N and rate, then the baseline."""
    steps = len(plan["peers"]) * (1 + len(plan["rates"])) * 2 + 2 + 2 * plan["history"]
    task = progress.add_task("bench iot", total=steps)

    def advance(text: str) -> None:
        progress.update(task, description=text, advance=1)

    advance("starting mosquitto and the sensors")
    broker = Mosquitto(workdir / "broker")
    plan["broker_pid"] = broker.pid
    try:
        counter = SysCounter(broker.port)
    except BrokerError:
        broker.stop()
        raise
    sensor_fleet = Fleet()
    results: dict[str, dict[tuple[int, float], dict[str, Any]]] = {}
    try:
        args = [sys.executable, "-m", "hp2p.bench.iot_sensors", "--port", str(broker.port)]
        args += ["--devices", str(plan["devices"])]
        sensors = sensor_fleet.start("sensors", args, workdir / "sensors.err")
        sensors.wait_event({"ready"}, 60)
        advance("hp2p: starting the HOMS and the gateway")
        hp = Hp2pIot(workdir / "hp2p", broker.pid, broker.port, plan["gateway_args"])
        try:
            hp.start()
            results["hp2p"] = _run_system(hp, sensors, counter, plan, advance)
        finally:
            hp.close()
        mq = MqttIot(workdir / "mosquitto", broker.pid, broker.port)
        try:
            results["mosquitto"] = _run_system(mq, sensors, counter, plan, advance)
        finally:
            mq.close()
        history = _history(plan, workdir, broker.port, sensors, advance)
    finally:
        sensor_fleet.close()
        counter.close()
        broker.stop()
    return {"results": results, "history": history}


def _history(
    plan: dict[str, Any], workdir: Path, port: int, sensors: Proc, advance: Callable[[str], None]
) -> dict[str, Any]:
    """The history part (36,000 readings, 30 % of the members killed), unless skipped."""
    if not plan["history"]:
        return not_measured("skipped (--no-history)")
    members = plan["history_members"]
    advance(f"history: starting gateway, bridge and {members} history members")
    readings = plan["history_readings"]
    run = HistoryRun(
        workdir / "history", port, members, plan["seed"], readings, plan["history_replicas"]
    )
    try:
        run.start()
        advance(f"history: {readings:,} readings at {plan['history_rate']:g}/s, 30 % killed")
        figures = run.measure(sensors, plan["history_rate"], plan["next"])
    except ProcError as exc:
        return not_measured(f"failed: {str(exc)[:300]}")
    finally:
        run.close()
    plan["next"] += readings
    return figures


def _targets(hp: dict[str, Any], base: dict[str, Any], peers: int) -> dict[str, Any]:
    """The issue's targets for one case: each ``{"target", "value", "passed"}``."""
    ratio = hp.get("source_bytes_ratio_vs_broker")
    p99, base_p99 = hp.get("latency_p99_ms"), base.get("latency_p99_ms")
    p99_ratio = round(p99 / base_p99, 3) if p99 is not None and base_p99 else None
    return {
        "delivery": {
            "target": "delivery 100 % and 0 duplicates",
            "value": [hp.get("delivery_ratio"), hp.get("duplicates")],
            "passed": hp.get("delivery_ratio") == 1.0 and hp.get("duplicates") == 0,
        },
        "source_bytes": {
            "target": "gateway bytes per message <= 5 % of the broker's at N=100",
            "peers": peers,
            "value": ratio,
            "passed": None if peers != 100 or ratio is None else ratio <= 0.05,
        },
        "latency_p99": {
            "target": "latency p99 <= 3 x the broker's",
            "value": p99_ratio,
            "passed": None if p99_ratio is None else p99_ratio <= 3.0,
        },
        "history_complete": {
            "target": "history complete = 1.0 after 30 % of SubMesh members are SIGKILLed",
            "value": None,
            "passed": None,
        },
        "history_query": {
            "target": "query of 1 h of one topic (36,000 readings) <= 200 ms",
            "value": None,
            "passed": None,
        },
    }


_BASE_KEYS = (
    "delivery_ratio",
    "duplicates",
    "latency_p50_ms",
    "latency_p99_ms",
    "source_bytes_per_msg",
    "cpu_us_per_delivery",
)


def combine_case(peers: int, hp: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """One (N, rate): hp2p's figures, the baseline's, their ratios and the targets."""
    metrics = {k: v for k, v in hp.items() if not k.startswith("_")}
    baseline = {k: v for k, v in base.items() if not k.startswith("_")}
    mine, theirs = metrics.get("source_bytes_per_msg"), baseline.get("source_bytes_per_msg")
    metrics["source_bytes_ratio_vs_broker"] = (
        round(mine / theirs, 4) if mine is not None and theirs else None
    )
    ratios = {}
    for key in ("latency_p50_ms", "latency_p99_ms", "source_bytes_per_msg", "cpu_us_per_delivery"):
        a, b = metrics.get(key), baseline.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and b:
            ratios[f"{key}_vs_mosquitto"] = round(a / b, 4)
    return {
        "peers": peers,
        "rate": hp["rate"],
        "metrics": metrics,
        "baselines": {"mosquitto": baseline},
        "ratios": ratios,
        "targets": _targets(metrics, baseline, peers),
        "latencies_ms": {"hp2p": hp["_latencies_ms"], "mosquitto": base["_latencies_ms"]},
    }


def build_document(
    plan: dict[str, Any], cases: list[dict[str, Any]], history: dict[str, Any]
) -> dict[str, Any]:
    """The result file: the largest N at the lowest rate is the headline, with the history
    figures (one per run); every (N, rate) under per_case."""
    head = max(cases, key=lambda c: (c["peers"], -c["rate"]))
    document = result_document(
        "iot",
        params={
            "peers": plan["peers"],
            "rates": plan["rates"],
            "duration_s": plan["duration"],
            "devices": plan["devices"],
            "payload_bytes": [64, 1024],
            "quick": plan["quick"],
            "seed": plan["seed"],
            "gateway": plan["gateway"],
            "gateway_settings": plan["gateway_settings"],
            "headline": {"peers": head["peers"], "rate": head["rate"]},
            "notes": NOTES,
        },
        metrics={"peers": head["peers"], **head["metrics"], **history},
        baselines=head["baselines"],
        ratios=head["ratios"],
    )
    document["targets"] = copy.deepcopy(head["targets"])
    _history_targets(document["targets"], history)
    n100 = [c for c in cases if c["peers"] == 100]
    if n100:
        document["targets"]["source_bytes"] = min(n100, key=lambda c: c["rate"])["targets"][
            "source_bytes"
        ]
    document["per_case"] = [{k: v for k, v in c.items() if k != "latencies_ms"} for c in cases]
    return document


def _history_targets(targets: dict[str, Any], history: dict[str, Any]) -> None:
    complete, query = history.get("history_complete"), history.get("history_query_ms")
    targets["history_complete"]["value"] = complete
    targets["history_complete"]["passed"] = None if complete is None else complete >= 1.0
    targets["history_query"]["value"] = query
    targets["history_query"]["passed"] = None if query is None else query <= 200.0


NOTES = [
    "latency: the reading's ts (sensor clock just before the MQTT publish) to the consumer's "
    "receipt (time.time() on the same machine)",
    "source_bytes_per_msg: bytes the source process sent on its TCP connections to the "
    "consumers' processes and had acknowledged (kernel bytes_acked per socket, read with "
    "ss -tinp before and after the phase), divided by readings published: for hp2p the "
    "gateway peer's R2 links (frames, signatures, heartbeats), for mosquitto the broker's "
    "connections to its N subscribers",
    "source_data_links: the source's connections to consumers that carried readings (>= 64 "
    "bytes per reading): the gateway peer's children; the broker's N subscribers",
    "broker_sys_bytes_per_msg: the broker's $SYS/broker/bytes/sent over the phase (all its "
    "clients, sys_interval 1), a cross-check",
    "cpu_us_per_delivery: user+system CPU (/proc/PID/stat) of every process of the system "
    "(hp2p: gateway, consumers, broker, HOMS; mosquitto: broker, consumers) / deliveries; "
    "the sensors are in neither",
    "kept_up: delivery >= 99.9 % and p99 <= 1 s; a phase that did not keep up is recorded "
    "as measured",
    "consumers print one JSON line per reading in both systems (the same cost)",
]


def iot(
    quick: Annotated[
        bool, typer.Option("--quick", help="N=20 and 50 at 100 msg/s, 20 s each (< 4 min).")
    ] = False,
    peers: Annotated[str | None, typer.Option(help="Comma-separated N (default 50,100).")] = None,
    rates: Annotated[
        str | None, typer.Option(help="Comma-separated msg/s over all sensors (100,1000).")
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds of publishing per phase.")] = 20.0,
    devices: Annotated[int, typer.Option(help="Simulated sensors (MQTT clients).")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the payload sizes.")] = 1,
    gateway: Annotated[
        str,
        typer.Option(help="auto, real (hp2p iot gateway) or standin (the bench's own)."),
    ] = "auto",
    gateway_set: Annotated[
        list[str] | None,
        typer.Option(
            "--gateway-set",
            help="Peer setting KEY=VALUE for the gateway peer (repeatable), e.g. max_children=2.",
        ),
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            "--history/--no-history",
            help="Also the history part: 36,000 readings into SubMesh history members.",
        ),
    ] = True,
    history_members: Annotated[int, typer.Option(help="SubMesh history members.")] = 10,
    history_replicas: Annotated[
        int,
        typer.Option(help="--replicas of each history member (0: every member keeps all)."),
    ] = 2,
    history_readings: Annotated[
        int, typer.Option(help="Readings of the hour of the history part.", hidden=True)
    ] = READINGS,
    history_rate: Annotated[
        float, typer.Option(help="Readings/s of the history part (36,000 in all).")
    ] = 1000.0,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep the processes' logs and the broker config here (default: temp)."),
    ] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write the result file.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG figure.")] = None,
) -> None:
    """MQTT sensors to N consumers via an hp2p gateway and CoreTree, vs the broker directly.

    Examples:

      hp2p bench iot --quick --json bench-results/iot-quick.json --plot bench-results/iot-quick.png

      hp2p bench iot --json bench-results/iot.json --plot bench-results/iot.png

      hp2p bench iot --peers 3 --rates 50 --duration 3        # a smoke run

      hp2p bench iot --peers 100 --rates 100 --gateway-set max_children=2
    """
    console = Console()
    plan = _plan(quick, peers, rates, duration, devices, seed, gateway)
    _more_options(plan, gateway_set or [], history, history_members, history_rate)
    plan["history_readings"] = history_readings
    if not 0 <= history_replicas <= history_members:
        _fail("--history-replicas must be 0..--history-members", 2)
    plan["history_replicas"] = history_replicas
    if not 10 <= history_readings <= 1_000_000:
        _fail("--history-readings must be 10..1000000", 2)
    check_writable(console, json_file, plot)
    _measure_and_report(console, plan, workdir, json_file, plot)


def _more_options(
    plan: dict[str, Any], settings: list[str], history: bool, members: int, rate: float
) -> None:
    """``--gateway-set`` (passed on as the gateway's ``--set``) and the history options."""
    if settings:
        if plan["gateway_args"] is None:
            _fail("--gateway-set needs the real gateway (hp2p iot gateway), not the stand-in", 2)
        if any("=" not in kv for kv in settings):
            _fail(f"--gateway-set wants KEY=VALUE, got {settings}", 2)
        extra = [a for kv in settings for a in ("--set", kv)]
        plan["gateway_args"] = [*plan["gateway_args"], *extra]
    plan["gateway_settings"] = list(settings)
    if not 2 <= members <= 50 or not 10 <= rate <= 20_000:
        _fail("--history-members must be 2..50 and --history-rate 10..20000", 2)
    plan.update(history=history, history_members=members, history_rate=rate)


def _measure_and_report(
    console: Console,
    plan: dict[str, Any],
    workdir: Path | None,
    json_file: Path | None,
    plot: Path | None,
) -> None:
    """Run everything, print the tables, write the result file and the figure."""
    with (
        tempfile.TemporaryDirectory(prefix="hp2p-bench-iot-") as tmp,
        LineProgress(console=console) as progress,
    ):
        folder = Path(tmp) if workdir is None else workdir
        try:
            measured = measure_all(plan, folder, progress)
        except (ProcError, BrokerError, SocketCountersError) as exc:
            _fail(str(exc)[:600], 1)
    raw = measured["results"]
    cases = [
        combine_case(n, raw["hp2p"][(n, r)], raw["mosquitto"][(n, r)])
        for n in plan["peers"]
        for r in plan["rates"]
    ]
    _print(console, cases)
    _print_history(console, measured["history"])
    document = build_document(plan, cases, measured["history"])
    save_result(console, json_file, document)
    if plot is not None:
        from hp2p.bench.plots import iot_plot

        console.print(f"plot: {iot_plot(plot, cases)}")


def _plan(
    quick: bool,
    peers: str | None,
    rates: str | None,
    duration: float,
    devices: int,
    seed: int,
    gateway: str,
) -> dict[str, Any]:
    sizes = (
        _numbers(peers, "--peers", 1, 500) if peers else list(QUICK_PEERS if quick else FULL_PEERS)
    )
    speeds = (
        _numbers(rates, "--rates", 1, 20_000)
        if rates
        else list(QUICK_RATES if quick else FULL_RATES)
    )
    if not 0.5 <= duration <= 600 or not 1 <= devices <= 1000:
        _fail("--duration must be 0.5..600 s and --devices 1..1000", 2)
    if gateway not in ("auto", "real", "standin"):
        _fail(f"--gateway must be auto, real or standin, not {gateway!r}", 2)
    use_real = gateway == "real" or (gateway == "auto" and real_gateway_available())
    if use_real and not real_gateway_available():
        _fail("--gateway real: hp2p iot gateway is not in this build; use --gateway standin", 2)
    return {
        "peers": sorted(int(n) for n in sizes),
        "rates": sorted(float(r) for r in speeds),
        "duration": duration,
        "devices": devices,
        "seed": seed,
        "quick": quick,
        "gateway": "hp2p iot gateway"
        if use_real
        else "bench stand-in (hp2p.bench.iot_gateway_standin)",
        "gateway_args": REAL_GATEWAY if use_real else None,
        "drain": max(10.0, duration),
        "next": 1,
    }


def _numbers(text: str, option: str, low: float, high: float) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or len(values) > 10 or any(not low <= v <= high for v in values):
        _fail(
            f"{option} wants up to 10 comma-separated values in {low:g}..{high:g}, got {text!r}", 2
        )
    return values


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(f"hp2p bench iot: {message}")
    raise typer.Exit(code)


_SHOWN = (
    "delivery_ratio",
    "duplicates",
    "latency_p50_ms",
    "latency_p99_ms",
    "source_bytes_per_msg",
    "source_data_links",
    "cpu_us_per_delivery",
    "achieved_publish_rate",
    "kept_up",
)


def _print(console: Console, cases: list[dict[str, Any]]) -> None:
    """One table per (N, rate): hp2p, mosquitto and their ratio side by side."""
    for case in cases:
        base = case["baselines"]["mosquitto"]
        table = Table(title=f"hp2p bench iot: N={case['peers']}, {case['rate']:g} msg/s")
        table.add_column("metric")
        table.add_column("hp2p", justify="right")
        table.add_column("mosquitto", justify="right")
        table.add_column("hp2p / mosquitto", justify="right")
        for key in _SHOWN:
            mine, theirs = case["metrics"].get(key), base.get(key)
            ratio = case["ratios"].get(f"{key}_vs_mosquitto")
            table.add_row(key, _fmt(mine), _fmt(theirs), _fmt(ratio))
        console.print(table)


def _print_history(console: Console, history: dict[str, Any]) -> None:
    table = Table(title="hp2p bench iot: history (SubMesh members)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in history.items():
        table.add_row(key, _fmt(value))
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
