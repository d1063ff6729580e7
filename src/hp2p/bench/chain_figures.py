"""The figures of ``hp2p bench chain``, computed from what the run recorded (pure functions).

Inputs: the load generator's records (submit time, answer, validity of each transaction), the
JSON events of every process (``tx`` lines of the producers, ``head`` lines of everyone, each
stamped with the wall-clock time the process printed it) and the blocks of the best chain.
Every process runs on this one machine, so their clocks are one clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hp2p.bench.phases import quantile

__all__ = ["BlockInfo", "TxRecord", "block_figures", "tx_figures"]


@dataclass
class TxRecord:
    """One transaction the load generator posted."""

    hash: str
    submitter: str  # the producer whose API got it
    t_submit: float
    valid: bool  # meant to be valid (the invalid ones are forged, replayed or overspending)
    code: int = 0  # HTTP status (0: no answer)
    kind: str = "valid"  # or forged, overspend, replay


@dataclass
class BlockInfo:
    height: int
    hash: str
    txs: list[str]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def tx_figures(
    records: list[TxRecord], tx_events: dict[str, dict[str, list[float]]]
) -> dict[str, Any]:
    """Delivery to every producer, submit → all-producers latency, copies per producer."""
    producers = sorted(tx_events)
    accepted = [r for r in records if r.valid and r.code == 202]
    delivered = due = copies = others = 0
    latencies: list[float] = []
    for record in accepted:
        last = 0.0
        complete = True
        for producer in producers:
            due += 1
            if producer == record.submitter:  # it has it from its API
                delivered += 1
                continue
            times = tx_events[producer].get(record.hash, [])
            others += 1
            copies += len(times)
            if times:
                delivered += 1
                last = max(last, min(times) - record.t_submit)
            else:
                complete = False
        if complete:
            latencies.append(last)
    posted = [r.t_submit for r in records]
    span = max(posted) - min(posted) if len(posted) > 1 else 0.0
    return {
        "txs_sent": len(records),
        # what the load generator achieved (below --rate when this machine cannot keep up)
        "posted_tx_per_s": round((len(posted) - 1) / span, 1) if span > 0 else None,
        "txs_accepted": len(accepted),
        "tx_delivery_ratio": round(delivered / due, 6) if due else None,
        "tx_p50_ms": _ms(quantile(latencies, 0.5)),
        "tx_p99_ms": _ms(quantile(latencies, 0.99)),
        "tx_duplicates": round(copies / others - 1, 4) if others else None,
        "_tx_latencies_ms": [round(v * 1000, 3) for v in latencies],
    }


def first_time(events: list[dict[str, Any]], key: str, at_least: int) -> float | None:
    """The time of the first ``head`` event whose ``key`` is ≥ ``at_least``."""
    for event in events:
        if event.get("event") == "head" and int(event.get(key, -1)) >= at_least:
            return float(event["t"])
    return None


def reached_at(events: list[dict[str, Any]], block: BlockInfo) -> float | None:
    """When a node first had ``block`` (its head is it, or higher: it validated it on the way);
    a head of another hash at that height is a fork block, not this one."""
    for event in events:
        if event.get("event") != "head":
            continue
        height = int(event.get("height", -1))
        if height > block.height or (height == block.height and event["hash"] == block.hash):
            return float(event["t"])
    return None


def made_at(events: dict[str, list[dict[str, Any]]], producers: list[str], digest: str) -> float:
    """When a producer first had the block as its head (the maker announces it at once)."""
    times = [
        float(e["t"])
        for name in producers
        for e in events[name]
        if e.get("event") == "head" and e.get("hash") == digest
    ]
    return min(times) if times else float("nan")


def block_figures(
    blocks: list[BlockInfo],
    events: dict[str, list[dict[str, Any]]],
    producers: list[str],
    nodes: list[str],
    records: list[TxRecord],
) -> dict[str, Any]:
    """Block propagation to the last full node, finality and finalised throughput, forks."""
    block_latency: list[float] = []
    final_at: dict[int, float] = {}
    for block in blocks:
        made = made_at(events, producers, block.hash)
        reached = [reached_at(events[n], block) for n in nodes]
        if made == made and reached and all(t is not None for t in reached):
            block_latency.append(max(t for t in reached if t is not None) - made)
        final = first_time(events[producers[0]], "final_height", block.height)
        if final is not None:
            final_at[block.height] = final
    height_of = {tx: b.height for b in blocks for tx in b.txs}
    submitted = {r.hash: r.t_submit for r in records if r.valid and r.code == 202}
    finality = [
        final_at[height_of[h]] - t for h, t in submitted.items() if height_of.get(h) in final_at
    ]
    # sustained: what was submitted over the load's span and all became final
    span = max(submitted.values()) - min(submitted.values()) if submitted else 0.0
    invalid = {r.hash for r in records if not r.valid and r.kind != "replay"}
    seen: dict[int, set[str]] = {}
    for name in [*producers, *nodes]:
        for e in events[name]:
            if e.get("event") == "head":
                seen.setdefault(int(e["height"]), set()).add(str(e["hash"]))
    return {
        "blocks": len(blocks),
        "block_p50_ms": _ms(quantile(block_latency, 0.5)),
        "block_p99_ms": _ms(quantile(block_latency, 0.99)),
        "finality_p50_s": _round(quantile(finality, 0.5)),
        "finality_p99_s": _round(quantile(finality, 0.99)),
        "txs_finalised": len(finality),
        "tx_per_s": round(len(finality) / span, 1) if span > 0 else None,
        "invalid_in_blocks": len(invalid & set(height_of)),
        "forks": sum(1 for hashes in seen.values() if len(hashes) > 1),
        "_block_latencies_ms": [round(v * 1000, 3) for v in block_latency],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
