"""A peer's ``/metrics`` (Prometheus text) from its ``status()`` snapshot: pure, no I/O.

The local API serves it behind the same bearer token as every other route. Every value is
taken from the status dicts the peer already keeps (``PeerNode.status()``,
``MeshNode.status()``), so the metrics and ``GET /status`` never disagree. Labels are fixed
by this module (refusal reasons, the peer's own overlay-id), never chosen by another peer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hp2p.prometheus import Family, counter, gauge, render


def _int(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _info(status: Mapping[str, Any], kind: str) -> Family:
    labels = {
        "peer_id": str(status.get("peer_id") or ""),
        "overlay_id": str(status.get("overlay_id") or ""),
        "kind": kind,
        "state": str(status.get("state") or ""),
    }
    return gauge("hp2p_peer_info", "This peer: its id, overlay, kind and state (value 1).").add(
        1, labels
    )


def _parent_rtt(status: Mapping[str, Any]) -> float:
    """The measured RTT (s) of the path to the parent; NaN without a parent or a sample."""
    parent = status.get("parent")
    for path in (status.get("core_status") or {}).get("paths") or []:
        if parent is not None and path.get("peer_id") == parent and path.get("role") == "parent":
            rtt = path.get("rtt")
            if isinstance(rtt, int | float):
                return float(rtt)
    return float("nan")


def _refusals(duplicates: Mapping[str, Any]) -> Family:
    refused = Family(
        "hp2p_peer_messages_refused_total",
        "counter",
        "Data messages not delivered again, by reason (duplicate, late, too_old, too_far).",
    )
    for reason in ("duplicates", "late", "too_old", "too_far"):
        refused.add(_int(duplicates.get(reason)), {"reason": reason.removesuffix("s")})
    return refused


def tree_families(status: Mapping[str, Any]) -> list[Family]:
    """Families of a CoreTree/SubTree peer (``PeerNode.status()``)."""
    node = status.get("node") or {}
    core = status.get("core") or {}
    core_status = status.get("core_status") or {}
    duplicates = core_status.get("duplicates") or {}
    cache = core_status.get("cache") or {}
    depth = status.get("depth")
    return [
        _info(status, "tree"),
        counter(
            "hp2p_peer_deliveries_total",
            "Messages delivered to this peer's application.",
            _int(node.get("deliveries")),
        ),
        counter(
            "hp2p_peer_duplicates_dropped_total",
            "Data messages dropped because this peer had them already.",
            _int(duplicates.get("duplicates")),
        ),
        _refusals(duplicates),
        *_relaying(core, core_status),
        counter(
            "hp2p_peer_gaps_total",
            "Messages no peer could serve any more (data recovery gave up).",
            _int(node.get("gaps")),
        ),
        gauge(
            "hp2p_peer_parent_rtt_seconds",
            "Round-trip time to the parent (NaN: no parent or not measured yet).",
            _parent_rtt(status),
        ),
        gauge(
            "hp2p_peer_depth",
            "Depth in the tree (0: root; NaN: not attached).",
            float(depth) if isinstance(depth, int) else float("nan"),
        ),
        gauge("hp2p_peer_cache_messages", "Messages in the cache.", _int(cache.get("messages"))),
        gauge("hp2p_peer_cache_bytes", "Payload bytes in the cache.", _int(cache.get("bytes"))),
        *_links(status),
    ]


def _relaying(core: Mapping[str, Any], core_status: Mapping[str, Any]) -> list[Family]:
    recovery = core_status.get("recovery") or {}
    return [
        counter(
            "hp2p_peer_relayed_messages_total",
            "Data messages relayed on to other peers.",
            _int(core.get("forwarded")),
        ),
        counter(
            "hp2p_peer_relayed_bytes_total",
            "Payload bytes relayed on (counted once per path a message went out on).",
            _int(core.get("forwarded_bytes")),
        ),
        counter(
            "hp2p_peer_published_total",
            "Messages this peer published.",
            _int(core.get("published")),
        ),
        counter(
            "hp2p_peer_repairs_total",
            "Tree repairs: a lost parent replaced (path repair).",
            _int(core.get("repairs")),
        ),
        counter(
            "hp2p_peer_recovered_total",
            "Missing messages fetched again by data recovery.",
            _int(recovery.get("recovered")),
        ),
        counter(
            "hp2p_peer_protocol_errors_total",
            "Malformed or out-of-order frames from other peers (counted, not fatal).",
            _int(core.get("protocol_errors")),
        ),
    ]


def _links(status: Mapping[str, Any]) -> list[Family]:
    links = status.get("links") or {}
    node = status.get("node") or {}
    return [
        gauge("hp2p_peer_links", "Open R2 links.", _int(links.get("open"))),
        counter("hp2p_peer_frames_sent_total", "R2 frames sent.", _int(node.get("frames_sent"))),
    ]


def mesh_families(status: Mapping[str, Any]) -> list[Family]:
    """Families of a SubMesh peer (``MeshNode.status()``)."""
    node = status.get("node") or {}
    mesh = status.get("mesh") or {}
    counters = mesh.get("counters") or {}
    return [
        _info(status, "mesh"),
        counter(
            "hp2p_peer_deliveries_total",
            "Whole verified objects delivered to this peer's application.",
            _int(node.get("deliveries")),
        ),
        counter(
            "hp2p_peer_relayed_bytes_total",
            "Piece bytes served to other peers.",
            _int(counters.get("bytes_served")),
        ),
        counter(
            "hp2p_peer_received_bytes_total",
            "Piece bytes received from other peers.",
            _int(counters.get("bytes_received")),
        ),
        counter(
            "hp2p_peer_forged_total",
            "Pieces or manifests that failed verification.",
            _int(counters.get("forged")),
        ),
        gauge("hp2p_peer_cache_bytes", "Bytes in the piece store.", _int(mesh.get("store-bytes"))),
        gauge("hp2p_peer_cache_objects", "Objects held.", _int(mesh.get("objects"))),
        gauge("hp2p_peer_neighbours", "Open mesh links.", _int(mesh.get("links"))),
        counter("hp2p_peer_frames_sent_total", "R2 frames sent.", _int(node.get("frames_sent"))),
    ]


def exposition(status: Mapping[str, Any]) -> str:
    """The ``/metrics`` text of a peer from its ``status()``."""
    families = mesh_families(status) if "source_id" in status else tree_families(status)
    return render(families)
