"""PC FE: typed settings with defaults, loadable from a merged dict."""

from __future__ import annotations

import pytest

from hp2p.peer.config import ConfigError, PeerConfig


def test_defaults_match_the_issue() -> None:
    c = PeerConfig()
    assert (c.max_children, c.max_outgoing_candidates, c.max_incoming_candidates) == (4, 3, 16)
    assert (c.hello_ttl, c.conn_num) == (3, 3)


def test_from_dict_converts_ints_to_floats_and_rejects_unknown_keys() -> None:
    c = PeerConfig.from_dict({"max_children": 6, "heartbeat_interval": 2, "heartbeat_timeout": 7})
    assert c.max_children == 6
    assert isinstance(c.heartbeat_interval, float)
    with pytest.raises(ConfigError, match="unknown peer setting"):
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
    with pytest.raises(ConfigError):
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
