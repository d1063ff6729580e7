"""The one exception family every hp2p wire decoder raises.

Decoders sit on trust boundaries (HTTP bodies, WebSocket frames, peer TCP
streams).  Callers must be able to catch *one* type and turn it into a 4xx
answer or a closed connection, and the message must point at the offending
field so that the remote side can fix its request.  Subclassing
:class:`ValueError` keeps ``except ValueError`` handlers working.
"""

from __future__ import annotations

__all__ = ["FrameError", "HeaderError", "LimitExceeded", "WireError"]


class WireError(ValueError):
    """Input that cannot be accepted as a protocol message.

    ``reason`` is a human sentence without the location; ``field`` is where the
    problem is (a JSON path such as ``$.overlay.title`` or a framing element such
    as ``header-length``) or ``None`` when the input as a whole is at fault.
    """

    reason: str
    field: str | None

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(reason, field)

    def __str__(self) -> str:
        if self.field is None:
            return self.reason
        return f"{self.reason} at {self.field}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, field={self.field!r})"


class FrameError(WireError):
    """The framing is wrong: bad length prefix, truncated or trailing bytes."""


class HeaderError(WireError):
    """The JSON header (or body) is not valid JSON or has bad or missing fields."""


class LimitExceeded(FrameError):  # noqa: N818 - name fixed by the shared contract
    """A size, count or nesting limit was exceeded; the input was not processed."""
