"""The gateway's pure parts: the ingest queue, back-off, event budget, broker URLs, filters."""

from __future__ import annotations

import contextlib
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.apps.iot.broker import BrokerError, parse_broker
from hp2p.apps.iot.gateway import GatewayError, check_filter
from hp2p.apps.iot.ingest import (
    MALFORMED_REASONS,
    Backoff,
    EventBudget,
    IngestQueue,
    classify,
    reading_bytes,
)
from hp2p.apps.iot.reading import (
    MAX_PAYLOAD,
    MAX_TOPIC,
    Reading,
    ReadingError,
    decode_reading,
    device_timestamp,
    encode_reading,
)


def test_readings_are_numbered_on_arrival_and_leave_in_order() -> None:
    q = IngestQueue("gw", 7, capacity=10)
    payload = json.dumps({"ts": 1_700_000_000.5}).encode()
    offers = [q.offer(f"s/{i}", payload, 1, 1_700_000_001.0) for i in range(3)]
    assert [o.reading.number for o in offers if o.reading] == [1, 2, 3]
    first = q.take()
    assert first is not None
    assert (first.topic, first.gateway, first.epoch, first.device_ts, first.qos) == (
        "s/0",
        "gw",
        7,
        1_700_000_000.5,
        1,
    )
    assert decode_reading(encode_reading(first)) == first
    q.published()
    assert q.status()["received"] == 3
    assert q.status()["published"] == 1
    assert q.status()["queued"] == 2


def test_a_full_queue_drops_the_oldest_and_reports_the_run() -> None:
    q = IngestQueue("gw", 1, capacity=2)
    assert not q.offer("t", b"1", 0, 1.0).full_began
    q.offer("t", b"2", 0, 1.0)
    third = q.offer("t", b"3", 0, 1.0)
    assert third.full_began
    assert [r.number for r in third.dropped] == [1]
    fourth = q.offer("t", b"4", 0, 1.0)
    assert not fourth.full_began
    assert [r.number for r in fourth.dropped] == [2]
    assert q.status()["dropping"] is True
    assert [r.number for r in (q.take(), q.take()) if r] == [3, 4]
    fifth = q.offer("t", b"5", 0, 1.0)
    assert fifth.full_ended == 2
    assert fifth.dropped == ()
    assert q.counters.dropped == 2
    assert q.last_number == 5


def test_a_full_queue_can_drop_the_newest_instead() -> None:
    q = IngestQueue("gw", 1, capacity=1, when_full="newest")
    q.offer("t", b"1", 0, 1.0)
    offer = q.offer("t", b"2", 0, 1.0)
    assert offer.dropped == (offer.reading,)
    assert offer.reading is not None
    assert offer.reading.number == 2
    taken = q.take()
    assert taken is not None
    assert taken.number == 1


def test_the_queue_is_bounded_in_bytes_too() -> None:
    big = b"x" * MAX_PAYLOAD
    q = IngestQueue("gw", 1, capacity=100, max_bytes=2 * reading_bytes_of(big) - 1)
    q.offer("t", b"small", 0, 1.0)
    q.offer("t", big, 0, 1.0)
    third = q.offer("t", big, 0, 1.0)  # two oldest go to make room for one large reading
    assert [r.number for r in third.dropped] == [1, 2]
    assert q.bytes <= q.max_bytes
    assert len(q) == 1
    q.take()
    assert q.bytes == 0
    with pytest.raises(ValueError, match="one reading of any size"):
        IngestQueue("gw", 1, capacity=1, max_bytes=1000)


def reading_bytes_of(payload: bytes, topic: str = "t") -> int:
    return reading_bytes(
        Reading(
            topic=topic,
            payload=payload,
            device_ts=None,
            received_ts=1.0,
            qos=0,
            gateway="gw",
            epoch=1,
            number=1,
        )
    )


