"""`hp2p bench wire`: the R2 codec micro-benchmark (BENCHMARKS.md, metric ``encode_decode_us``).

The figures that matter are per-message CPU costs, because every hop of the overlay pays them
once per message. They are set against a naive codec written here with stdlib ``json`` and
``struct`` (what a first implementation would do), measured in the same run on the same
messages, so that a noisy shared machine still yields a meaningful ratio.
"""

from __future__ import annotations

import gc
import json
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hp2p.bench.progress import LineProgress
from hp2p.bench.results import check_writable, result_document, save_result
from hp2p.wire import r2

_PREFIX = struct.Struct(">BBH")


# --- the messages --------------------------------------------------------------------------------
def sample_messages() -> dict[str, r2.Message]:
    """The three shapes that bound the codec's costs: tiny, hot, and large."""
    return {
        "hello": r2.Hello(
            overlay_id="c1d2e3f4-0000-4000-8000-000000000001",
            peer_id="peer-0042;1700000000000000",
            address="ws://127.0.0.1:8082",
            ticket_id=42,
        ),
        "broadcast_1k": r2.BroadcastData(
            source="peer-0001;1700000000000000",
            sequence=123_456,
            data=bytes(range(256)) * 4,
            ext_header={"app-id": "chat"},
        ),
        "buffermap_1000": r2.BuffermapResponse(
            overlay_id="c1d2e3f4-0000-4000-8000-000000000001",
            buffermap=[r2.BuffermapEntry(f"p{i:04d}", [1, 2, 3, 4]) for i in range(1000)],
        ),
    }


# --- the baseline: stdlib json + struct, written the obvious way --------------------------------
def _naive_encode(msg: r2.Message) -> bytes:
    payload = b""
    if isinstance(msg, r2.Hello):
        head: dict[str, Any] = {
            "req-code": 1,
            "req-params": {
                "operation": {
                    "overlay-id": msg.overlay_id,
                    "conn_num": msg.conn_num,
                    "ttl": msg.ttl,
                },
                "peer": {
                    "peer-id": msg.peer_id,
                    "address": msg.address,
                    "ticket-id": msg.ticket_id,
                },
            },
        }
    elif isinstance(msg, r2.BroadcastData):
        ext = json.dumps(msg.ext_header, separators=(",", ":")).encode()
        payload = ext + msg.data
        head = {
            "req-code": 6,
            "req-params": {
                "operation": {"ack": msg.ack, "candidate-path": msg.candidate_path},
                "peer": {"peer-id": msg.source, "sequence": msg.sequence},
                "payload": {"length": len(msg.data), "payload-type": msg.payload_type},
                "ext-header-len": len(ext),
            },
        }
    elif isinstance(msg, r2.BuffermapResponse):
        head = {
            "rsp-code": msg.code,
            "rsp-params": {
                "overlay-id": msg.overlay_id,
                "buffermap": [
                    {"SourcePeerId": e.source_peer_id, "Sequence": e.sequences}
                    for e in msg.buffermap
                ],
            },
        }
    else:
        raise TypeError(f"the baseline codec only knows the benchmark messages, not {msg!r}")
    header = json.dumps(head, separators=(",", ":")).encode()
    return _PREFIX.pack(1, 1, len(header)) + header + payload


def _naive_decode(frame: bytes) -> r2.Message:
    _, _, header_len = _PREFIX.unpack_from(frame)
    head = json.loads(frame[4 : 4 + header_len])
    if head.get("req-code") == 1:
        p = head["req-params"]
        return r2.Hello(
            overlay_id=p["operation"]["overlay-id"],
            peer_id=p["peer"]["peer-id"],
            address=p["peer"]["address"],
            ticket_id=p["peer"]["ticket-id"],
            conn_num=p["operation"]["conn_num"],
            ttl=p["operation"]["ttl"],
        )
    if head.get("req-code") == 6:
        p = head["req-params"]
        start = 4 + header_len
        ext_end = start + p["ext-header-len"]
        return r2.BroadcastData(
            source=p["peer"]["peer-id"],
            sequence=p["peer"]["sequence"],
            data=frame[ext_end:],
            ext_header=json.loads(frame[start:ext_end]),
            payload_type=p["payload"]["payload-type"],
            ack=p["operation"]["ack"],
            candidate_path=p["operation"]["candidate-path"],
        )
    p = head["rsp-params"]
    return r2.BuffermapResponse(
        overlay_id=p["overlay-id"],
        buffermap=[r2.BuffermapEntry(e["SourcePeerId"], e["Sequence"]) for e in p["buffermap"]],
        code=head["rsp-code"],
    )


