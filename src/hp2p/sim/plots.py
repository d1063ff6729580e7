"""PNG figures of a simulated run: latency CDF, delivery ratio over time, depth histogram.

A person judging a tree overlay looks at shapes (a long latency tail, a dip after a failure,
a deep tree) before numbers, so ``hp2p sim --plots DIR`` draws them. matplotlib is imported
here, lazily, with the non-interactive Agg backend: it is a dev extra and must never load in a
peer process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class PlotsUnavailableError(RuntimeError):
    """matplotlib is not installed; the message says how to get it."""


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PlotsUnavailableError(
            "plots need matplotlib: pip install -e '.[dev]' (or drop --plots)"
        ) from exc
    return plt


def cdf_points(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values and their cumulative fractions (at most ~2,000 points, for small files)."""
    ordered = sorted(values)
    if not ordered:
        return [], []
    step = max(1, len(ordered) // 2000)
    xs = ordered[::step]
    if xs[-1] != ordered[-1]:
        xs.append(ordered[-1])
    n = len(ordered)
    ys = [min(1.0, (i * step + 1) / n) for i in range(len(xs))]
    ys[-1] = 1.0
    return xs, ys


def write_sim_plots(directory: Path, runs: list[dict[str, Any]], title: str) -> list[Path]:
    """Write the three figures for ``runs`` (one ``analyse()`` result per seed)."""
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        xs, ys = cdf_points(run["series"]["latencies_ms"])
        ax.plot(xs, ys, label=f"seed {run['seed']}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("publish → deliver latency (ms, virtual)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(f"Latency CDF — {title}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    written.append(save_figure(fig, plt, directory / "latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        for series, style, what in (
            ("timeline", "-", "delivered"),
            ("timeline_on_time", ":", "within 0.5 s"),
        ):
            points = [(t, r) for t, r in run["series"][series] if r is not None]
            ax.plot(
                [t for t, _ in points],
                [r for _, r in points],
                style,
                marker=".",
                label=f"seed {run['seed']}, {what}",
            )
    fault = runs[0]["series"]["fault_time"] if runs else None
    if fault is not None:
        ax.axvline(fault, color="red", linestyle="--", label="failure")
    ax.set_xlabel("publish time since start of traffic (s)")
    ax.set_ylabel("delivery ratio")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Delivery ratio over time — {title}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    written.append(save_figure(fig, plt, directory / "delivery_over_time.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    depths = runs[0]["series"]["depths"] if runs else []
    if depths:
        top = max(depths)
        ax.hist(depths, bins=range(0, top + 2), align="left", rwidth=0.8)
    ax.set_xlabel("tree depth (root = 0)")
    ax.set_ylabel("peers")
    ax.set_title(f"Depth histogram — {title}")
    written.append(save_figure(fig, plt, directory / "depth_histogram.png"))
    return written


def save_figure(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
