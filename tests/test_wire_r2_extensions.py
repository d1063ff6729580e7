"""hp2p's extension fields (the ``"hp2p"`` object): typed, bounded, checked when decoded.

A wrong or oversized value is a ``HeaderError`` naming the field's JSON path, raised by the
decoder like any other malformed input, so the peer core only ever reads typed attributes. A
reference peer's frame (no ``hp2p`` object) and unknown keys inside ``hp2p`` are accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import msgspec
import msgspec.inspect as mi
import pytest

from hp2p.wire import r2
from hp2p.wire.errors import HeaderError
from hp2p.wire.r2 import schema

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-r2.md"
EXTENSIONS = [
    r2.HelloExt,
    r2.EstabExt,
    r2.SetPrimaryExt,
    r2.SetPrimaryResponseExt,
    r2.BroadcastExt,
    r2.OriginExt,
    r2.HeartbeatExt,
    r2.ReleaseExt,
]


def frame(header: bytes, payload: bytes = b"") -> bytes:
    return b"\x01\x01" + len(header).to_bytes(2, "big") + header + payload


def with_hp2p(code: str, hp2p: bytes) -> bytes:
    """A minimal valid frame of the message that carries this extension, with ``hp2p`` in it."""
    params = {
        "hello": b'{"req-code":1,"req-params":{"operation":{"overlay-id":"o"},'
        b'"peer":{"peer-id":"p","address":"a","ticket-id":1},"hp2p":%s}}',
        "estab": b'{"req-code":2,"req-params":{"operation":{"overlay-id":"o"},'
        b'"peer":{"peer-id":"p","ticket-id":1},"hp2p":%s}}',
        "set_primary": b'{"req-code":4,"req-params":{"hp2p":%s}}',
        "primary_yes": b'{"rsp-code":4200,"rsp-params":{"hp2p":%s}}',
        "release": b'{"req-code":7,"req-params":{"hp2p":%s}}',
        "heartbeat": b'{"req-code":8,"req-params":{"hp2p":%s}}',
    }
    if code == "broadcast":
        header = (
            b'{"req-code":6,"req-params":{"operation":{"ack":false,"candidate-path":false},'
            b'"peer":{"peer-id":"s","sequence":1},"payload":{"length":1},"ext-header-len":2,'
            b'"hp2p":%s}}' % hp2p
        )
        return frame(header, b"{}x")
    return frame(params[code] % hp2p)


BAD = [
    # (message, hp2p object, the field the error names)
    ("hello", b'{"up":64}', "$.req-params.hp2p.up"),
    ("hello", b'{"up":-1}', "$.req-params.hp2p.up"),
    ("hello", b'{"up":true}', "$.req-params.hp2p.up"),
    ("hello", b'{"down":"3"}', "$.req-params.hp2p.down"),
    ("hello", b'{"attempt":1.5}', "$.req-params.hp2p.attempt"),
    ("hello", b'{"attempt":"' + b"x" * 256 + b'"}', "$.req-params.hp2p.attempt"),
    ("hello", b'{"displace":1}', "$.req-params.hp2p.displace"),
    ("hello", b'{"cpm":"yes"}', "$.req-params.hp2p.cpm"),
    ("hello", b'{"mesh":2}', "$.req-params.hp2p.mesh"),
    ("hello", b'{"standby":true}', "$.req-params.hp2p.standby"),
    ("estab", b'{"address":7}', "$.req-params.hp2p.address"),
    ("estab", b'{"address":"' + b"a" * 1025 + b'"}', "$.req-params.hp2p.address"),
    ("estab", b'{"depth":1000000}', "$.req-params.hp2p.depth"),
    ("estab", b'{"displace":null}', "$.req-params.hp2p.displace"),
    ("set_primary", b'{"recovery":"yes"}', "$.req-params.hp2p.recovery"),
    ("set_primary", b'{"since":-0.5}', "$.req-params.hp2p.since"),
    ("set_primary", b'{"since":1e400}', "$.req-params.hp2p.since"),
    ("set_primary", b'{"since":"1"}', "$.req-params.hp2p.since"),
    ("primary_yes", b'{"depth":-1}', "$.rsp-params.hp2p.depth"),
    ("broadcast", b'{"recovered":1}', "$.req-params.hp2p.recovered"),
    ("release", b'{"reason":["x"]}', "$.req-params.hp2p.reason"),
    ("heartbeat", b'{"depth":"x"}', "$.req-params.hp2p.depth"),
    ("heartbeat", b'{"slot":false}', "$.req-params.hp2p.slot"),
    ("heartbeat", b'{"heads":[1]}', "$.req-params.hp2p.heads"),
    ("heartbeat", b'{"heads":{"s":-1}}', "$.req-params.hp2p.heads[...]"),
    ("heartbeat", b'{"heads":{"s":"x"}}', "$.req-params.hp2p.heads[...]"),
    ("heartbeat", b'{"heads":{"":1}}', "$.req-params.hp2p.heads"),
    ("heartbeat", b'{"heads":{"' + b"s" * 257 + b'":1}}', "$.req-params.hp2p.heads"),
    ("heartbeat", b"[]", "$.req-params.hp2p"),
    ("heartbeat", b'"depth"', "$.req-params.hp2p"),
]


@pytest.mark.parametrize(("message", "hp2p", "field"), BAD)
def test_a_mistyped_or_out_of_bounds_field_is_refused_naming_it(
    message: str, hp2p: bytes, field: str
) -> None:
    with pytest.raises(HeaderError) as info:
        r2.decode(with_hp2p(message, hp2p))
    assert info.value.field == field
    assert info.value.reason


def test_a_heads_map_longer_than_the_bound_is_refused() -> None:
    """A remote cannot make a peer build a huge map: the length is checked while parsing."""
    heads = b",".join(b'"s%d":1' % i for i in range(schema.MAX_HEADS + 1))
    with pytest.raises(HeaderError) as info:
        r2.decode(with_hp2p("heartbeat", b'{"heads":{' + heads + b"}}"))
    assert info.value.field == "$.req-params.hp2p.heads"
    assert "length" in info.value.reason
    ok = b",".join(b'"s%d":1' % i for i in range(schema.MAX_HEADS))
    msg = r2.decode(with_hp2p("heartbeat", b'{"heads":{' + ok + b"}}"))
    assert isinstance(msg, r2.Heartbeat)
    assert len(msg.hp2p.heads) == schema.MAX_HEADS


def test_a_bad_key_is_named_with_its_map() -> None:
    with pytest.raises(HeaderError) as info:
        r2.decode(with_hp2p("heartbeat", b'{"heads":{"":1}}'))
    assert "key" in info.value.reason
    assert "`" not in info.value.field


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("hello", r2.Hello("o", "p", "a", 1, hp2p=r2.HelloExt(up=2))),
        ("estab", r2.Estab("o", "p", 1, hp2p=r2.EstabExt(depth=0))),
        ("heartbeat", r2.Heartbeat(hp2p=r2.HeartbeatExt(heads={"s": 4}))),
    ],
)
def test_unknown_keys_inside_hp2p_are_ignored(message: str, expected: r2.Message) -> None:
    """Forward compatibility: a newer peer's field is skipped, the known ones still read."""
    known = msgspec.json.encode(expected.hp2p)
    hp2p = b'{"future":{"deep":[1,{"a":null}]},"sig":"x",' + known[1:]
    assert r2.decode(with_hp2p(message, hp2p)) == expected


