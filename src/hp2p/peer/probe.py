"""Path status probe (PSP FE, Q.4100 §7.2.2.3): heartbeats, liveness deadlines, RTT by PROBE.

TCP alone does not tell a peer that the other end hung (§7.2.2.3), so every path is watched:
each side sends HEARTBEAT on every primary and candidate path once per interval (the reference
sends only from the ESTAB receiver side, §4.4, so a hung child goes unnoticed by its parent), and
*any* frame received counts as liveness. A path silent for the heartbeat timeout is dead.

Transient connections have deadlines of their own (an accepted connection that stays silent, a
HELLO link without 1202, a volunteer offer without 2200), checked by the same scan so no
connection can leak.

The scan is not per message: the core keeps one deadline, the earliest instant at which some
link could have expired, computed from the links' last receive times.

RTT is measured from a local send time keyed by an opaque token echoed in ``ntp-time``; the
echoed text is never parsed as a clock (the reference parses it in one time zone, §9.2).
"""

from __future__ import annotations

from hp2p.peer.paths import PATH_ROLES, Link, Role

TRANSIENT_TIMEOUT_ROLES = (Role.CONNECTING, Role.INCOMING, Role.HELLO)


class LivenessDeadlines:
    """Which links are dead at ``now``, and when to look again."""

    __slots__ = ("estab_timeout", "heartbeat_timeout", "idle_timeout")

    def __init__(self, heartbeat_timeout: float, idle_timeout: float, estab_timeout: float):
        self.heartbeat_timeout = heartbeat_timeout
        self.idle_timeout = idle_timeout
        self.estab_timeout = estab_timeout

    def deadline(self, link: Link) -> float:
        if link.role in PATH_ROLES:
            return link.last_rx + self.heartbeat_timeout
        if link.role is Role.VOLUNTEER:
            return link.opened + self.estab_timeout
        return link.opened + self.idle_timeout

    def expired(self, links: list[Link], now: float) -> list[Link]:
        return [link for link in links if self.deadline(link) <= now]

    def next_check(self, links: list[Link]) -> float | None:
        return min((self.deadline(link) for link in links), default=None)


class RttProbe:
    """Outstanding PROBEs: token → send time, per connection."""

    __slots__ = ("_counter", "_pending")

    def __init__(self) -> None:
        self._pending: dict[int, tuple[str, float]] = {}
        self._counter = 0

    def start(self, conn: int, now: float) -> str:
        """A fresh token to put in PROBE's ``ntp-time``."""
        self._counter += 1
        token = f"hp2p-{self._counter}-{now:.6f}"
        self._pending[conn] = (token, now)
        return token

    def answer(self, conn: int, token: str, now: float) -> float | None:
        """The RTT if ``token`` answers the PROBE outstanding on ``conn``; else None."""
        pending = self._pending.get(conn)
        if pending is None or pending[0] != token:
            return None
        del self._pending[conn]
        return max(0.0, now - pending[1])

    def outstanding(self) -> int:
        return len(self._pending)

    def forget(self, conn: int) -> None:
        self._pending.pop(conn, None)
