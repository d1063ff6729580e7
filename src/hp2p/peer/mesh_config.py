"""Settings of the SubMesh core (PC FE for a ``sub``/``mesh`` overlay), with defaults and checks.

This is the ``mesh`` section of :class:`hp2p.peer.settings.Settings` (TOML ``[mesh]``,
``HP2P_<KEY>``, ``hp2p peer --set KEY=VALUE``).

Every bound the issue asks for is a field here: neighbours (target, low-water mark, maximum),
requests in flight (per neighbour and in total), time-outs, and the piece store (bytes and
objects). Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hp2p.peer.errors import SettingsError

KiB = 1024
MiB = 1024 * KiB


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Typed settings of :class:`hp2p.peer.mesh.MeshCore`."""

    piece_size: int = field(default=32 * KiB, metadata=_doc("Piece size the source cuts at."))
    max_piece_size: int = field(
        default=1 * MiB, metadata=_doc("Largest piece size accepted in a received manifest.")
    )
    max_object_size: int = field(
        default=64 * MiB, metadata=_doc("Largest object published or accepted.")
    )
    target_neighbours: int = field(default=8, metadata=_doc("Mesh neighbours a peer aims for."))
    low_water: int = field(
        default=4, metadata=_doc("Below this many neighbours, ask the HOMS for a new peer list.")
    )
    max_neighbours: int = field(
        default=16, metadata=_doc("Neighbours kept at most (incoming links beyond are refused).")
    )
    max_known_peers: int = field(default=256, metadata=_doc("Peer addresses remembered."))
    peer_list_interval: float = field(
        default=2.0, metadata=_doc("Least time between two HOMS peer-list requests (PLM FE).")
    )
    connect_timeout: float = field(
        default=3.0, metadata=_doc("A link not up (HELLO answered) within this is dropped.")
    )
    retry_backoff: float = field(
        default=2.0, metadata=_doc("Wait before reconnecting to a peer that failed or refused.")
    )
    heartbeat_interval: float = field(default=1.0, metadata=_doc("HEARTBEAT on idle links."))
    heartbeat_timeout: float = field(
        default=4.0, metadata=_doc("A neighbour silent this long is dropped (crash or hang).")
    )
    buffermap_interval: float = field(
        default=10.0, metadata=_doc("Full BUFFERMAP refresh from every neighbour (safety net).")
    )
    buffermap_chunk: int = field(
        default=2000, metadata=_doc("Sequences per BUFFERMAP message (keeps headers < 64 KiB).")
    )
    request_timeout: float = field(
        default=2.0, metadata=_doc("A GET_DATA unanswered this long is retried elsewhere.")
    )
    max_requests_per_neighbour: int = field(
        default=4, metadata=_doc("GET_DATA requests in flight to one neighbour.")
    )
    max_requests: int = field(default=16, metadata=_doc("GET_DATA requests in flight in total."))
    max_announced: int = field(
        default=65_536,
        metadata=_doc("Pieces remembered per neighbour's buffermap (more is refused)."),
    )
    fetch_window: int = field(
        default=16,
        metadata=_doc("Oldest incomplete objects pulled at once (plus the newest two)."),
    )
    max_strikes: int = field(
        default=3, metadata=_doc("Forged pieces/manifests before a neighbour is dropped for good.")
    )
    max_banned: int = field(default=1024, metadata=_doc("Banned peer-ids remembered."))
    store_bytes: int = field(default=256 * MiB, metadata=_doc("Piece store bound in bytes."))
    store_objects: int = field(default=10_000, metadata=_doc("Piece store bound in objects."))
    require_signatures: bool = field(
        default=False,
        metadata=_doc(
            "Accept only manifests signed by the source's key (from the HOMS or pinned); "
            "without a known key nothing is accepted. Off: unsigned SubMeshes still work."
        ),
    )
    takeover_after: float = field(
        default=3.0,
        metadata=_doc("Standby only: source unreachable this long -> publish in its place."),
    )

    def __post_init__(self) -> None:
        positive = (
            "piece_size",
            "max_piece_size",
            "max_object_size",
            "target_neighbours",
            "max_neighbours",
            "max_known_peers",
            "buffermap_chunk",
            "max_requests_per_neighbour",
            "max_requests",
            "fetch_window",
            "max_announced",
            "max_strikes",
            "max_banned",
            "store_bytes",
            "store_objects",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        timed = (
            "peer_list_interval",
            "connect_timeout",
            "retry_backoff",
            "heartbeat_interval",
            "heartbeat_timeout",
            "buffermap_interval",
            "request_timeout",
            "takeover_after",
        )
        for name in timed:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive seconds, got {getattr(self, name)}")
        if self.piece_size > self.max_piece_size:
            raise SettingsError("piece_size must not exceed max_piece_size")
        if not 0 <= self.low_water <= self.target_neighbours <= self.max_neighbours:
            raise SettingsError("need 0 <= low_water <= target_neighbours <= max_neighbours")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise SettingsError("heartbeat_timeout must exceed heartbeat_interval")

    @classmethod
    def describe(cls) -> dict[str, tuple[Any, str]]:
        """Every setting with its default and its doc, for ``--help`` and docs."""
        return {f.name: (f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MeshConfig:
        """Build from plain values (TOML/flags); unknown keys are an error that names them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SettingsError(f"unknown mesh setting(s): {', '.join(unknown)}")
        floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
        converted: dict[str, Any] = {
            k: float(v) if k in floats and type(v) is int else v for k, v in values.items()
        }
        return cls(**converted)