def test_unknown_keys_are_not_forwarded() -> None:
    """Documented: the typed object has no place for them, so a relayed copy drops them."""
    msg = r2.decode(with_hp2p("hello", b'{"up":2,"future":1}'))
    assert isinstance(msg, r2.Hello)
    assert b"future" not in r2.encode(msg)


@pytest.mark.parametrize(
    "message", ["hello", "estab", "set_primary", "primary_yes", "release", "heartbeat"]
)
@pytest.mark.parametrize("hp2p", [b"{}", b"null"])
def test_an_empty_or_null_hp2p_object_reads_as_nothing_set(message: str, hp2p: bytes) -> None:
    msg = r2.decode(with_hp2p(message, hp2p))
    assert msg.hp2p == type(msg.hp2p)()


def test_a_reference_frame_holds_the_shared_empty_extension() -> None:
    """No ``hp2p`` object: every field at its default, and nothing is written back."""
    broadcast = r2.decode(r2.encode(r2.BroadcastData("s", 1, b"x")))
    assert isinstance(broadcast, r2.BroadcastData)
    assert broadcast.hp2p is r2.LIVE
    assert not broadcast.hp2p.recovered
    heartbeat = r2.decode(frame(b'{"req-code":8}'))
    assert heartbeat == r2.Heartbeat()
    assert isinstance(heartbeat, r2.Heartbeat)
    assert heartbeat.hp2p.depth is None
    assert heartbeat.hp2p.heads == {}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (r2.Heartbeat(hp2p=r2.HeartbeatExt()), b'{"req-code":8}'),
        (r2.SetPrimary(hp2p=r2.SetPrimaryExt()), b'{"req-code":4}'),
        (r2.SetPrimaryResponse(hp2p=r2.SetPrimaryResponseExt()), b'{"rsp-code":4200}'),
        (
            r2.Heartbeat(hp2p=r2.HeartbeatExt(depth=0, heads={})),
            b'{"req-code":8,"req-params":{"hp2p":{"depth":0}}}',
        ),
        (
            r2.SetPrimary(hp2p=r2.SetPrimaryExt(recovery=True, displace=True, since=2.5)),
            b'{"req-code":4,"req-params":{"hp2p":{"recovery":true,"displace":true,"since":2.5}}}',
        ),
        (
            r2.Release(hp2p=r2.ReleaseExt(reason="full")),
            b'{"req-code":7,"req-params":{"operation":{"ack":false},"hp2p":{"reason":"full"}}}',
        ),
    ],
)
def test_fields_at_their_default_are_not_written(message: r2.Message, expected: bytes) -> None:
    """The bytes hp2p wrote when the extensions were dicts: only the fields that are set."""
    assert r2.encode(message)[4:] == expected


