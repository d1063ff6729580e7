"""Peer information registrar (PIR FE, Q.4100 §7.3.2.1).

What a peer says about itself at join (its address or addresses and the optional hp2p
``capabilities`` object) is kept in its own table keyed by peer-id, apart from overlay
membership: it outlives a leave and is shared by every overlay the peer is in. The store
writes it inside the join transaction (``HomsStore._register``); this module is the read
side used by the status routes.
"""

from __future__ import annotations

from typing import Any

from hp2p.homs.store import HomsStore


async def lookup(store: HomsStore, peer_id: str) -> dict[str, Any] | None:
    """The registered information of ``peer_id``, or ``None`` if it never joined."""
    return await store.peer_info(peer_id)
