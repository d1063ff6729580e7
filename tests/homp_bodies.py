"""HOMP request bodies the tests send, as plain JSON objects with the ETRI-2023 field names.

Every HOMS test needs an overlay and members; these build the usual ones (an open CoreTree,
owner ``owner``, admin key ``admin``; a member whose password is ``pw``), and a test passes
only what it cares about.
"""

from __future__ import annotations

from typing import Any


def create(overlay_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """``POST /homs``. ``fields`` are overlay keys as sent (``**{"heartbeat-interval": 1}``)
    that replace or add to the usual ones; a key given as None is left out (so is the id)."""
    body: dict[str, Any] = {
        "overlay-id": overlay_id,
        "title": "t",
        "type": "core",
        "sub-type": "tree",
        "owner-id": "owner",
        "description": "d",
        "heartbeat-interval": 10,
        "heartbeat-timeout": 15,
        "auth": {"type": "open", "admin_key": "admin"},
        # Most tests are about something else than credentials: keyless joins admitted.
        # tests/test_homs_credentials.py passes security="credentials" (or None: the default).
        "security": "reference-compat",
        **fields,
    }
    if body["type"] == "sub" and "auth" not in fields:
        # the usual parent is one of these overlays: present its owner's consent
        body["auth"] = {**body["auth"], "parent-admin-key": "admin"}
    return {"overlay": {key: value for key, value in body.items() if value is not None}}


def join(
    overlay_id: str,
    peer_id: str,
    *,
    type: str = "core",
    sub_type: str = "tree",
    access_key: str | None = None,
    password: str = "pw",
    address: str = "tcp://127.0.0.1:9",
    **peer: Any,
) -> dict[str, Any]:
    """``POST /peer``; ``peer`` are more peer keys as sent (``expires``, ``capabilities`` …)."""
    overlay: dict[str, Any] = {"overlay-id": overlay_id, "type": type, "sub-type": sub_type}
    if access_key is not None:
        overlay["auth"] = {"access_key": access_key}
    member = {"peer-id": peer_id, "address": address, "auth": {"password": password}, **peer}
    return {"overlay": overlay, "peer": member}


def report(overlay_id: str, peer_id: str, password: str, primary: list[str]) -> dict[str, Any]:
    """``POST /peer/report``: ``primary`` are the peer's primary paths, no candidates."""
    return {
        "overlay": {"overlay-id": overlay_id},
        "peer": {"peer-id": peer_id, "auth": {"password": password}},
        "status": {
            "num_primary": len(primary),
            "num_out_candidate": 0,
            "num_in_candidate": 0,
            "costmap": {"primary": primary, "outgoing_candidate": [], "incoming_candidate": []},
        },
    }
