"""The 4-byte R2 frame prefix and the size and nesting limits (etri-2023-protocol.md §3.2).

A frame is ``version (0x01) | type (0x01) | header length L (u16, big-endian) | L bytes of
JSON header | payload``. Everything here works on plain buffers with offsets so that the
message decoder and the stream decoder share one set of checks and neither copies more than
the header it hands to the JSON parser.
"""

from __future__ import annotations

import struct
from typing import Final

from hp2p.wire.errors import FrameError, LimitExceeded

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_PAYLOAD",
    "MAX_HEADER",
    "MAX_INT",
    "PREFIX",
    "PREFIX_SIZE",
    "TYPE",
    "VERSION",
    "check_depth",
    "check_prefix",
]

VERSION: Final = 0x01
TYPE: Final = 0x01
PREFIX: Final = struct.Struct(">BBH")
PREFIX_SIZE: Final = PREFIX.size
MAX_HEADER: Final = 0xFFFF
"""The header length is a u16: the format itself cannot describe a longer header."""
DEFAULT_MAX_PAYLOAD: Final = 16 * 1024 * 1024
DEFAULT_MAX_DEPTH: Final = 32
"""Nesting levels allowed in the free-form extension header (the JSON in front of the data).

The header itself, ``hp2p`` object included, is typed and has a fixed shape (SCAN_TREE's
``path``, the deepest, needs 5); unknown keys in it are skipped by the parser, not built.
"""
MAX_INT: Final = 2**63 - 1
"""Sequences, tickets and lengths are Go ``int``/``int64`` on the reference peer."""

# Every byte except JSON quotes and brackets, for bytes.translate(delete=...).
_NOT_QUOTES_OR_BRACKETS: Final = bytes(range(256)).translate(None, b'"[]{}')


def check_prefix(buf: bytes | bytearray, start: int) -> int:
    """Validate the prefix at ``buf[start:start+4]`` and return the header length L.

    The caller has made sure four bytes are there.
    """
    version, frame_type, header_len = PREFIX.unpack_from(buf, start)
    if version != VERSION:
        raise FrameError(f"unsupported version 0x{version:02x} (expected 0x01)", "version")
    if frame_type != TYPE:
        raise FrameError(f"unsupported frame type 0x{frame_type:02x} (expected 0x01)", "type")
    if header_len == 0:
        raise FrameError("header length is 0; every frame carries a JSON header", "header-length")
    return int(header_len)


def check_depth(text: bytes | bytearray, limit: int, field: str) -> None:
    """Reject the JSON ``text`` if it nests deeper than ``limit``, before it is parsed.

    Parsing is recursive, so depth has to be bounded before the parser sees the input. The
    common case costs two ``count`` calls: fewer brackets than ``limit`` cannot nest deeper.
    Otherwise the brackets outside strings are reduced to a skeleton and innermost pairs are
    peeled off ``limit`` times; whatever is left is too deep (or not JSON at all). All of it
    runs in C-level bytes operations, never a Python loop per byte.
    """
    if text.count(b"{") + text.count(b"[") <= limit:
        return
    text = bytes(text)
    if b"\\" in text:
        # Escapes first: an escaped backslash, then an escaped quote, never ends a string.
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = text.translate(None, _NOT_QUOTES_OR_BRACKETS)
    # Adjacent quotes enclose (or separate) strings with no brackets in them: drop them.
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = b"".join(skeleton.split(b'"')[::2])
    for _ in range(limit):
        if not skeleton:
            return
        skeleton = skeleton.replace(b"[]", b"").replace(b"{}", b"")
    if skeleton:
        raise LimitExceeded(f"JSON nested deeper than {limit} levels (or unbalanced)", field)
