"""``hp2p bench report``: one markdown table from the result files in ``bench-results/``.

The README and docs/benchmarks.md quote figures; this command makes those tables from the
result files themselves (BENCHMARKS.md format), so a quoted figure always names the run it
came from: date, commit and machine, with the baselines of the same run and the ratios.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

#: The figures a table shows by default: the metric keys BENCHMARKS.md names.
HEADLINE = (
    "delivery_ratio",
    "delivery_ratio_during",
    "delivery_ratio_after",
    "duplicates_to_app",
    "repair_p50_ms",
    "repair_p99_ms",
    "rmr",
    "control_overhead",
    "latency_p50_ms",
    "latency_p99_ms",
    "last_delivery_p50_ms",
    "last_delivery_p99_ms",
    "broadcasts_per_s",
    "deliveries_per_s",
    "cpu_us_per_hop",
    "joins_per_s",
    "join_p99_ms",
    "attach_all_s",
    "rss_mb_per_peer",
    "rss_mb_per_process",
    "continuity",
    "startup_s",
    "wire_amplification",
    "encode_decode_us",
    "sim_deliveries_per_s",
    "sim_peers",
    "duplicates",
    "source_bytes_per_msg",
    "source_bytes_ratio_vs_broker",
    "cpu_us_per_delivery",
    "history_complete",
    "history_query_ms",
)


class ReportError(ValueError):
    """A result file that cannot be read; the message names it."""


def load(paths: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Read result files; a file that is not a result document raises :class:`ReportError`."""
    documents = []
    for path in paths:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ReportError(f"{path}: not a readable JSON result file ({exc})") from exc
        if not isinstance(document, dict) or not isinstance(document.get("metrics"), dict):
            raise ReportError(f"{path}: no 'metrics' object; not a BENCHMARKS.md result file")
        documents.append((path, document))
    documents.sort(key=lambda item: (str(item[1].get("benchmark")), str(item[1].get("date"))))
    return documents


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    return "…"


def _shown(metrics: dict[str, Any], everything: bool) -> list[str]:
    keys = [k for k in metrics if isinstance(metrics[k], int | float | bool | type(None))]
    if everything:
        return keys
    return [k for k in keys if k in HEADLINE or k.startswith("latency_depth")]


def render(documents: list[tuple[Path, dict[str, Any]]], everything: bool = False) -> str:
    """The markdown: a header line per file, then figure | hp2p | each baseline | ratios."""
    if not documents:
        return "_No result files._\n"
    out: list[str] = []
    for path, doc in documents:
        machine = doc.get("machine") or {}
        out.append(
            f"### {doc.get('benchmark', '?')} — {doc.get('date', '?')} "
            f"(git {doc.get('git') or '?'}, {machine.get('cpus', '?')} CPUs, "
            f"Python {machine.get('python', '?')}; `{path.name}`)"
        )
        out.append("")
        params = doc.get("params") or {}
        if params:
            brief = ", ".join(
                f"{k}={_fmt(v) if not isinstance(v, list) else v}"
                for k, v in params.items()
                if k != "notes"
            )
            out.append(f"Parameters: {brief}")
            out.append("")
        baselines: dict[str, dict[str, Any]] = doc.get("baselines") or {}
        ratios: dict[str, Any] = doc.get("ratios") or {}
        names = list(baselines)
        header = ["figure", "hp2p", *names, *(f"hp2p / {n}" for n in names)]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        metrics: dict[str, Any] = doc["metrics"]
        for key in _shown(metrics, everything):
            row = [key, _fmt(metrics.get(key))]
            row += [_fmt(baselines[n].get(key)) for n in names]
            row += [_fmt(ratios.get(f"{key}_vs_{n}")) for n in names]
            out.append("| " + " | ".join(row) + " |")
        other = {k: v for k, v in ratios.items() if not any(k.endswith(f"_vs_{n}") for n in names)}
        if other:
            out.append("")
            out.append("Ratios: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in other.items()))
        out.append("")
    return "\n".join(out)


def report(
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder of result files (*.json).")
    ] = Path("bench-results"),
    files: Annotated[
        list[Path] | None, typer.Argument(help="Result files (default: every *.json in --dir).")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all-figures", help="Every figure, not only BENCHMARKS.md keys.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the markdown here.")
    ] = None,
) -> None:
    """Render result files as markdown tables: date, machine, figures, baselines, ratios.

    Examples:

      hp2p bench report                           # every bench-results/*.json

      hp2p bench report bench-results/tree.json -o tree.md

      hp2p bench report --dir /tmp/results --all-figures
    """
    paths = list(files or [])
    if not paths:
        if not directory.is_dir():
            typer.echo(
                f"hp2p bench report: no folder {directory}; run a benchmark with "
                f"--json {directory}/NAME.json first, or give --dir",
                err=True,
            )
            raise typer.Exit(2)
        paths = sorted(directory.glob("*.json"))
        if not paths:
            typer.echo(f"hp2p bench report: no *.json result files in {directory}", err=True)
            raise typer.Exit(2)
    try:
        text = render(load(paths), everything)
    except ReportError as exc:
        typer.echo(f"hp2p bench report: {exc}", err=True)
        raise typer.Exit(2) from None
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        typer.echo(f"wrote {output}")
    else:
        typer.echo(text)
