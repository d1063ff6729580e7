"""Hypothesis strategies derived from msgspec model metadata.

Deriving them from ``msgspec.inspect`` (rather than writing one strategy per
model by hand) means a new field or a changed limit is exercised by the round
trip tests automatically, and generated values always respect the model's own
declared bounds.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

_MAX_TEXT = 24
_MAX_LIST = 4
_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=8)


def _text(t: mi.StrType) -> st.SearchStrategy[str]:
    lo = t.min_length or 0
    hi = t.max_length if t.max_length is not None else _MAX_TEXT
    if t.pattern is not None:  # e.g. a source-key: strings of the pattern, within the bounds
        return st.from_regex(t.pattern, fullmatch=True).filter(lambda v: lo <= len(v) <= hi)
    # Mostly short strings, sometimes exactly at the limit.
    short = st.text(min_size=lo, max_size=max(lo, min(hi, _MAX_TEXT)))
    return short | st.text(min_size=hi, max_size=hi) if hi <= 2048 else short


def _int(t: mi.IntType) -> st.SearchStrategy[int]:
    lo = t.ge if t.ge is not None else -(2**53)
    hi = t.le if t.le is not None else 2**53
    return st.integers(lo, hi)


def _float(t: mi.FloatType) -> st.SearchStrategy[float]:
    lo = t.ge if t.ge is not None else t.gt
    hi = t.le if t.le is not None else t.lt
    return st.floats(
        lo,
        hi,
        exclude_min=t.ge is None and t.gt is not None,
        exclude_max=t.le is None and t.lt is not None,
        allow_nan=False,
        allow_infinity=False,
    )


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    """A strategy producing valid Python values for one msgspec type."""
    if isinstance(t, mi.StructType):
        return for_struct(t.cls)
    if isinstance(t, mi.StrType):
        return _text(t)
    if isinstance(t, mi.IntType):
        return _int(t)
    if isinstance(t, mi.FloatType):
        return _float(t)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.BytesType):  # signatures, nonces, hashes (fixed lengths)
        return st.binary(min_size=t.min_length or 0, max_size=min(t.max_length or 64, 64))
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of([for_type(x) for x in t.types])
    if isinstance(t, mi.ListType):
        hi = min(t.max_length if t.max_length is not None else _MAX_LIST, _MAX_LIST)
        return st.lists(for_type(t.item_type), max_size=hi)
    if isinstance(t, mi.DictType):  # typed keys and values (hp2p heads); dict[str, Any] too
        keys = st.text(max_size=8) if _unbounded_str(t.key_type) else for_type(t.key_type)
        hi = min(t.max_length if t.max_length is not None else _MAX_LIST, _MAX_LIST)
        return st.dictionaries(
            keys, for_type(t.value_type), min_size=t.min_length or 0, max_size=hi
        )
    if isinstance(t, mi.AnyType):
        return _JSON_SCALARS
    raise NotImplementedError(f"no strategy for {t!r}")


def _unbounded_str(t: mi.Type) -> bool:
    return isinstance(t, mi.StrType) and t.max_length is None and t.pattern is None


@cache
def for_struct(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Valid instances of ``cls``; instances its ``__post_init__`` refuses are skipped."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = {f.name: for_type(f.type) for f in info.fields}

    def build(kwargs: dict[str, Any]) -> Any:
        try:
            return cls(**kwargs)
        except ValueError:
            return None

    return st.fixed_dictionaries(fields).map(build).filter(lambda x: x is not None)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Arbitrary JSON documents, to feed decoders structurally valid garbage."""
    return st.recursive(
        _JSON_SCALARS | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (op, position, byte) edits: 0 flip, 1 insert, 2 delete, 3 truncate."""
    buf = bytearray(data)
    for op, pos, value in edits:
        if not buf:
            buf.append(value)
            continue
        i = pos % len(buf)
        if op == 0:
            buf[i] = value
        elif op == 1:
            buf.insert(i, value)
        elif op == 2:
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=6
)
