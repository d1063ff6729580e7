"""The expiry sweep (PSM FE, Q.4100 §7.3.2.2): peers that stop refreshing are removed.

Deadlines live in the database (``peer.expires_at``), so the sweep holds no state: after a
restart it continues where the previous process stopped, and with several HOMS processes
on one PostgreSQL each may sweep; the deletion statement makes sure a peer goes only once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hp2p.homs.store import HomsStore, SweepResult

log = logging.getLogger("hp2p.homs.liveness")


async def sweep_once(store: HomsStore) -> SweepResult:
    """One sweep; logs what it removed."""
    result = await store.expire()
    if result.peers or result.overlays:
        log.info(
            "expiry sweep removed %d peer(s) and %d empty overlay(s)",
            len(result.peers),
            len(result.overlays),
        )
    return result


async def run_sweeper(store: HomsStore, interval: float, stop: asyncio.Event) -> None:
    """Sweep every ``interval`` seconds until ``stop`` is set.

    A failing sweep (database briefly unreachable) is logged and retried at the next tick:
    the sweeper must never die silently and leave expired peers in peer lists forever.
    """
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        try:
            await sweep_once(store)
        except Exception:  # keep sweeping; the next tick may succeed
            log.exception("expiry sweep failed; retrying in %.1f s", interval)
