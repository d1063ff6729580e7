"""HOMP errors the store raises and the routes turn into HTTP answers.

One exception type with the HTTP status it maps to keeps the store free of web framework
imports (the simulator and benchmarks call it directly) while letting the routes answer
every refusal the same way: ``{"error": "what went wrong", "field": "$.json.path"}``.
"""

from __future__ import annotations


class HompError(Exception):
    """A request the HOMS refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class AdmissionRefusedError(HompError):
    """A closed overlay refused a join or refresh: 407 with ``{"overlay":{"overlay-id"}}``.

    The reference answers exactly this, and its peers key on the 407 status.
    """

    def __init__(self, overlay_id: str, reason: str) -> None:
        super().__init__(407, reason, "$.overlay.auth")
        self.overlay_id = overlay_id


def unknown_overlay(overlay_id: str) -> HompError:
    # 400, not 404: the reference answers 400 and its peers key on that.
    return HompError(400, f"no overlay with overlay-id {overlay_id!r}", "$.overlay.overlay-id")


def unknown_peer(overlay_id: str, peer_id: str) -> HompError:
    return HompError(
        400,
        f"peer {peer_id!r} is not a member of overlay {overlay_id!r} (join it first)",
        "$.peer.peer-id",
    )


def wrong_password() -> HompError:
    return HompError(400, "wrong peer password", "$.peer.auth.password")
