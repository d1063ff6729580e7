"""PC FE: typed settings with defaults, loadable from a merged dict."""

from __future__ import annotations

import pytest

from hp2p.peer.config import PeerConfig
from hp2p.peer.errors import SettingsError


def test_defaults_match_the_issue() -> None:
    c = PeerConfig()
    assert (c.max_children, c.max_outgoing_candidates, c.max_incoming_candidates) == (4, 3, 16)
    assert (c.hello_ttl, c.conn_num) == (3, 3)


def test_from_dict_converts_ints_to_floats_and_rejects_unknown_keys() -> None:
    c = PeerConfig.from_dict({"max_children": 6, "heartbeat_interval": 2, "heartbeat_timeout": 7})
    assert c.max_children == 6
    assert isinstance(c.heartbeat_interval, float)
    with pytest.raises(SettingsError, match="unknown tree setting"):
        PeerConfig.from_dict({"max_childs": 6})


@pytest.mark.parametrize(
    "values",
    [
        {"max_children": -1},
        {"max_children": 2.5},
        {"max_children": True},
        {"heartbeat_interval": 0.0},
        {"heartbeat_interval": 5.0, "heartbeat_timeout": 4.0},
        {"duplicate_window": 0},
        {"backoff_jitter": 1.5},
        {"cache_bytes": "big"},
    ],
)
def test_impossible_values_are_refused_with_the_key_named(values: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        PeerConfig.from_dict(values)


def test_every_setting_is_documented() -> None:
    described = PeerConfig.describe()
    assert "max_children" in described
    assert all(doc for _, doc in described.values())


def test_overlay_values_override_local_defaults() -> None:
    c = PeerConfig().with_overlay(
        heartbeat_interval=10, heartbeat_timeout=15, cache_count=50, cache_age_minutes=2
    )
    assert (c.heartbeat_interval, c.heartbeat_timeout) == (10.0, 15.0)
    assert (c.cache_count, c.cache_age) == (50, 120.0)
    # mN_Cache 0 (the reference: "no cache") keeps hp2p's bound; a bad timeout is repaired
    d = PeerConfig().with_overlay(heartbeat_interval=5, heartbeat_timeout=5, cache_count=0)
    assert d.cache_count == PeerConfig().cache_count
    assert d.heartbeat_timeout > d.heartbeat_interval


def test_a_local_heartbeat_keeps_its_precision_and_wins_over_the_overlays() -> None:
    """Issue #10: HOMP carries whole seconds; a sub-second local value must not be replaced
    by the overlay's rounded one (before the fix: 0.5 s became 1 s after the join)."""
    local = PeerConfig.from_dict({"heartbeat_interval": 0.5, "heartbeat_timeout": 1.5})
    joined = local.with_overlay(heartbeat_interval=1, heartbeat_timeout=2)
    assert (joined.heartbeat_interval, joined.heartbeat_timeout) == (0.5, 1.5)
    # a constructor argument other than the default is a local setting too
    assert PeerConfig(heartbeat_interval=0.25).with_overlay(1, 3).heartbeat_interval == 0.25
    # only one set: the other follows the overlay
    half = PeerConfig.from_dict({"heartbeat_interval": 0.5}).with_overlay(2, 6)
    assert (half.heartbeat_interval, half.heartbeat_timeout) == (0.5, 6.0)
    # set to the default value explicitly: still the user's, still wins
    same = PeerConfig.from_dict({"heartbeat_interval": 1.0}).with_overlay(2, 6)
    assert same.heartbeat_interval == 1.0
    # an overlay value that contradicts a local one yields to it
    short = PeerConfig.from_dict({"heartbeat_timeout": 2.0}).with_overlay(5, 15)
    assert short.heartbeat_timeout == 2.0
    assert 0 < short.heartbeat_interval < 2.0


def test_the_overlays_heartbeat_applies_when_the_peer_set_none() -> None:
    joined = PeerConfig().with_overlay(heartbeat_interval=2, heartbeat_timeout=6)
    assert (joined.heartbeat_interval, joined.heartbeat_timeout) == (2.0, 6.0)
    assert joined.pinned == frozenset()  # the overlay's values are not the user's
    again = joined.with_overlay(heartbeat_interval=1, heartbeat_timeout=3)  # a rejoin
    assert (again.heartbeat_interval, again.heartbeat_timeout) == (1.0, 3.0)


def test_homp_carries_the_heartbeat_rounded_in_its_field_only() -> None:
    from hp2p.peer.homs_client import homp_heartbeat

    assert homp_heartbeat(0.5, 1.5) == (1, 2)
    assert homp_heartbeat(1.0, 3.0) == (1, 3)
    assert homp_heartbeat(2.4, 2.6) == (2, 3)