# --- timing ------------------------------------------------------------------------------
def _per_call_us(fn: Callable[[], object], budget_s: float, repeats: int) -> list[float]:
    """Mean µs per call in each of ``repeats`` runs, each run sized to ~``budget_s``."""
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-7)
    calls = max(3, min(200_000, int(budget_s / one)))
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            begin = time.perf_counter()
            for _ in range(calls):
                fn()
            samples.append((time.perf_counter() - begin) / calls * 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _codec_figures(
    name: str,
    msg: r2.Message,
    encode: Callable[[r2.Message], bytes],
    decode: Callable[[bytes], r2.Message],
    budget_s: float,
    repeats: int,
) -> dict[str, float]:
    frame = encode(msg)
    if decode(frame) != msg:
        raise RuntimeError(f"{name}: the codec under test does not round-trip")
    both = _per_call_us(lambda: decode(encode(msg)), budget_s, repeats)
    return {
        f"{name}_encode_us": statistics.median(
            _per_call_us(lambda: encode(msg), budget_s, repeats)
        ),
        f"{name}_decode_us": statistics.median(
            _per_call_us(lambda: decode(frame), budget_s, repeats)
        ),
        f"{name}_encode_decode_us": statistics.median(both),
        # The quietest repeat: on a shared machine, the closest to the code's own cost.
        f"{name}_encode_decode_us_best": min(both),
        f"{name}_frame_bytes": len(frame),
    }


def _stream_figures(msg: r2.Message, frames: int, chunk: int, repeats: int) -> dict[str, float]:
    """Throughput of StreamDecoder over back-to-back frames cut into TCP-sized reads."""
    blob = r2.encode(msg) * frames
    chunks = [blob[i : i + chunk] for i in range(0, len(blob), chunk)]
    seconds = []
    for _ in range(repeats):
        decoder = r2.StreamDecoder()
        count = 0
        begin = time.perf_counter()
        for piece in chunks:
            count += len(decoder.feed(piece))
        seconds.append(time.perf_counter() - begin)
        if count != frames:
            raise RuntimeError(f"stream decoder returned {count} of {frames} messages")
    best = statistics.median(seconds)
    return {"stream_mb_per_s": len(blob) / best / 1e6, "stream_msgs_per_s": frames / best}


# --- the command ---------------------------------------------------------------------------------
def run(quick: bool, console: Console) -> dict[str, Any]:
    budget_s, repeats, frames = (0.02, 3, 2_000) if quick else (0.1, 7, 20_000)
    samples = sample_messages()
    metrics: dict[str, float] = {}
    baseline: dict[str, float] = {}
    steps = 2 * len(samples) + 1
    # No auto-refresh: a refresh thread would compete for the GIL with the timed loops.
    with LineProgress(console=console, transient=True, auto_refresh=False) as progress:
        task = progress.add_task("measuring", total=steps)
        for name, msg in samples.items():
            progress.update(task, description=f"hp2p {name}")
            metrics |= _codec_figures(name, msg, r2.encode, r2.decode, budget_s, repeats)
            progress.advance(task)
            progress.refresh()
            progress.update(task, description=f"stdlib json {name}")
            baseline |= _codec_figures(name, msg, _naive_encode, _naive_decode, budget_s, repeats)
            progress.advance(task)
            progress.refresh()
        progress.update(task, description="stream decoder")
        metrics |= _stream_figures(samples["broadcast_1k"], frames, 65_536, repeats)
        progress.advance(task)
        progress.refresh()
    for figures in (metrics, baseline):
        figures["encode_decode_us"] = figures["broadcast_1k_encode_decode_us"]
        figures["encode_decode_us_best"] = figures["broadcast_1k_encode_decode_us_best"]
    ratios = {
        key: metrics[key] / baseline[key] for key in baseline if "_us" in key and baseline[key] > 0
    }
    return result_document(
        "wire",
        params={
            "quick": quick,
            "repeats": repeats,
            "budget_s_per_repeat": budget_s,
            "stream_frames": frames,
            "stream_chunk_bytes": 65_536,
            "broadcast_data_bytes": 1024,
            "buffermap_entries": 1000,
            "buffermap_sequences_per_entry": 4,
        },
        metrics=metrics,
        baselines={"stdlib_json": baseline},
        ratios=ratios,
    )


def _table(doc: dict[str, Any]) -> Table:
    metrics, base = doc["metrics"], doc["baselines"]["stdlib_json"]
    table = Table(title="R2 codec, µs per message (median)")
    for column in ("message", "encode", "decode", "encode+decode", "stdlib json e+d", "ratio"):
        table.add_column(column, justify="left" if column == "message" else "right")
    for name in sample_messages():
        both = f"{name}_encode_decode_us"
        table.add_row(
            f"{name} ({metrics[f'{name}_frame_bytes']} B)",
            f"{metrics[f'{name}_encode_us']:.2f}",
            f"{metrics[f'{name}_decode_us']:.2f}",
            f"{metrics[both]:.2f}",
            f"{base[both]:.2f}",
            f"{metrics[both] / base[both]:.2f}×",
        )
    return table


def wire(
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--json", metavar="FILE", help="Also write the result file (BENCHMARKS.md format)."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer, shorter repeats (a few seconds).")
    ] = False,
) -> None:
    """Micro-benchmark of the R2 codec: encode/decode µs for HELLO, a 1 KiB BROADCAST_DATA and
    a 1,000-entry BUFFERMAP response, stream-decoder throughput, and the same messages through
    a naive stdlib json + struct codec as the in-run baseline.

    Examples:

      hp2p bench wire

      hp2p bench wire --quick --json bench-results/wire.json
    """
    console = Console()
    check_writable(console, json_file)
    doc = run(quick, console)
    console.print(_table(doc))
    m = doc["metrics"]
    console.print(
        f"stream decoder: {m['stream_mb_per_s']:.0f} MB/s, "
        f"{m['stream_msgs_per_s']:,.0f} msgs/s (1 KiB broadcasts in 64 KiB reads)"
    )
    base = doc["baselines"]["stdlib_json"]
    console.print(
        f"encode_decode_us (1 KiB BROADCAST_DATA): median {m['encode_decode_us']:.2f} µs, "
        f"best repeat {m['encode_decode_us_best']:.2f} µs (target ≤ 3 µs); stdlib json "
        f"baseline {base['encode_decode_us']:.2f} / {base['encode_decode_us_best']:.2f} µs"
    )
    save_result(console, json_file, doc)
