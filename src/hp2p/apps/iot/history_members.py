"""The member set of a history SubMesh, read from the HOMS every few seconds.

``--replicas R`` places each segment on R members (:mod:`hp2p.apps.iot.placement`); the
members are what the HOMS lists for the SubMesh in ``GET /api/OverlayStatus`` (open to anyone
for an open overlay, which is what ``hp2p iot bridge`` creates). This task polls it every
``interval`` seconds, backs off (doubling, at most ``max_backoff``) while the HOMS fails or
refuses, reads at most ``MAX_BODY`` bytes, and calls ``on_change`` when the set changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from hp2p.apps.iot.placement import MembersError, Placement, live_members

log = logging.getLogger("hp2p.apps.iot.history")

__all__ = ["MAX_BODY", "MemberWatch"]

#: Largest OverlayStatus answer read (about 4,000 members with their cost maps).
MAX_BODY = 8 << 20


class MemberWatch:
    """``await poll()`` once, then ``await run()`` (a task) until cancelled."""

    def __init__(
        self,
        homs: str,
        overlay_id: str,
        source_id: str,
        placement: Placement,
        *,
        on_change: Callable[[], None],
        on_error: Callable[[str], None],
        interval: float = 3.0,
        max_backoff: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = f"{homs.rstrip('/')}/api/OverlayStatus"
        self.overlay_id = overlay_id
        self.source_id = source_id
        self.placement = placement
        self.on_change = on_change
        self.on_error = on_error
        self.interval = interval
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.failures = 0
        self.polls = 0
        self.last_error: str | None = None

    async def poll(self) -> bool:
        """Read the member set once; True if it was read (changed or not)."""
        self.polls += 1
        try:
            body = await self._fetch()
            members = live_members(body, time.time(), source_id=self.source_id)
            changed = self.placement.update(members, time.time())
        except (httpx.HTTPError, MembersError, OSError) as exc:
            reason = f"cannot read the SubMesh's members from the HOMS: {exc}"
            self.failures += 1
            if reason != self.last_error:
                self.last_error = reason
                self.on_error(reason + " (retrying; placement keeps the last member set)")
            return False
        self.failures = 0
        self.last_error = None
        if changed:
            self.on_change()
        return True

    async def run(self) -> None:
        while True:  # ends when cancelled with the member
            delay = self.interval * 2 ** min(self.failures, 16)
            await asyncio.sleep(min(delay, self.max_backoff))
            await self.poll()

    async def _fetch(self) -> bytes:
        params = {"overlay_id": self.overlay_id}
        async with (
            httpx.AsyncClient(timeout=self.timeout) as client,
            client.stream("GET", self.url, params=params) as answer,
        ):
            if answer.status_code != 200:
                text = (await answer.aread())[:300].decode(errors="replace")
                raise MembersError(f"HTTP {answer.status_code} {text}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in answer.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    raise MembersError(f"the answer exceeds {MAX_BODY} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
