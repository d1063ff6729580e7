"""The live state without a network: LiveState's ordering, bounds and counters, the change log
and how a stream client resumes or resyncs, the feed's app-id filter, the MQTT-out table, the
watch command's SSE parser and table; hypothesis fuzzes decode → apply with garbage."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.apps.iot.mqtt_out import MqttOut, MqttUrlError, parse_mqtt_url
from hp2p.apps.iot.reading import APP_ID, Reading, encode_reading
from hp2p.apps.iot.state import ChangeLog, LiveState, payload_view
from hp2p.apps.iot.state_api import sse_event
from hp2p.apps.iot.state_feed import StateFeed
from hp2p.apps.iot.watch import TableState, parse_sse
from hp2p.peer.subscription import Delivery

NOW = 1_700_000_000.0


def reading(
    topic: str = "s/t",
    payload: bytes = b'{"v":1}',
    *,
    device_ts: float | None = None,
    received_ts: float = NOW,
    gateway: str = "gw",
    epoch: int = 1,
    number: int = 1,
) -> Reading:
    return Reading(topic, payload, device_ts, received_ts, 0, gateway, epoch, number)


def delivery(data: bytes, app_id: str | None = APP_ID, lost: int = 0) -> Delivery:
    return Delivery("src", 1, data, app_id, "x", lost=lost)


# --- ordering ------------------------------------------------------------------------------------


def test_newer_replaces_older_and_older_is_stale() -> None:
    state = LiveState()
    assert state.apply(reading(device_ts=NOW - 5, number=1), NOW) is not None
    assert state.apply(reading(device_ts=NOW - 1, number=2), NOW) is not None
    assert state.apply(reading(device_ts=NOW - 3, number=3), NOW) is None  # arrived late
    got = state.get("s/t")
    assert got is not None
    assert got.number == 2
    assert (state.counters.applied, state.counters.stale) == (2, 1)
    assert state.version == 2


def test_device_ts_orders_before_received_ts() -> None:
    state = LiveState()
    state.apply(reading(device_ts=NOW - 1, received_ts=NOW - 10, number=1), NOW)
    # received later by the gateway, but the device says it is older
    assert state.apply(reading(device_ts=NOW - 2, received_ts=NOW, number=2), NOW) is None
    # no device_ts: the gateway's clock decides
    state.apply(reading("x", received_ts=NOW - 1, number=3), NOW)
    assert state.apply(reading("x", received_ts=NOW - 2, number=4), NOW) is None
    assert state.counters.stale == 2


def test_ties_duplicates_same_gateway_and_other_gateway() -> None:
    state = LiveState()
    first = reading(device_ts=NOW - 1, number=5)
    state.apply(first, NOW)
    assert state.apply(first, NOW) is None  # the same reading again (two paths)
    assert state.counters.duplicate == 1
    # same instant, same gateway: the higher number wins, a lower one is stale
    assert state.apply(reading(device_ts=NOW - 1, number=4), NOW) is None
    assert state.apply(reading(device_ts=NOW - 1, number=6), NOW) is not None
    # a restarted gateway (higher epoch) wins over a high number of the old epoch
    assert state.apply(reading(device_ts=NOW - 1, epoch=2, number=1), NOW) is not None
    # another gateway at the same instant: the last to arrive
    assert state.apply(reading(device_ts=NOW - 1, gateway="other"), NOW) is not None
    got = state.get("s/t")
    assert got is not None
    assert got.gateway == "other"
    assert state.counters.stale == 1


def test_a_device_clock_far_ahead_is_not_believed() -> None:
    state = LiveState(future_slack=60)
    state.apply(reading(device_ts=NOW + 3600, received_ts=NOW - 5, number=1), NOW)
    assert state.counters.future_ts == 1
    # it does not pin the topic: a correct reading a second later replaces it
    assert state.apply(reading(device_ts=NOW - 4, received_ts=NOW - 4, number=2), NOW)


# --- bounds --------------------------------------------------------------------------------------


def test_topics_are_bounded_least_recently_updated_evicted() -> None:
    state = LiveState(max_topics=3)
    for i in range(3):
        state.apply(reading(f"t{i}", received_ts=NOW + i, number=i + 1), NOW + 10)
    state.apply(reading("t0", received_ts=NOW + 5, number=10), NOW + 10)  # t0 refreshed
    change = state.apply(reading("t9", received_ts=NOW + 6, number=11), NOW + 10)
    assert change is not None
    assert sorted(r.topic for r in state.readings()) == ["t0", "t2", "t9"]  # t1 evicted
    assert state.counters.evicted == 1
    # the eviction is a change too, so that a stream client's view stays the same
    changes = state.log.since(change.version - 2)
    assert changes is not None
    assert [(c.topic, c.reading is None) for c in changes] == [("t1", True), ("t9", False)]
    assert changes[0].as_json(NOW) == {"type": "remove", "version": 5, "topic": "t1"}


def test_change_log_bounded_by_count_and_bytes() -> None:
    log = ChangeLog(max_changes=3, max_bytes=10_000)
    for i in range(5):
        log.add(f"t{i}", reading(f"t{i}"))
    assert log.oldest == 3
    assert log.since(1) is None  # 2 was dropped: snapshot needed
    since2 = log.since(2)
    assert since2 is not None
    assert [c.version for c in since2] == [3, 4, 5]
    assert log.since(5) == []
    assert log.since(6) is None  # a version from the future (another member's)
    assert log.since(-1) is None
    small = ChangeLog(max_changes=100, max_bytes=2500)
    for i in range(5):
        small.add("t", reading(payload=b"x" * 1000, number=i + 1))
    assert small.oldest == 4  # only two 1000-byte payloads fit
    limited = small.since(3, limit=1)
    assert limited is not None
    assert [c.version for c in limited] == [4]


def test_snapshot_shapes_payloads_and_age() -> None:
    state = LiveState()
    state.apply(reading("a", b'{"v": 2.5}', device_ts=NOW - 2, number=1), NOW)
    state.apply(reading("b", b"on", number=2), NOW)
    state.apply(reading("c", b"\xff\x00", number=3), NOW)
    state.apply(reading("d/e", b"1", number=4), NOW)
    snap = state.snapshot(NOW + 1)
    assert snap["version"] == 4
    by_topic = {t["topic"]: t for t in snap["topics"]}
    assert by_topic["a"]["payload"] == {"v": 2.5}
    assert by_topic["a"]["age"] == 3.0
    assert by_topic["b"] | {} == {
        "topic": "b",
        "payload_format": "text",
        "payload": "on",
        "device_ts": None,
        "received_ts": NOW,
        "gateway": "gw",
        "age": 1.0,
    }
    assert by_topic["c"]["payload"] == base64.b64encode(b"\xff\x00").decode()
    assert by_topic["c"]["payload_format"] == "base64"
    assert [t["topic"] for t in state.snapshot(NOW, "d/")["topics"]] == ["d/e"]
    assert payload_view(b"1") == {"payload_format": "json", "payload": 1}


# --- malformed input -----------------------------------------------------------------------------


def test_malformed_readings_are_counted_by_reason() -> None:
    state = LiveState()
    bad_qos = msgspec.msgpack.encode(["t", b"", None, NOW, 7, "gw", 1, 1])
    wildcard = msgspec.msgpack.encode(["a/#", b"", None, NOW, 0, "gw", 1, 1])
    bad_ts = msgspec.msgpack.encode(["t", b"", -1.0, NOW, 0, "gw", 1, 1])
    not_utf8 = b"\x98\xa2\x00\x80"  # msgspec raises UnicodeDecodeError, not DecodeError
    for data in (b"\xc1garbage", b"", bad_qos, wildcard, bad_ts, b"x" * 70_000, not_utf8):
        assert state.apply_bytes(data, NOW) is None
    assert state.counters.malformed == {
        "not_a_reading": 3,
        "bad_qos": 1,
        "bad_topic": 1,
        "bad_timestamp": 1,
        "too_large": 1,
    }
    assert state.counters.as_dict()["malformed_total"] == 7
    assert state.apply_bytes(encode_reading(reading()), NOW) is not None


@given(st.binary(max_size=2000))
def test_fuzz_garbage_never_breaks_the_state(data: bytes) -> None:
    state = LiveState(max_topics=4)
    state.apply_bytes(data, NOW)
    c = state.counters
    assert c.applied + sum(c.malformed.values()) == 1
    assert len(state) <= 4
    state.snapshot(NOW)


garbage = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
#: each field of a reading: a valid value or garbage of any type
near_reading = st.tuples(
    st.one_of(st.sampled_from(["a", "b/c", "d/#", ""]), garbage),
    st.one_of(st.binary(max_size=30), garbage),
    st.one_of(st.floats(NOW - 10, NOW + 10), garbage),
    st.one_of(st.floats(NOW - 10, NOW), garbage),
    st.one_of(st.integers(0, 2), garbage),
    st.one_of(st.sampled_from(["gw", "gw2"]), garbage),
    st.one_of(st.integers(0, 3), garbage),
    st.one_of(st.integers(1, 9), garbage),
)


@given(st.lists(st.one_of(near_reading, st.lists(garbage, max_size=10)), max_size=20))
def test_fuzz_near_readings_are_checked(items: list[Any]) -> None:
    """Arrays shaped like readings with valid or garbage fields: never a crash, every one
    counted as applied, stale, duplicate or malformed, the topics bounded."""
    state = LiveState(max_topics=2)
    for fields in items:
        change = state.apply_bytes(msgspec.msgpack.encode(list(fields)), NOW)
        if change is not None:
            assert change.reading is not None
            assert change.reading.topic
            assert not any(c in change.reading.topic for c in "#+\0")
    c = state.counters
    assert c.applied + c.stale + c.duplicate + sum(c.malformed.values()) == len(items)
    assert len(state) <= 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.one_of(st.none(), st.floats(NOW - 100, NOW + 100)),
            st.floats(NOW - 100, NOW),
            st.integers(1, 5),
        ),
        max_size=40,
    )
)
def test_fuzz_the_stored_reading_is_never_older_than_one_applied(
    items: list[tuple[str, float | None, float, int]],
) -> None:
    state = LiveState(max_topics=3)
    newest: dict[str, tuple[float, float]] = {}
    for n, (topic, device_ts, received_ts, epoch) in enumerate(items, 1):
        r = reading(topic, device_ts=device_ts, received_ts=received_ts, epoch=epoch, number=n)
        if state.apply(r, NOW) is not None:
            newest[topic] = (device_ts if device_ts is not None else received_ts, received_ts)
    assert len(state) <= 3
    for stored in state.readings():
        ts = stored.device_ts if stored.device_ts is not None else stored.received_ts
        assert (ts, stored.received_ts) == newest[stored.topic]
    c = state.counters
    assert c.applied + c.stale + c.duplicate == len(items)


# --- the feed: app-ids, streams, resync ----------------------------------------------------------


async def test_feed_ignores_other_app_ids_and_counts_losses() -> None:
    feed = StateFeed(LiveState(), clock=lambda: NOW)
    assert feed.deliver(delivery(b"hello", app_id="etri_data")) is None
    assert feed.deliver(delivery(b"\xc1", lost=3)) is None
    assert feed.deliver(delivery(encode_reading(reading()))) is not None
    status = feed.status()
    assert status["feed"]["other_app_ids"] == 1
    assert status["feed"]["lost"] == 3
    assert status["state"]["malformed"] == {"not_a_reading": 1}
    assert status["topics"] == 1


async def _take(stream: Any, n: int) -> list[dict[str, Any] | None]:
    return [await asyncio.wait_for(anext(stream), 5) for _ in range(n)]


async def test_stream_snapshot_then_changes_with_prefix() -> None:
    feed = StateFeed(LiveState(), clock=lambda: NOW)
    feed.deliver(delivery(encode_reading(reading("a/1", number=1))))
    stream = feed.messages(None, prefix="a/")
    (first,) = await _take(stream, 1)
    assert first is not None
    assert first["type"] == "snapshot"
    assert first["version"] == 1
    nxt = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the client is waiting for the pulse
    feed.deliver(delivery(encode_reading(reading("b/1", number=2))))  # filtered out
    feed.deliver(delivery(encode_reading(reading("a/2", number=3))))
    change = await asyncio.wait_for(nxt, 5)
    assert change is not None
    assert (change["topic"], change["version"]) == ("a/2", 3)
    await stream.aclose()


async def test_stream_resumes_or_resyncs_a_client_that_fell_behind() -> None:
    feed = StateFeed(LiveState(log=ChangeLog(max_changes=4)), clock=lambda: NOW)
    for n in range(1, 4):
        feed.deliver(delivery(encode_reading(reading(f"t{n}", number=n))))
    resumed = feed.messages(since=1)
    got = await _take(resumed, 2)
    assert [m["version"] for m in got if m] == [2, 3]
    await resumed.aclose()
    for n in range(4, 20):  # a slow client's missed changes leave the log
        feed.deliver(delivery(encode_reading(reading(f"t{n}", number=n))))
    behind = feed.messages(since=3)
    (again,) = await _take(behind, 1)
    assert again is not None
    assert again["type"] == "resync"
    assert again["version"] == 19
    assert len(again["topics"]) == 19
    assert feed.stats.resyncs == 1
    await behind.aclose()


async def test_idle_stream_sends_keepalives_and_clients_are_bounded() -> None:
    feed = StateFeed(LiveState(), max_clients=1)
    stream = feed.messages(0, keepalive=0.01)
    assert await _take(stream, 1) == [None]
    await stream.aclose()
    assert feed.admit()
    assert not feed.admit()
    assert feed.stats.streams_refused == 1
    feed.leave()
    assert feed.admit()


# --- MQTT out, SSE, watch -----------------------------------------------------------------------


async def test_mqtt_out_keeps_the_latest_value_per_topic_bounded() -> None:
    out = MqttOut("mqtt://127.0.0.1:1", prefix="p/", max_pending=2)
    out.offer(reading("a", b"1"))
    out.offer(reading("a", b"2"))
    out.offer(reading("b", b"3"))
    out.offer(reading("c", b"4"))
    status = out.status()
    assert (status["pending"], status["coalesced"], status["dropped"]) == (2, 1, 1)
    assert parse_mqtt_url("mqtt://localhost") == ("localhost", 1883)
    for bad in ("http://x:1", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(MqttUrlError):
            parse_mqtt_url(bad)
    with pytest.raises(MqttUrlError, match="plain topic prefix"):
        MqttOut("mqtt://127.0.0.1:1", prefix="live/#")


def test_sse_events_parse_back_and_fill_the_watch_table() -> None:
    snap = {"type": "snapshot", "version": 2, "topics": [reading_row("a", 1)]}
    change = {"type": "change", "version": 3, **reading_row("b", "on")}
    remove = {"type": "remove", "version": 4, "topic": "a"}
    text = b"".join(sse_event(m) for m in (snap, None, change, remove)).decode()
    events = list(parse_sse(iter(text.split("\n"))))
    assert [(e, i) for e, i, _ in events] == [("snapshot", "2"), ("change", "3"), ("remove", "4")]
    view = TableState()
    for event, _, data in events[:2]:
        view.apply(event, data)
    assert set(view.rows) == {"a", "b"}
    view.apply(*events[2][::2])
    assert set(view.rows) == {"b"}
    assert view.version == 4
    assert view.changes == 2
    assert view.table("t").row_count == 1


def reading_row(topic: str, payload: Any) -> dict[str, Any]:
    return {
        "topic": topic,
        "payload_format": "json",
        "payload": payload,
        "device_ts": None,
        "received_ts": NOW,
        "gateway": "gw",
        "age": 0.5,
    }
