"""Peer configuration (PC FE, Q.4100 §7.2.1.1): every knob of the sans-IO core, with defaults.

This is the ``tree`` section of :class:`hp2p.peer.settings.Settings`: the shell merges TOML,
environment and flags and calls :meth:`PeerConfig.from_dict`; the core never reads files or the
environment itself. Values that belong to the overlay arrive with the HOMP join answer and are
applied at ``start`` through :meth:`PeerConfig.with_overlay`:

* the heartbeat interval/timeout apply only where the peer did not set its own: a value given
  locally (TOML, ``HP2P_*``, ``--set``, or a non-default constructor argument) is *pinned* and
  keeps its sub-second precision; HOMP carries whole seconds, so the overlay's value is only
  the fallback, never read back over a local one;
* the ``cr-policy`` cache bounds (mN_Cache, mD_Cache) are the overlay's recovery contract and
  win over the local values.

Defaults differ from the reference peer where the reference is known to be wrong
(etri-2023-protocol.md §9.2): four children per peer instead of one, probing on, an enforced
``conn_num``, incoming candidates counted apart from the primary slots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hp2p.peer.errors import SettingsError

#: Settings the overlay also has a value for (HOMP ``heartbeat-interval``/``-timeout``): the
#: overlay's value applies unless the peer pinned its own (module docstring).
OVERLAY_KEYS = ("heartbeat_interval", "heartbeat_timeout")


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Typed settings of the hybrid peer core. Times are in seconds, sizes in bytes."""

    max_children: int = field(
        default=4,
        metadata=_doc("Children per peer: incoming primary paths in the tree."),
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
        default=1.0,
        metadata=_doc("HEARTBEAT period on every path (unset: the overlay's value applies)."),
    )
    heartbeat_timeout: float = field(
        default=3.0,
        metadata=_doc("A path silent this long is dead (unset: the overlay's value applies)."),
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
    max_sources: int = field(
        default=4096,
        metadata=_doc(
            "Sources whose duplicate window and credential are kept (least recent out first)."
        ),
    )
    sign_window: float = field(
        default=0.01,
        metadata=_doc(
            "A source publishing faster than this gap signs its messages in batches: one "
            "signature per batch, sent at most this much later (0: sign each message alone)."
        ),
    )
    sign_batch: int = field(
        default=64,
        metadata=_doc("Most messages under one source signature (a full batch goes at once)."),
    )
    join_attempts: int = field(
        default=4,
        metadata=_doc("Join attempts before JoinFailed (then a fresh HOMP join, see rejoins)."),
    )
    rejoins: int = field(
        default=3,
        metadata=_doc("Fresh HOMP joins (new ticket) after the tree core gave up re-attaching."),
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
    scan_gap: float = field(
        default=0.25,
        metadata=_doc(
            "SCAN_TREE requests arriving on one path closer than this are dropped: each "
            "reaches the whole tree, so an unlimited stream would be a flood amplifier."
        ),
    )
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
    #: Which of :data:`OVERLAY_KEYS` the peer set itself (the overlay's values do not replace
    #: them). Not a setting: filled by :meth:`from_dict` with the keys it is given, and by the
    #: constructor with every overlay key whose value is not the default.
    pinned: frozenset[str] = field(default=frozenset(), metadata={"internal": True})

    def __post_init__(self) -> None:
        pinned = set(self.pinned)
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{f.name}: expected a number, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise SettingsError(f"{f.name}: expected an integer, got {value!r}")
            if value < 0:
                raise SettingsError(f"{f.name}: must not be negative, got {value!r}")
            if f.name in OVERLAY_KEYS and value != f.default:
                pinned.add(f.name)
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise SettingsError("heartbeat_timeout must exceed heartbeat_interval > 0")
        if self.duplicate_window < 1 or self.max_ahead < 1:
            raise SettingsError("duplicate_window and max_ahead must be at least 1")
        if self.max_sources < 1:
            raise SettingsError("max_sources must be at least 1")
        if not 0 <= self.sign_window <= 1 or not 1 <= self.sign_batch <= 1 << 16:
            raise SettingsError("sign_window must be within [0, 1] s, sign_batch within [1, 65536]")
        if self.pull_rounds < 1 or self.pull_per_peer < 1 or self.pull_total < 1:
            raise SettingsError("pull_rounds, pull_per_peer and pull_total must be at least 1")
        if not 1024 <= self.buffermap_bytes <= 60 * 1024:
            raise SettingsError("buffermap_bytes must be within [1024, 61440] (R2 header limit)")
        if self.backoff_jitter > 1:
            raise SettingsError("backoff_jitter must be within [0, 1]")
        unknown = pinned - set(OVERLAY_KEYS)
        if unknown:
            raise SettingsError(f"pinned: only {', '.join(OVERLAY_KEYS)}, not {sorted(unknown)}")
        object.__setattr__(self, "pinned", frozenset(pinned))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PeerConfig:
        """Build from merged TOML/env/flag values; unknown keys are an error, not ignored.

        The overlay keys among ``values`` were set by the user: they are pinned.
        """
        known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"unknown tree setting(s): {', '.join(unknown)}")
        converted: dict[str, Any] = {"pinned": frozenset(set(values) & set(OVERLAY_KEYS))}
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
        return {
            f.name: (f.default, f.metadata.get("doc", ""))
            for f in dataclasses.fields(cls)
            if not f.metadata.get("internal")
        }

    def with_overlay(
        self,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        cache_count: int | None = None,
        cache_age_minutes: int | None = None,
    ) -> PeerConfig:
        """Apply the overlay's values from the HOMP join answer.

        The heartbeat values apply only where the peer pinned none of its own; when an overlay
        value contradicts a pinned one (timeout not above interval), the other is derived from
        the pinned one. A ``mN_Cache`` of 0 means "no cache" to the reference peer, which makes
        recovery impossible; hp2p keeps its own bound instead (docs/peer-core.md, deviations).
        """
        changes: dict[str, Any] = {}
        for key, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("heartbeat_timeout", heartbeat_timeout),
        ):
            if value and value > 0 and key not in self.pinned:
                changes[key] = float(value)
        interval = changes.get("heartbeat_interval", self.heartbeat_interval)
        timeout = changes.get("heartbeat_timeout", self.heartbeat_timeout)
        if timeout <= interval:
            if "heartbeat_timeout" in self.pinned:
                changes["heartbeat_interval"] = timeout / 3
            else:
                changes["heartbeat_timeout"] = interval * 3
        if cache_count and cache_count > 0:
            changes["cache_count"] = int(cache_count)
        if cache_age_minutes and cache_age_minutes > 0:
            changes["cache_age"] = float(cache_age_minutes) * 60.0
        applied = dataclasses.replace(self, **changes)
        object.__setattr__(applied, "pinned", self.pinned)  # the overlay's values stay unpinned
        return applied