def test_malformed_messages_get_no_number_and_are_counted_by_reason() -> None:
    q = IngestQueue("gw", 1, capacity=5)
    cases = {
        "payload_too_large": ("t", b"x" * (MAX_PAYLOAD + 1), 1),
        "topic_too_long": ("é" * (MAX_TOPIC // 2 + 1), b"", 1),
        "bad_topic": ("a/+/b", b"", 1),
        "bad_qos": ("t", b"", 3),
    }
    for reason, (topic, payload, qos) in cases.items():
        offer = q.offer(topic, payload, qos, 1.0)
        assert (offer.malformed, offer.reading) == (reason, None)
    assert q.offer("", b"", 0, 1.0).malformed == "bad_topic"
    assert q.offer("t", b"", 0, float("nan")).malformed == "invalid"  # a broken clock
    good = q.offer("t", b"", 0, 1.0).reading
    assert good is not None
    assert good.number == 1
    assert q.counters.malformed == 6
    assert q.counters.received == 7
    assert q.counters.malformed_by == {**dict.fromkeys(cases, 1), "bad_topic": 2, "invalid": 1}
    q.count_malformed("no such reason")  # an unknown reason is 'invalid': the table stays bounded
    assert set(q.counters.malformed_by) <= set(MALFORMED_REASONS)


def test_leaving_counts_what_was_never_published() -> None:
    q = IngestQueue("gw", 1, capacity=5)
    for _ in range(3):
        q.offer("t", b"", 0, 1.0)
    assert q.drop_rest() == 3
    assert q.counters.dropped == 3
    assert len(q) == 0


def test_bad_queue_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        IngestQueue("gw", 1, capacity=0)
    with pytest.raises(ValueError, match="oldest"):
        IngestQueue("gw", 1, capacity=1, when_full="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"1\.\.128"):
        IngestQueue("g" * 129, 1, capacity=1)


def test_backoff_grows_to_its_bound_and_resets() -> None:
    b = Backoff(0.2, 2.0, random.Random(1))
    delays = [b.next() for _ in range(10)]
    assert all(0.1 <= d <= 2.0 for d in delays)
    assert max(delays[5:]) > 1.0  # reached the ceiling region
    b.reset()
    assert b.next() <= 0.2
    with pytest.raises(ValueError, match="initial"):
        Backoff(0, 1)


def test_the_event_budget_allows_a_sample_and_counts_the_rest() -> None:
    budget = EventBudget(limit=2, interval=1.0)
    assert [budget.allow(0.0), budget.allow(0.1), budget.allow(0.2)] == [True, True, False]
    assert budget.allow(1.5)
    assert budget.suppressed == 1


def test_broker_urls() -> None:
    b = parse_broker("mqtt://127.0.0.1:1884", environ={})
    assert (b.host, b.port, b.tls, str(b)) == ("127.0.0.1", 1884, False, "mqtt://127.0.0.1:1884")
    assert parse_broker("mqtt://broker", environ={}).port == 1883
    s = parse_broker("mqtts://u%40x:p%3As@broker", environ={})
    assert (s.port, s.tls, s.username, s.password) == (8883, True, "u@x", "p:s")
    assert "p:s" not in str(s)
    assert "tls_context" in s.client_kwargs()
    env = parse_broker("mqtt://u@h", environ={"HP2P_MQTT_PASSWORD": "secret"})
    assert env.client_kwargs()["password"] == "secret"
    assert parse_broker("mqtt://h", environ={"HP2P_MQTT_PASSWORD": "x"}).password is None
    for bad, message in [
        ("http://h:1", "mqtt://"),
        ("mqtt://:1883", "no host"),
        ("mqtt://h:99999", "bad MQTT broker URL"),
        ("mqtt://h/path", "path"),
    ]:
        with pytest.raises(BrokerError, match=message):
            parse_broker(bad, environ={})


def test_topic_filters() -> None:
    for good in ["sensors/#", "#", "a/+/c", "+", "a/b"]:
        assert check_filter(good) == good
    for bad in ["", "a/#/b", "a#", "a/b+", "x" * (MAX_TOPIC + 1), "a\0", "a/\udcff"]:
        with pytest.raises(GatewayError):
            check_filter(bad)


@given(
    topic=st.text(max_size=300),
    payload=st.binary(max_size=2000) | st.builds(lambda n: b"{" * n, st.integers(0, 70_000)),
    qos=st.integers(-2, 5),
    received=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_mqtt_message_is_a_valid_reading_or_a_counted_malformed_one(
    topic: str, payload: bytes, qos: int, received: float
) -> None:
    q = IngestQueue("gw", 1, capacity=1)
    q.offer("t", b"", 0, 1.0)  # the queue is full: every good offer also drops one
    offer = q.offer(topic, payload, qos, received)
    c = q.counters
    assert c.received == 2
    if offer.reading is None:
        assert offer.malformed in MALFORMED_REASONS
        assert c.malformed == 1
    else:
        assert decode_reading(encode_reading(offer.reading)) == offer.reading
        assert c.dropped == 1
        assert offer.reading.number == 2
    assert classify(topic, payload, qos) in (None, *MALFORMED_REASONS)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["ts", "value", "x"]), json_values) | json_values)
def test_device_timestamps_come_from_any_json_without_error(doc: object) -> None:
    data = json.dumps(doc).encode()
    ts = device_timestamp(data)
    assert ts is None or 0 < ts < 1e11
    assert device_timestamp(data[: len(data) // 2]) is None or data.startswith(b"{")


@given(st.binary(max_size=500))
def test_decoding_arbitrary_bytes_is_a_reading_or_a_reading_error(data: bytes) -> None:
    with contextlib.suppress(ReadingError):
        decode_reading(data)
    assert device_timestamp(data) is None or data.startswith(b"{")


@given(st.text(max_size=100))
def test_any_broker_url_parses_or_says_why(url: str) -> None:
    try:
        b = parse_broker(url, environ={})
    except BrokerError as exc:
        message = str(exc)
        assert "mqtt" in message
    else:
        assert 0 <= b.port <= 65535
        assert b.host


@given(st.text(max_size=300))
def test_any_topic_filter_is_accepted_or_refused_with_a_reason(topic: str) -> None:
    try:
        assert check_filter(topic) == topic
    except GatewayError as exc:
        reason = str(exc)
        assert "topic filter" in reason


def test_names_that_are_not_utf8_are_refused_with_a_reason() -> None:
    from hp2p.apps.iot.gateway import Gateway
    from hp2p.apps.iot.sensor import SensorError, SensorPlan
    from hp2p.peer.errors import SettingsError
    from hp2p.peer.settings import NodeSettings

    with pytest.raises(BrokerError, match="invalid host name"):
        parse_broker("mqtt://h\udcff:1", environ={})
    with pytest.raises(SensorError, match="UTF-8"):
        SensorPlan(prefix="a\udcff")
    # the peer settings refuse such a peer-id before a gateway is made of them
    with pytest.raises(SettingsError, match="UTF-8"):
        NodeSettings(homs="http://127.0.0.1:9", create="x", peer_id="gw\udcff")
    node = NodeSettings(homs="http://127.0.0.1:9", create="x", peer_id="gw1")
    with pytest.raises(GatewayError, match="not valid UTF-8"):
        Gateway(node, broker="mqtt://127.0.0.1:9", topics=["a"], client_id="c\udcff")


def test_events_for_a_person_are_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    from hp2p.apps.iot.gateway import HumanEvents

    show = HumanEvents()
    queue = IngestQueue("gw1", 1, capacity=3)
    queue.offer("t", b"", 0, 1.0)
    status = {**queue.status(), "mqtt_connected": False, "tree": "attached", "t": 1.0}
    show("status", status)
    show("mqtt_lost", {"mqtt": "mqtt://h:1883", "reason": "gone", "retry_in": 0.2, "t": 1.0})
    assert capsys.readouterr().out.splitlines() == [
        "hp2p iot gateway: received=1 published=0 dropped=0 malformed=0 reconnects=0 queued=1 "
        "mqtt=down tree=attached",
        "hp2p iot gateway: mqtt_lost mqtt=mqtt://h:1883 reason=gone retry_in=0.2",
    ]