def test_hello_extension_keys_keep_the_order_hp2p_always_wrote() -> None:
    climbing = r2.HelloExt(up=0, attempt=3, displace=True, down=5)
    assert msgspec.json.encode(climbing) == b'{"up":0,"attempt":3,"displace":true,"down":5}'
    refill = r2.HelloExt(up=1, attempt="cpm-1-0.500", cpm=True)
    assert msgspec.json.encode(refill) == b'{"up":1,"attempt":"cpm-1-0.500","cpm":true}'
    assert msgspec.json.encode(r2.HelloExt(mesh=1, standby=1)) == b'{"mesh":1,"standby":1}'
    estab = r2.EstabExt(address="tcp://a:1", depth=2, displace=True)
    assert msgspec.json.encode(estab) == b'{"address":"tcp://a:1","depth":2,"displace":true}'


@pytest.mark.parametrize(
    "message",
    [
        r2.Heartbeat(hp2p={"depth": 2}),  # the old dict form
        r2.Heartbeat(hp2p=r2.HelloExt(up=1)),  # another message's
        r2.Heartbeat(hp2p=r2.HeartbeatExt(depth=-1)),
        r2.Hello("o", "p", "a", 1, hp2p=r2.HelloExt(up=99)),
        r2.Release(hp2p=r2.ReleaseExt(reason="x" * (schema.MAX_TEXT + 1))),
        r2.BroadcastData("s", 1, b"", hp2p=r2.BroadcastExt(recovered="yes")),
    ],
)
def test_encode_refuses_an_extension_no_receiver_would_accept(message: r2.Message) -> None:
    with pytest.raises(HeaderError):
        r2.encode(message)


def test_every_extension_is_frozen_and_optional() -> None:
    """Frozen: the empty default is shared. Optional: a reference frame decodes."""
    for cls in EXTENSIONS:
        empty = cls()
        assert msgspec.json.encode(empty) == b"{}"
        with pytest.raises(AttributeError):
            setattr(empty, msgspec.structs.fields(cls)[0].name, None)


def test_docs_list_every_extension_field() -> None:
    """docs/wire-r2.md has one table row per field, naming every message that carries it."""
    rows: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `(\w+)` \| ([^|]+) \|", line)
        if match:
            rows.setdefault(match.group(1), set()).update(re.findall(r"`(\w+)`", match.group(2)))
    carriers: dict[str, set[str]] = {}
    for message in (*get_args(r2.Request), *get_args(r2.Response)):
        info = mi.type_info(message)
        assert isinstance(info, mi.StructType)
        for f in info.fields:
            if f.name == "hp2p":
                assert isinstance(f.type, mi.StructType)
                assert f.type.cls in EXTENSIONS
                for ext_field in msgspec.structs.fields(f.type.cls):
                    carriers.setdefault(ext_field.name, set()).add(message.__name__)
    assert set(carriers) == {f.name for cls in EXTENSIONS for f in msgspec.structs.fields(cls)}
    for name, messages in carriers.items():
        assert name in rows, f"docs/wire-r2.md has no row for hp2p field {name!r}"
        assert rows[name] == messages, f"{name!r}: the row names {rows[name]}, not {messages}"
