"""HOMP (R1) wire models against the ETRI HOMS-2023 recordings, plus property tests."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homp_bodies import create, join, report
from hp2p.wire import homp
from hp2p.wire.errors import HeaderError, LimitExceeded, WireError
from recordings import HOMP_RECORDING, load, needs
from wire_strategies import EDITS, for_struct, json_values, mutate

RECORDS = load(HOMP_RECORDING)
needs_corpus = needs(HOMP_RECORDING)

REQUEST_MODEL: dict[tuple[str, str], type[Any]] = {
    ("POST", "/homs"): homp.CreateRequest,
    ("PUT", "/homs"): homp.ModifyRequest,
    ("DELETE", "/homs"): homp.RemoveRequest,
    ("POST", "/peer"): homp.JoinRequest,
    ("PUT", "/peer"): homp.RefreshRequest,
    ("DELETE", "/peer"): homp.LeaveRequest,
    ("POST", "/peer/report"): homp.ReportRequest,
    ("POST", "/api/HybridOverlayRemoval"): homp.AdminRemovalRequest,
}
RESPONSE_MODEL: dict[tuple[str, str], Any] = {
    ("POST", "/homs"): homp.CreateResponse,
    ("GET", "/homs"): list[homp.QueryItem],
    ("PUT", "/homs"): homp.ModifyResponse,
    ("DELETE", "/homs"): homp.OverlayRefResponse,
    ("POST", "/peer"): homp.JoinResponse,
    ("PUT", "/peer"): homp.RefreshResponse,
    ("DELETE", "/peer"): homp.OverlayRefResponse,
    ("POST", "/peer/report"): homp.OverlayRefResponse,
    ("POST", "/api/HybridOverlayRemoval"): homp.AdminRemovalResponse,
    ("GET", "/api/InitData"): homp.InitDataResponse,
    ("GET", "/api/OverlayCostMap"): homp.CostMap,
}

#: Recorded failures that are structural: the decoder itself must refuse them,
#: naming this field.
STRUCTURAL: dict[str, str] = {
    "create_missing_title": "$.overlay.title",
    "create_wrong_type": "$.overlay.type",
    "create_missing_admin_key": "$.overlay.auth.admin_key",
    "create_wrong_auth_type": "$.overlay.auth.type",
    "create_missing_auth_object": "$.overlay.auth",
    "create_missing_description": "$.overlay.description",
    "create_missing_heartbeat_interval": "$.overlay.heartbeat-interval",
    "create_bad_app_id": "$.overlay.app-id",
    "create_bad_recovery_by": "$.overlay.cr-policy.recovery-by",
    "create_no_overlay_object": "$.overlay",
    "modify_missing_admin_key": "$.overlay.auth.admin_key",
    "modify_empty_ownership": "$.ownership",
    "report_missing_status": "$.status",
    "join_missing_password": "$.peer.auth",
    "join_missing_address": "$.peer.address",
    "join_missing_sub_type": "$.overlay.sub-type",
    "refresh_missing_address": "$.peer.address",
    "admin_removal_missing_id": "$.overlay-id",
    "malformed_json_create": "body",
    "malformed_json_join": "body",
    "malformed_json_modify": "body",
    "malformed_json_remove": "body",
    "json_array_body_join": "$",
    "join_overlay_object_null": "$.overlay",
}
#: Recorded failures that need no server state but span fields: the decoder
#: accepts them and the model's semantic helper refuses them.
SEMANTIC: dict[str, str] = {
    "create_closed_without_key_or_list": "$.overlay.auth",
    "create_wrong_sub_type": "$.overlay.sub-type",
    "join_sub_type_mesh": "$.overlay.sub-type",
}


def _route(record: dict[str, Any]) -> tuple[str, str]:
    req = record["request"]
    return req["method"], req["path"].split("?", 1)[0]


def _request_bytes(record: dict[str, Any]) -> bytes | None:
    req = record["request"]
    if req.get("raw_body") is not None:
        return str(req["raw_body"]).encode()
    if req["body"] is None:
        return None
    return json.dumps(req["body"]).encode()


def _by_step(step: str) -> dict[str, Any]:
    return next(r for r in RECORDS if r["step"] == step)


# --------------------------------------------------------------------------
# Conformance corpus
# --------------------------------------------------------------------------


@needs_corpus
def test_corpus_covers_every_request_model() -> None:
    routes = {_route(r) for r in RECORDS if _request_bytes(r) is not None}
    assert set(REQUEST_MODEL) <= routes
    assert set(STRUCTURAL) | set(SEMANTIC) <= {r["step"] for r in RECORDS}


@needs_corpus
def test_every_successful_request_decodes_and_passes_semantic_checks() -> None:
    checked = 0
    for record in RECORDS:
        body = _request_bytes(record)
        if body is None or not 200 <= record["response"]["status"] < 300:
            continue
        model = homp.decode(body, REQUEST_MODEL[_route(record)])
        if hasattr(model, "validate_semantics"):
            model.validate_semantics()
        if "recovery=true" in record["request"]["path"]:
            model.validate_recovery()
        checked += 1
    assert checked >= 60


@needs_corpus
def test_stateful_failures_still_decode() -> None:
    """Wrong keys, unknown overlays, duplicates: the HOMS's business, not the codec's."""
    for record in RECORDS:
        body = _request_bytes(record)
        step = record["step"]
        if body is None or record["response"]["status"] < 400:
            continue
        if step in STRUCTURAL or step in SEMANTIC or _route(record) not in REQUEST_MODEL:
            continue
        homp.decode(body, REQUEST_MODEL[_route(record)])


@needs_corpus
@pytest.mark.parametrize("step", sorted(STRUCTURAL))
def test_structural_failures_are_refused_with_the_field(step: str) -> None:
    record = _by_step(step)
    body = _request_bytes(record)
    assert body is not None
    assert record["response"]["status"] >= 400
    with pytest.raises(WireError) as info:
        homp.decode(body, REQUEST_MODEL[_route(record)])
    assert info.value.field == STRUCTURAL[step]
    assert info.value.field in str(info.value)


@needs_corpus
@pytest.mark.parametrize("step", sorted(SEMANTIC))
def test_semantic_failures_are_refused_by_the_helper(step: str) -> None:
    record = _by_step(step)
    body = _request_bytes(record)
    assert body is not None
    model = homp.decode(body, REQUEST_MODEL[_route(record)])
    with pytest.raises(HeaderError) as info:
        model.validate_semantics()
    assert info.value.field == SEMANTIC[step]


@pytest.mark.parametrize("ticket", [-1, 0, 7])
def test_a_normal_join_takes_any_ticket_id_a_recovery_only_a_real_one(ticket: int) -> None:
    """The reference Go peer sends ``"ticket-id": -1`` on every normal join."""
    join = homp.decode_join_request(json.dumps(_join(**{"ticket-id": ticket})))
    assert join.peer.ticket_id == ticket
    if ticket >= 1:
        join.validate_recovery()
    else:
        with pytest.raises(HeaderError, match="ticket it recovers") as info:
            join.validate_recovery()
        assert info.value.field == "$.peer.ticket-id"


@needs_corpus
def test_recovery_join_without_ticket_is_refused() -> None:
    body = _request_bytes(_by_step("recovery_join_without_ticket"))
    assert body is not None
    join = homp.decode_join_request(body)
    with pytest.raises(WireError, match="ticket-id"):
        join.validate_recovery()


@needs_corpus
def test_every_successful_response_is_reproduced_key_for_key() -> None:
    checked = 0
    for record in RECORDS:
        status, body = record["response"]["status"], record["response"]["body"]
        if not 200 <= status < 300:
            continue
        model = homp.decode(json.dumps(body), RESPONSE_MODEL[_route(record)])
        again = json.loads(homp.encode(model))
        assert again == body, record["step"]
        checked += 1
    assert checked >= 75


@needs_corpus
def test_407_body_is_an_overlay_ref() -> None:
    bodies = [r["response"]["body"] for r in RECORDS if r["response"]["status"] == 407]
    assert bodies
    for body in bodies:
        assert (
            json.loads(homp.encode(homp.decode(json.dumps(body), homp.OverlayRefResponse))) == body
        )


# --------------------------------------------------------------------------
# Validation the reference lacks
# --------------------------------------------------------------------------


def _join(**peer: Any) -> dict[str, Any]:
    return join("o", "p;1", password="x", address="ws://127.0.0.1:1", **peer)


@pytest.mark.parametrize(
    ("overlay", "field"),
    [
        ({"heartbeat-interval": 0}, "$.overlay.heartbeat-interval"),
        ({"heartbeat-timeout": 86_401}, "$.overlay.heartbeat-timeout"),
        ({"heartbeat-interval": True}, "$.overlay.heartbeat-interval"),
        ({"heartbeat-interval": "10"}, "$.overlay.heartbeat-interval"),
        ({"title": "x" * 257}, "$.overlay.title"),
        ({"title": ""}, "$.overlay.title"),
        ({"description": "x" * 1025}, "$.overlay.description"),
        ({"owner-id": "x" * 257}, "$.overlay.owner-id"),
        ({"description": None, "type": "core"}, "$.overlay.description"),
        ({"auth": {"type": "open", "admin_key": "k" * 257}}, "$.overlay.auth.admin_key"),
        (
            {"auth": {"type": "closed", "admin_key": "k", "peerlist": "alice"}},
            "$.overlay.auth.peerlist",
        ),
        ({"sub-type": "star"}, "$.overlay.sub-type"),
        (
            {"cr-policy": {"mN_Cache": -1, "mD_Cache": 0, "recovery-by": "push"}},
            "$.overlay.cr-policy.mN_Cache",
        ),
        ({"delete-when-empty": "yes"}, "$.overlay.delete-when-empty"),
    ],
)
def test_create_limits(overlay: dict[str, Any], field: str) -> None:
    with pytest.raises(HeaderError) as info:
        homp.decode_create_request(json.dumps(create(**overlay)))
    assert info.value.field == field


def test_create_null_description_is_refused() -> None:
    body = create()
    body["overlay"]["description"] = None
    with pytest.raises(HeaderError) as info:
        homp.decode_create_request(json.dumps(body))
    assert info.value.field == "$.overlay.description"


def test_create_limits_are_inclusive() -> None:
    body = create(
        **{
            "title": "x" * 256,
            "description": "d" * 1024,
            "heartbeat-interval": 1,
            "heartbeat-timeout": 86_400,
        }
    )
    req = homp.decode_create_request(json.dumps(body))
    req.validate_semantics()
    assert req.overlay.heartbeat_timeout == 86_400


@pytest.mark.parametrize(
    ("overlay", "field"),
    [
        ({"heartbeat-timeout": 10}, "$.overlay.heartbeat-timeout"),
        ({"type": "sub", "sub-type": "mesh", "source-peer-id": "s"}, "$.overlay.parent-overlay-id"),
        ({"type": "sub", "sub-type": "tree", "parent-overlay-id": "c"}, "$.overlay.source-peer-id"),
        ({"parent-overlay-id": "c"}, "$.overlay.type"),
        ({"auth": {"type": "closed", "admin_key": "k", "peerlist": []}}, "$.overlay.auth"),
    ],
)
def test_create_semantics(overlay: dict[str, Any], field: str) -> None:
    req = homp.decode_create_request(json.dumps(create(**overlay)))
    with pytest.raises(HeaderError) as info:
        req.validate_semantics()
    assert info.value.field == field


def test_sub_overlay_extensions_round_trip() -> None:
    body = create(
        **{
            "type": "sub",
            "sub-type": "mesh",
            "parent-overlay-id": "core-1",
            "source-peer-id": "src;1",
            "delete-when-empty": True,
        }
    )
    req = homp.decode_create_request(json.dumps(body))
    req.validate_semantics()
    assert (req.overlay.parent_overlay_id, req.overlay.source_peer_id) == ("core-1", "src;1")
    assert req.overlay.delete_when_empty is True
    assert json.loads(homp.encode(req)) == body


def test_absent_optionals_are_omitted() -> None:
    req = homp.decode_create_request(json.dumps(create()))
    encoded = json.loads(homp.encode(req))["overlay"]
    for key in ("app-id", "cr-policy", "overlay-id", "delete-when-empty", "parent-overlay-id"):
        assert key not in encoded
    resp = homp.ModifyResponse(overlay=homp.ModifyResponseOverlay(overlay_id="o", owner_id="w"))
    assert json.loads(homp.encode(resp)) == {"overlay": {"overlay-id": "o", "owner-id": "w"}}


@pytest.mark.parametrize(
    ("peer", "field"),
    [
        ({"expires": 0}, "$.peer.expires"),
        ({"expires": 31 * 86_400 + 1}, "$.peer.expires"),
        ({"ticket-id": 10**20}, "$.peer.ticket-id"),
        ({"auth": {"password": ""}}, "$.peer.auth.password"),
        ({"capabilities": ["not", "an", "object"]}, "$.peer.capabilities"),
        ({"capabilities": {"a": "x" * 5000}}, "$.peer"),
        ({"capabilities": {"a": [[[[[[[[[1]]]]]]]]]}}, "$.peer"),
    ],
)
def test_join_limits(peer: dict[str, Any], field: str) -> None:
    with pytest.raises(HeaderError) as info:
        homp.decode_join_request(json.dumps(_join(**peer)))
    assert info.value.field == field


def test_join_capabilities_and_limits_accepted() -> None:
    caps = {"nat": "full-cone", "uplink-kbps": 4000, "prefers": ["a", "b"]}
    req = homp.decode_join_request(json.dumps(_join(expires=31 * 86_400, capabilities=caps)))
    assert req.peer.capabilities == caps
    assert req.peer.expires == 31 * 86_400


def test_ticket_token_is_optional_on_the_join_response() -> None:
    peer = homp.JoinResponsePeer(peer_id="p", ticket_id=1, expires=30)
    assert "ticket-token" not in json.loads(homp.encode(peer))
    signed = homp.JoinResponsePeer(peer_id="p", ticket_id=1, expires=30, ticket_token="t.s")
    assert json.loads(homp.encode(signed))["ticket-token"] == "t.s"


def test_oversized_body_is_refused_before_parsing() -> None:
    with pytest.raises(LimitExceeded) as info:
        homp.decode_join_request(b" " * (homp.MAX_BODY_BYTES + 1))
    assert info.value.field == "body"


def test_deep_nesting_is_a_wire_error() -> None:
    deep = (
        b'{"overlay":{"overlay-id":"o","type":"core","sub-type":"tree"},"peer":{"capabilities":'
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}}"
    )
    with pytest.raises(WireError):
        homp.decode_join_request(deep)


def test_query_params() -> None:
    params = homp.QueryParams.from_query({"title": "Closed with", "description": "x", "other": "y"})
    assert params.active_filter() == ("title", "Closed with")
    first = homp.QueryParams.from_query({"overlay-id": "a", "title": "b"})
    assert first.active_filter() == ("overlay-id", "a")
    assert homp.QueryParams.from_query({"app-id": "IoT", "peer-id": "p"}).active_filter() is None
    with pytest.raises(HeaderError) as info:
        homp.QueryParams.from_query({"app-id": "Video"})
    assert info.value.field == "$.app-id"
    with pytest.raises(HeaderError):
        homp.QueryParams.from_query({"overlay-id": "x" * 257})


def test_wire_error_str_names_the_field() -> None:
    with pytest.raises(WireError) as info:
        homp.decode_create_request(json.dumps({"overlay": {}}))
    assert str(info.value) == f"{info.value.reason} at {info.value.field}"
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

ALL_MODELS: list[type[msgspec.Struct]] = sorted(
    {
        obj
        for obj in vars(homp).values()
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == homp.__name__
    },
    key=lambda cls: cls.__name__,
)


def test_every_model_is_covered() -> None:
    assert len(ALL_MODELS) >= 40


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda cls: cls.__name__)
@settings(max_examples=30)
@given(data=st.data())
def test_round_trip(model: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(for_struct(model))
    if homp.nul_path(value) is not None:  # no HOMP text may hold NUL (issue #11)
        with pytest.raises(homp.WireError):
            homp.decode(homp.encode(value), model)
        return
    assert homp.decode(homp.encode(value), model) == value


DECODERS = [
    homp.decode_create_request,
    homp.decode_modify_request,
    homp.decode_remove_request,
    homp.decode_admin_removal_request,
    homp.decode_join_request,
    homp.decode_refresh_request,
    homp.decode_leave_request,
    homp.decode_report_request,
    homp.decode_query_response,
]


def _only_wire_errors(decoder: Any, body: bytes) -> None:
    """Anything but a WireError (with a reason) fails the test."""
    error: WireError | None = None
    try:
        decoder(body)
    except WireError as exc:
        error = exc
    assert error is None or error.reason


@settings(max_examples=2000)
@given(decoder=st.sampled_from(DECODERS), body=st.binary(max_size=300))
def test_fuzz_random_bytes(decoder: Any, body: bytes) -> None:
    _only_wire_errors(decoder, body)


SEEDS = [
    json.dumps(
        create(
            **{"app-id": "IoT", "cr-policy": {"mN_Cache": 1, "mD_Cache": 2, "recovery-by": "push"}}
        )
    ).encode(),
    json.dumps(_join(capabilities={"a": [1, {"b": None}]}, **{"ticket-id": 3})).encode(),
    json.dumps(
        {
            "overlay": {"overlay-id": "o", "owner-id": "w", "auth": {"admin_key": "k"}},
            "ownership": {"owner-id": "n"},
        }
    ).encode(),
    json.dumps(report("o", "p", "x", ["a"])).encode(),
]


@settings(max_examples=2000)
@given(decoder=st.sampled_from(DECODERS), seed=st.sampled_from(SEEDS), edits=EDITS)
def test_fuzz_mutated_bodies(decoder: Any, seed: bytes, edits: list[tuple[int, int, int]]) -> None:
    _only_wire_errors(decoder, mutate(seed, edits))


@settings(max_examples=200)
@given(decoder=st.sampled_from(DECODERS), value=json_values())
def test_fuzz_json_documents(decoder: Any, value: Any) -> None:
    _only_wire_errors(decoder, json.dumps(value).encode())


@pytest.mark.parametrize(
    ("peer_id", "words"),
    [
        ("a\nb", "may not contain control characters"),
        ("\x1b[2Jx", "may not contain control characters"),
        ("tab\there", "may not contain control characters"),
    ],
)
def test_a_join_with_a_peer_id_holding_control_characters_is_refused(
    peer_id: str, words: str
) -> None:
    """The HOMS refuses what ``hp2p peer --id`` refuses, in the same words."""
    body = json.dumps(join("o", peer_id))
    with pytest.raises(WireError, match=words):
        homp.decode_join_request(body)
    assert homp.peer_id_problem(peer_id) is not None


@pytest.mark.parametrize("peer_id", ["alice", "p;1", "日本-1", "x" * 256])
def test_printable_peer_ids_up_to_the_limit_are_accepted(peer_id: str) -> None:
    assert homp.peer_id_problem(peer_id) is None
    assert homp.decode_join_request(json.dumps(join("o", peer_id))).peer.peer_id == peer_id
