"""PNG figures of ``hp2p bench tree``: latency per depth and latency CDFs, hp2p vs baselines.

matplotlib is a dev extra and is imported lazily here (Agg backend), never by peer processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hp2p.sim.plots import cdf_points, pyplot, save_figure


def tree_plots(directory: Path, results: list[dict[str, Any]]) -> list[Path]:
    """Two figures per N: latency p50/p99 by depth, and the CDF of latency at 10 msg/s."""
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result in results:
        n = result["peers"]
        overlays = {"hp2p": result["metrics"], **result["baselines"]}
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, metrics in overlays.items():
            depths = sorted(
                int(k[len("latency_depth") : -len("_p50_ms")])
                for k in metrics
                if k.startswith("latency_depth") and k.endswith("_p50_ms")
            )
            if not depths:
                continue
            for q, style in (("p50", "-o"), ("p99", "--x")):
                values = [metrics.get(f"latency_depth{d}_{q}_ms") for d in depths]
                ax.plot(depths, values, style, label=f"{name} {q}")
        _finish(ax, "hops from the source (tree depth)", "publish → deliver (ms)")
        ax.set_title(f"Latency by depth, N={n}, 10 msg/s")
        written.append(save_figure(fig, plt, directory / f"tree_latency_by_depth_n{n}.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in result["latencies_ms"].items():
            xs, ys = cdf_points(values)
            if xs:
                ax.plot(xs, ys, label=name)
        ax.set_xscale("log")
        _finish(ax, "publish → deliver (ms)", "fraction of deliveries")
        ax.set_title(f"Latency CDF, N={n}, 10 msg/s")
        written.append(save_figure(fig, plt, directory / f"tree_latency_cdf_n{n}.png"))
    return written


def _finish(ax: Any, xlabel: str, ylabel: str) -> None:
    """Axis labels, a light grid and the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()


def iot_plot(path: Path, cases: list[dict[str, Any]]) -> Path:
    """``hp2p bench iot``: latency p50/p99 and source bytes per message vs N, both systems."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (lat, size) = plt.subplots(1, 2, figsize=(11, 4.2))
    rates = sorted({c["rate"] for c in cases})
    for rate in rates:
        chosen = sorted((c for c in cases if c["rate"] == rate), key=lambda c: c["peers"])
        xs = [c["peers"] for c in chosen]
        for system, colour in (("hp2p", "tab:blue"), ("mosquitto", "tab:orange")):
            figs = [c["metrics"] if system == "hp2p" else c["baselines"][system] for c in chosen]
            tag = f"{system} {rate:g}/s"
            for q, style in (("p50", "-o"), ("p99", "--x")):
                values = [f.get(f"latency_{q}_ms") for f in figs]
                lat.plot(xs, values, style, color=colour, label=f"{tag} {q}")
            bytes_per = [f.get("source_bytes_per_msg") for f in figs]
            size.plot(xs, bytes_per, "-o", color=colour, label=f"{tag}: {_source(system)}")
    lat.set_yscale("log")
    lat.yaxis.set_major_formatter(_plain_ms())
    lat.set_title("MQTT publish → consumer receipt")
    _finish(lat, "consumers N", "latency (ms)")
    size.set_title("bytes the source sends per message")
    _finish(size, "consumers N", "bytes per message")
    fig.tight_layout()
    return save_figure(fig, plt, path)


def _source(system: str) -> str:
    return "gateway peer" if system == "hp2p" else "broker"


def _plain_ms() -> Any:
    """Tick labels as plain numbers (1, 10, 100 ms), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _pos: f"{value:g}")
