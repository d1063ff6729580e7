"""Peer configuration (PC FE, Q.4100 §7.2.1.1): every knob of the sans-IO core, with defaults.

The shell merges TOML, environment and flags into one plain ``dict`` and calls
:meth:`PeerConfig.from_dict`; the core never reads files or the environment itself. Values that
belong to the overlay (heartbeat interval/timeout, cr-policy) arrive with the HOMP join answer and
override the local defaults through :meth:`PeerConfig.with_overlay`.

Defaults differ from the reference peer where the reference is known to be wrong
(etri-2023-protocol.md §9.2): four children per peer instead of one, probing on, an enforced
``conn_num``, incoming candidates counted apart from the primary slots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A setting has the wrong type or an impossible value; the message names the key."""


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Typed settings of the hybrid peer core. Times are in seconds, sizes in bytes."""

    max_children: int = field(
        default=4,
        metadata=_doc("Children per peer: incoming primary paths (tree fan-out)."),
    )
    recovery_children: int = field(
        default=2,
        metadata=_doc("Spare child slots only an orphan (recovering peer) may take."),
    )
    max_outgoing_candidates: int = field(
        default=3,
        metadata=_doc("Outgoing candidate paths kept as backup parents (CPM FE)."),
    )
    max_incoming_candidates: int = field(
        default=16,
        metadata=_doc("Incoming candidate paths (peers I volunteered to); counted apart."),
    )
    hello_ttl: int = field(default=3, metadata=_doc("HELLO relay depth below the entry peer."))
    hello_up: int = field(
        default=8,
        metadata=_doc("Levels a HELLO climbs towards the root (hp2p extension; 0: reference)."),
    )
    conn_num: int = field(
        default=3, metadata=_doc("HELLO conn_num: volunteers wanted per entry peer.")
    )
    hello_timeout: float = field(
        default=2.0, metadata=_doc("Wait for 1202 on a HELLO link before trying the next.")
    )
    estab_window: float = field(
        default=0.3,
        metadata=_doc("How long the joiner collects ESTABs after its HELLOs were accepted."),
    )
    estab_max: int = field(
        default=8, metadata=_doc("ESTABs collected per attempt; later ones get 2603.")
    )
    offer_hold: float = field(
        default=2.0,
        metadata=_doc("An unsettled ESTAB offer holds a child slot for this long."),
    )
    probe_timeout: float = field(
        default=0.5, metadata=_doc("Wait for PROBE answers before ranking volunteers.")
    )
    set_primary_timeout: float = field(
        default=2.0, metadata=_doc("Wait for 4200/4603 before trying the next candidate.")
    )
    estab_timeout: float = field(
        default=5.0, metadata=_doc("A volunteer's wait for 2200 before it frees its slot.")
    )
    idle_link_timeout: float = field(
        default=5.0, metadata=_doc("An accepted connection that says nothing is closed.")
    )
    vertical_candidate_delay: float = field(
        default=1.0, metadata=_doc("Delay after attaching before HELLO to the grandparent.")
    )
    heartbeat_interval: float = field(
        default=1.0, metadata=_doc("HEARTBEAT period on every path (overlay value wins).")
    )
    heartbeat_timeout: float = field(
        default=3.0,
        metadata=_doc("A path with no frame for this long is dead (overlay value wins)."),
    )
    cache_count: int = field(
        default=1024, metadata=_doc("Cached messages per source (cr-policy mN_Cache wins).")
    )
    cache_bytes: int = field(
        default=16 * 1024 * 1024, metadata=_doc("Cached payload bytes over all sources.")
    )
    cache_age: float = field(
        default=300.0, metadata=_doc("Cached messages older than this are dropped (mD_Cache).")
    )
    duplicate_window: int = field(
        default=4096,
        metadata=_doc("Per-source duplicate window (sequences); late messages inside pass."),
    )
    max_ahead: int = field(
        default=4096,
        metadata=_doc("A sequence further than this beyond the newest seen is forged: rejected."),
    )
    join_attempts: int = field(
        default=4,
        metadata=_doc("Join/recovery attempts before JoinFailed (the shell then rejoins)."),
    )
    recovery_attempts: int = field(
        default=12,
        metadata=_doc("An orphan's attempts before JoinFailed (outlasting stale HOMS lists)."),
    )
    backoff_initial: float = field(
        default=0.2, metadata=_doc("First retry delay; doubles per attempt (with jitter).")
    )
    backoff_max: float = field(default=10.0, metadata=_doc("Upper bound of a retry delay."))
    backoff_jitter: float = field(
        default=0.5, metadata=_doc("Random share of a delay (0.5: delay × [0.5, 1.0]).")
    )
    scan_timeout: float = field(default=3.0, metadata=_doc("SCAN_TREE collection time."))
    recovery_ask_timeout: float = field(
        default=0.5,
        metadata=_doc("Tree recovery: wait for 4200/4603 from a candidate before the next one."),
    )
    candidate_refill_delay: float = field(
        default=1.0,
        metadata=_doc("CPM: delay before looking for new outgoing candidates after losing one."),
    )
    gap_wait: float = field(
        default=0.08,
        metadata=_doc("DR: a live gap (n+2 after n) is pulled after this reordering tolerance."),
    )
    pull_timeout: float = field(
        default=1.0, metadata=_doc("DR: wait for a GET_DATA/BUFFERMAP answer before moving on.")
    )
    pull_rounds: int = field(
        default=4,
        metadata=_doc("DR: rounds over every holder before a miss is reported as a Gap."),
    )
    pull_round_delay: float = field(
        default=0.25, metadata=_doc("DR: pause before the next round; doubles per round.")
    )
    pull_per_peer: int = field(
        default=32, metadata=_doc("DR: GET_DATA requests in flight to one peer.")
    )
    pull_total: int = field(default=128, metadata=_doc("DR: GET_DATA requests in flight."))
    pull_max_wanted: int = field(
        default=8192,
        metadata=_doc("DR: missing messages tracked at once; beyond, reported as a Gap at once."),
    )
    push_max: int = field(
        default=4096,
        metadata=_doc("DR: messages pushed to one peer after a buffermap exchange."),
    )
    buffermap_bytes: int = field(
        default=48 * 1024,
        metadata=_doc("DR: a buffermap is cut to its newest sequences to fit this JSON size."),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name}: expected a number, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise ConfigError(f"{f.name}: expected an integer, got {value!r}")
            if value < 0:
                raise ConfigError(f"{f.name}: must not be negative, got {value!r}")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must exceed heartbeat_interval > 0")
        if self.duplicate_window < 1 or self.max_ahead < 1:
            raise ConfigError("duplicate_window and max_ahead must be at least 1")
        if self.pull_rounds < 1 or self.pull_per_peer < 1 or self.pull_total < 1:
            raise ConfigError("pull_rounds, pull_per_peer and pull_total must be at least 1")
        if not 1024 <= self.buffermap_bytes <= 60 * 1024:
            raise ConfigError("buffermap_bytes must be within [1024, 61440] (R2 header limit)")
        if self.backoff_jitter > 1:
            raise ConfigError("backoff_jitter must be within [0, 1]")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PeerConfig:
        """Build from merged TOML/env/flag values; unknown keys are an error, not ignored."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown peer setting(s): {', '.join(unknown)}")
        converted: dict[str, Any] = {}
        for key, value in values.items():
            if (
                known[key].type == "float"
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            converted[key] = value
        return cls(**converted)

    @classmethod
    def describe(cls) -> dict[str, tuple[Any, str]]:
        """Every setting with its default and its doc, for ``--help`` and docs."""
        return {f.name: (f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}

    def with_overlay(
        self,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        cache_count: int | None = None,
        cache_age_minutes: int | None = None,
    ) -> PeerConfig:
        """Apply the overlay's values from the HOMP join answer.

        A ``mN_Cache`` of 0 means "no cache" to the reference peer, which makes recovery
        impossible; hp2p keeps its own bound instead (docs/peer-core.md, deviations).
        """
        changes: dict[str, Any] = {}
        if heartbeat_interval and heartbeat_interval > 0:
            changes["heartbeat_interval"] = float(heartbeat_interval)
        if heartbeat_timeout and heartbeat_timeout > 0:
            changes["heartbeat_timeout"] = float(heartbeat_timeout)
        if "heartbeat_interval" in changes or "heartbeat_timeout" in changes:
            interval = changes.get("heartbeat_interval", self.heartbeat_interval)
            timeout = changes.get("heartbeat_timeout", self.heartbeat_timeout)
            if timeout <= interval:
                changes["heartbeat_timeout"] = interval * 3
        if cache_count and cache_count > 0:
            changes["cache_count"] = int(cache_count)
        if cache_age_minutes and cache_age_minutes > 0:
            changes["cache_age"] = float(cache_age_minutes) * 60.0
        return dataclasses.replace(self, **changes)
