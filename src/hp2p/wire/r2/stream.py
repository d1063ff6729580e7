"""Reassembling R2 frames from a byte stream (TCP), sans-IO.

On a stream nothing marks where a frame ends, so the decoder reads the 4-byte prefix, then the
header, and takes the payload length from the header (``ext-header-len + payload.length``,
etri-2023-protocol.md §3.2). It never buffers more than one frame plus one chunk: a payload
larger than ``max_payload`` is refused as soon as its header is read, before any of it arrives.

Contract: once ``feed`` has raised, the stream is out of step and cannot be trusted again;
every later ``feed`` raises too and the caller closes the connection. Messages that stood
before the bad frame in the same chunk are dropped with the stream, and the error says how
many. At end of stream call ``eof()``: it raises if the stream stopped inside a frame, so a
truncated last message is never dropped silently.
"""

from __future__ import annotations

from typing import Final

from hp2p.wire.errors import FrameError, WireError
from hp2p.wire.r2.codec import Header, build_message, parse_header, payload_length
from hp2p.wire.r2.framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_PAYLOAD,
    PREFIX_SIZE,
    check_prefix,
)
from hp2p.wire.r2.messages import Message

__all__ = ["StreamDecoder"]

_EMPTY: Final = b""


class StreamDecoder:
    """Feed it chunks as they are read; it returns the messages completed by each chunk.

    Example::

        decoder = StreamDecoder()
        for chunk in chunks:            # any split: a frame over many reads, many per read
            for message in decoder.feed(chunk):
                handle(message)
        decoder.eof()                   # raises if the stream ended inside a frame
    """

    __slots__ = (
        "_buf",
        "_error",
        "_frame_len",
        "_header",
        "_header_len",
        "max_depth",
        "max_payload",
    )

    def __init__(
        self, max_payload: int = DEFAULT_MAX_PAYLOAD, *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> None:
        if max_payload < 0 or max_depth < 1:
            raise ValueError("max_payload must be >= 0 and max_depth >= 1")
        self.max_payload = max_payload
        self.max_depth = max_depth
        self._buf = bytearray()
        self._header: Header | None = None  # parsed header of the frame at the buffer's front
        self._header_len = 0  # prefix + header bytes of that frame
        self._frame_len = 0  # the whole frame, payload included
        self._error: WireError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a returned message."""
        return len(self._buf)

    @property
    def error(self) -> WireError | None:
        """The error that broke the stream, if one did."""
        return self._error

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Message]:
        """Add ``chunk`` and return every message it completes, in order.

        Raises the ``WireError`` family; after that the decoder is unusable (see module doc).
        """
        if self._error is not None:
            raise FrameError(
                f"the stream already failed ({self._error}); close the connection",
                self._error.field,
            )
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise self._fail(FrameError(f"a chunk must be bytes, not {type(chunk).__name__}"), 0)
        if not chunk:
            return []
        buf = self._buf
        data: bytes | bytearray
        if buf:
            buf += chunk
            if len(buf) < self._frame_len:  # still inside a frame whose header we know
                return []
            data = buf
        else:
            data = chunk if type(chunk) is bytes else bytes(chunk)
        messages: list[Message] = []
        try:
            pos = self._drain(data, messages)
        except WireError as err:
            raise self._fail(err, len(messages)) from None
        if data is buf:
            del buf[:pos]
        elif pos < len(data):
            with memoryview(data) as view:
                self._buf = bytearray(view[pos:])
        return messages

    def eof(self) -> None:
        """The stream has ended: raise FrameError if it stopped inside a frame."""
        if self._error is not None:
            raise FrameError(f"the stream had failed: {self._error}", self._error.field)
        if self._buf:
            raise self._fail(
                FrameError(
                    f"the stream ended inside a frame ({len(self._buf)} bytes of it received)",
                    "payload" if self._header is not None else "header",
                ),
                0,
            )

    def _fail(self, err: WireError, dropped: int) -> WireError:
        """Remember the error, free the buffer, and say what was dropped with the stream."""
        if dropped:
            err = type(err)(
                f"{err.reason} ({dropped} whole message(s) before it in the same chunk "
                "were dropped with the stream)",
                err.field,
            )
        self._error = err
        self._buf = bytearray()
        self._header = None
        return err

    def _drain(self, data: bytes | bytearray, out: list[Message]) -> int:
        """Decode whole frames from the front of ``data``; return how many bytes they used.

        Each turn of the loop either consumes a frame (at least 5 bytes) or returns.
        """
        pos = 0
        end = len(data)
        while True:
            header = self._header
            if header is None:
                if end - pos < PREFIX_SIZE:
                    return pos
                header_len = PREFIX_SIZE + check_prefix(data, pos)
                if end - pos < header_len:
                    return pos
                header = parse_header(data[pos + PREFIX_SIZE : pos + header_len], self.max_depth)
                frame_len = header_len + payload_length(header, self.max_payload)
                self._header, self._header_len, self._frame_len = header, header_len, frame_len
            if end - pos < self._frame_len:
                return pos
            out.append(
                build_message(
                    header, data, pos + self._header_len, pos + self._frame_len, self.max_depth
                )
            )
            pos += self._frame_len
            self._header, self._header_len, self._frame_len = None, 0, 0
