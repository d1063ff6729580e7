"""HOMS WebSocket messages against the ETRI signalling recordings, plus property tests."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hp2p.wire import signalling as sig
from hp2p.wire.errors import HeaderError, LimitExceeded, WireError
from recordings import SIGNALLING_RECORDING, load, needs
from wire_strategies import EDITS, for_struct, json_values, mutate

RECORDS = load(SIGNALLING_RECORDING)
needs_corpus = needs(SIGNALLING_RECORDING)

#: How the reference treated each client step (from its observable behaviour
#: and the recording notes).  ``None`` means ignored: hp2p raises WireError.
EXPECTED_CLASS: dict[str, type[Any] | None] = {
    "monitor_hello": sig.MonitorHello,
    "peer_hello_A": sig.PeerHello,
    "peer_hello_B": sig.PeerHello,
    "relay_offer_A_to_B": sig.Relay,
    "relay_answer_B_to_A": sig.Relay,
    "relay_candidate_A_to_B": sig.Relay,
    "relay_spoofed_fromid": sig.Relay,
    "relay_unknown_toid": sig.Relay,
    "relay_with_peer_id_key_not_forwarded": None,
    "message_without_toid_or_peer_id": None,
    "malformed_json": None,
    "relay_after_malformed_still_works": sig.Relay,
    "monitor_get_current_cost_map": sig.MonitorGet,
    "monitor_get_unknown_overlay": sig.MonitorGet,
    "monitor_get_without_overlay_id": None,
    "peer_bye_B": sig.PeerBye,
    "relay_to_departed_B": sig.Relay,
    "peer_hello_B_again": sig.PeerHello,
    "peer_hello_C_same_id": sig.PeerHello,
    "relay_to_reregistered_id": sig.Relay,
    "relay_after_close_of_registered_socket": sig.Relay,
}


def _client_steps() -> list[dict[str, Any]]:
    return [r for r in RECORDS if "socket" in r]


def _sent(record: dict[str, Any]) -> str:
    if record["send"] is None:
        return str(record["raw_send"])
    return json.dumps(record["send"])


@needs_corpus
def test_every_client_step_is_listed() -> None:
    assert {r["step"] for r in _client_steps()} == set(EXPECTED_CLASS)


@needs_corpus
@pytest.mark.parametrize("step", sorted(EXPECTED_CLASS))
def test_client_messages_classify_as_the_reference_did(step: str) -> None:
    record = next(r for r in _client_steps() if r["step"] == step)
    expected = EXPECTED_CLASS[step]
    if expected is None:
        with pytest.raises(WireError):
            sig.decode_client_message(_sent(record))
        return
    msg = sig.decode_client_message(_sent(record))
    assert type(msg) is expected
    # Round trip: what we would send is what the reference client sent.
    assert json.loads(sig.encode_client_message(msg)) == record["send"]


@needs_corpus
def test_relays_are_forwarded_unchanged() -> None:
    """What the reference delivered to the ``toid`` socket is exactly our forwarded form."""
    relays = 0
    for record in _client_steps():
        if EXPECTED_CLASS[record["step"]] is not sig.Relay:
            continue
        relay = sig.decode_client_message(_sent(record))
        assert isinstance(relay, sig.Relay)
        assert relay.toid == record["send"]["toid"]
        forwarded = json.loads(relay.to_bytes())
        delivered = [m for msgs in record["received"].values() for m in msgs]
        for message in delivered:
            assert forwarded == message
        relays += 1
    assert relays >= 9


@needs_corpus
def test_every_pushed_event_is_reproduced_key_for_key() -> None:
    seen: set[str] = set()
    for record in RECORDS:
        for message in record["received"].get("monitor", []):
            event = sig.decode_event(json.dumps(message))
            encoded = sig.encode_event(event)
            assert json.loads(encoded) == message, record["step"]
            assert list(json.loads(encoded)) == list(message), "key order differs"
            seen.add(f"{message['type']}/{message.get('action')}")
    assert seen == {
        "overlay/create",
        "overlay/remove",
        "peer/add_peer",
        "peer/delete_peer",
        "peer/update_connection",
        "peer/current_cost_map",
        "log/None",
    }


def test_events_built_by_hand_match_the_reference_shapes() -> None:
    assert json.loads(sig.encode_event(sig.OverlayEvent(overlay_id="o", action="create"))) == {
        "overlay_id": "o",
        "type": "overlay",
        "action": "create",
    }
    add = sig.AddPeerEvent(overlay_id="o", node=sig.NodeInfo(id="p", ticket_id=3))
    assert json.loads(sig.encode_event(add)) == {
        "overlay_id": "o",
        "type": "peer",
        "action": "add_peer",
        "node": {"id": "p", "ticket_id": 3},
    }
    gone = sig.DeletePeerEvent(overlay_id="o", peer_id="p")
    assert json.loads(sig.encode_event(gone))["action"] == "delete_peer"
    log = sig.LogEvent(overlay_id="o", peer_id="p", message="Overlay Join.")
    assert json.loads(sig.encode_event(log)) == {
        "overlay_id": "o",
        "peer_id": "p",
        "type": "log",
        "message": "Overlay Join.",
    }
    cost = sig.CostMap(
        overlay_id="o",
        data=sig.CostMapData(
            graph=[],
            nodes=[
                sig.CostMapNode(id="a", ticket_id=1, seeder=True),
                sig.CostMapNode(id="b", ticket_id=2),
            ],
            links=[sig.CostMapLink(source="b", target="a", primary=True)],
            directed=False,
            multigraph=True,
        ),
    )
    body = json.loads(sig.encode_event(cost))
    assert (body["type"], body["action"]) == ("peer", "current_cost_map")
    assert body["data"]["nodes"] == [
        {"id": "a", "ticket_id": 1, "seeder": True},
        {"id": "b", "ticket_id": 2},
    ]


# --------------------------------------------------------------------------
# hp2p extensions and validation
# --------------------------------------------------------------------------


def test_peer_hello_authentication_extension() -> None:
    raw = {"action": "hello", "peer-id": "p;1", "overlay-id": "o", "password": "pw"}
    hello = sig.decode_client_message(json.dumps(raw))
    assert isinstance(hello, sig.PeerHello)
    assert (hello.overlay_id, hello.password, hello.token) == ("o", "pw", None)
    assert json.loads(sig.encode_client_message(hello)) == raw
    plain = sig.PeerHello(peer_id="p;1")
    assert json.loads(sig.encode_client_message(plain)) == {"action": "hello", "peer-id": "p;1"}


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"action": "hello", "peer-id": 7}, "$.peer-id"),
        ({"action": "hello", "peer-id": ""}, "$.peer-id"),
        ({"action": "hello", "peer-id": "p", "password": 1}, "$.password"),
        ({"action": "join", "peer-id": "p"}, "$.action"),
        ({"server": "ui", "action": "subscribe"}, "$.action"),
        ({"server": "ui", "action": "get", "overlay_id": 3}, "$.overlay_id"),
        ({"toid": 5, "type": "offer"}, "$.toid"),
        ({"toid": "", "type": "offer"}, "$.toid"),
        ({"toid": "b", "fromid": ["a"]}, "$.fromid"),
        ({"toid": "b", "type": {"x": 1}}, "$.type"),
        ({"fromid": "a"}, "$"),
    ],
)
def test_bad_client_messages(message: dict[str, Any], field: str) -> None:
    with pytest.raises(HeaderError) as info:
        sig.decode_client_message(json.dumps(message))
    assert info.value.field == field


@pytest.mark.parametrize("raw", ["", "[]", "null", '"hello"', "{", b"\xff\xfe"])
def test_non_objects_are_refused(raw: str | bytes) -> None:
    with pytest.raises(WireError):
        sig.decode_client_message(raw)


def test_limits() -> None:
    with pytest.raises(LimitExceeded):
        sig.decode_client_message(b" " * (sig.MAX_MESSAGE_BYTES + 1))
    nested: Any = "x"
    for _ in range(sig.MAX_RELAY_DEPTH + 1):
        nested = [nested]
    with pytest.raises(LimitExceeded):
        sig.decode_client_message(json.dumps({"toid": "b", "extra": nested}))
    with pytest.raises(LimitExceeded):
        sig.decode_client_message(b'{"toid":"b","x":' + b"[" * 40_000 + b"]" * 40_000 + b"}")


def test_relay_builders_match_the_go_peer_shapes() -> None:
    desc = sig.SessionDescription(type="offer", sdp="v=0\r\n")
    offer = sig.Relay.sdp(fromid="a", toid="b", description=desc)
    assert json.loads(offer.to_bytes()) == {
        "fromid": "a",
        "toid": "b",
        "fromticketid": "",
        "type": "offer",
        "sdp": {"type": "offer", "sdp": "v=0\r\n"},
    }
    again = sig.decode_client_message(offer.to_bytes())
    assert isinstance(again, sig.Relay)
    assert again.session_description() == desc
    cand = sig.Relay.candidate(
        fromid="a", toid="b", candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host"
    )
    decoded = sig.decode_client_message(cand.to_bytes())
    assert decoded == cand
    assert isinstance(decoded, sig.Relay)
    assert decoded.session_description() is None


def test_relay_keeps_unknown_keys_and_reports_a_bad_sdp() -> None:
    raw = {"toid": "b", "fromid": "a", "type": "offer", "sdp": {"type": "offer"}, "x-hp2p": [1, 2]}
    relay = sig.decode_client_message(json.dumps(raw))
    assert isinstance(relay, sig.Relay)
    assert json.loads(relay.to_bytes()) == raw
    with pytest.raises(HeaderError) as info:
        relay.session_description()
    assert info.value.field == "$.sdp.sdp"


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "peer", "action": "dance", "overlay_id": "o"},
        {"type": "log", "overlay_id": "o"},
        {"type": ["x"], "action": "create"},
        {"type": "overlay", "action": "create", "overlay_id": 1},
    ],
)
def test_bad_events_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(WireError):
        sig.decode_event(json.dumps(raw))


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

CLIENT_MODELS = [sig.PeerHello, sig.PeerBye, sig.MonitorHello, sig.MonitorGet]
EVENT_MODELS = [
    sig.OverlayEvent,
    sig.AddPeerEvent,
    sig.DeletePeerEvent,
    sig.UpdateConnectionEvent,
    sig.LogEvent,
    sig.CostMap,
]


@pytest.mark.parametrize("model", CLIENT_MODELS, ids=lambda cls: cls.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_client_round_trip(model: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(for_struct(model))
    assert sig.decode_client_message(sig.encode_client_message(value)) == value


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda cls: cls.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_event_round_trip(model: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(for_struct(model))
    assert sig.decode_event(sig.encode_event(value)) == value


ROUTING_KEYS = {"server", "peer-id", "toid", "fromid", "type"}


@settings(max_examples=30)
@given(
    fromid=st.text(max_size=20),
    toid=st.text(min_size=1, max_size=20),
    kind=st.sampled_from(["offer", "answer", "candidate", "x-hp2p"]),
    extra=st.dictionaries(
        st.text(max_size=6).filter(lambda k: k not in ROUTING_KEYS),
        json_values(max_leaves=6),
        max_size=3,
    ),
)
def test_relay_round_trip(fromid: str, toid: str, kind: str, extra: dict[str, Any]) -> None:
    message = {**extra, "fromid": fromid, "toid": toid, "type": kind}
    relay = sig.decode_client_message(json.dumps(message))
    assert isinstance(relay, sig.Relay)
    assert json.loads(relay.to_bytes()) == message


def _only_wire_errors(decode: Any, raw: bytes) -> None:
    error: WireError | None = None
    try:
        decode(raw)
    except WireError as exc:
        error = exc
    assert error is None or error.reason


SEEDS = [
    b'{"action":"hello","peer-id":"p;1","overlay-id":"o","password":"x"}',
    b'{"fromid":"a","toid":"b","fromticketid":"","type":"offer","sdp":{"type":"offer","sdp":"v=0"}}',
    b'{"server":"ui","action":"get","overlay_id":"o"}',
    b'{"overlay_id":"o","peer_id":"p","type":"peer","action":"update_connection",'
    b'"links":[{"source":"p","target":"q","primary":true}]}',
    b'{"overlay_id":"o","type":"peer","action":"add_peer","node":{"id":"p","ticket_id":1}}',
]
DECODERS = [sig.decode_client_message, sig.decode_event]


@settings(max_examples=2000)
@given(decode=st.sampled_from(DECODERS), raw=st.binary(max_size=200))
def test_fuzz_random_bytes(decode: Any, raw: bytes) -> None:
    _only_wire_errors(decode, raw)


@settings(max_examples=2000)
@given(decode=st.sampled_from(DECODERS), seed=st.sampled_from(SEEDS), edits=EDITS)
def test_fuzz_mutated_messages(decode: Any, seed: bytes, edits: list[tuple[int, int, int]]) -> None:
    _only_wire_errors(decode, mutate(seed, edits))


@settings(max_examples=200)
@given(decode=st.sampled_from(DECODERS), value=json_values())
def test_fuzz_json_documents(decode: Any, value: Any) -> None:
    _only_wire_errors(decode, json.dumps(value).encode())
