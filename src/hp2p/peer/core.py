"""The sans-IO hybrid peer (Q.4100 §7.2): one object composing the FEs, fed ``(input, now)``.

``PeerCore`` owns no socket, clock, task or global random state. The shell (asyncio TCP node,
the in-memory simulator, a hypothesis state machine) calls its input methods with the current
time and drains ``take_effects()`` after each call; ``next_timer()`` says when to call
``handle_timer``. The same inputs in the same order give the same outputs, which is what makes
10,000 simulated peers and stateful property tests possible.

``PeerCore`` is a thin composition: the plumbing it shares with the SubMesh core comes from
:class:`hp2p.peer.kernel.Kernel`; the procedures live in one object per functional entity of
Q.4100 §7.2, each in the module named after it, and reach each other through the core:

=====  ==========================================  =============================================
FE     object                                      module
=====  ==========================================  =============================================
POC    ``core.poc`` (phase, join, tree recovery)    :mod:`hp2p.peer.control`
PPM    ``core.ppm`` (volunteering, SET_PRIMARY)     :mod:`hp2p.peer.path_procedures`
CPM    ``core.ppm`` (candidate refill, vertical)    :mod:`hp2p.peer.path_procedures`
PSP    ``core.psp`` (heartbeats, liveness, PROBE)   :mod:`hp2p.peer.probe`
DB     ``core.db`` (publish, accept and forward)    :mod:`hp2p.peer.broadcast`
CM     ``core.cm`` (BUFFERMAP / GET_DATA answers)   :mod:`hp2p.peer.cache`
DR     ``core.dr`` (buffermap exchange, pulls)      :mod:`hp2p.peer.recovery`
-      ``core.scan`` (SCAN_TREE)                    :mod:`hp2p.peer.scan`
=====  ==========================================  =============================================

What stays here is what every FE shares: the path table, duplicate window and cache, the
dispatch of messages and timers to the FE that owns them, and what happens when a link goes.
A peer that misbehaves never raises out of here: every unexpected message becomes a counted
``ProtocolError`` effect (and, where the link has no purpose left, a ``Close``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from hp2p.peer.broadcast import Broadcaster, DuplicateFilter
from hp2p.peer.cache import CacheServer, MessageCache
from hp2p.peer.config import PeerConfig
from hp2p.peer.control import Control, Event, JoinInfo, Phase
from hp2p.peer.effects import (
    Costmap,
    Effect,
    HomsReport,
    Left,
    PathEvent,
    PeerLost,
)
from hp2p.peer.kernel import Kernel
from hp2p.peer.path_procedures import PathManager
from hp2p.peer.paths import PATH_ROLES, Link, PathLimitError, PathTable, Role, shows_hp2p
from hp2p.peer.probe import PathProbe
from hp2p.peer.recovery import DataRecovery, PullQueue, pull_settings
from hp2p.peer.scan import TreeScan
from hp2p.wire.r2.messages import (
    Auth,
    AuthResponse,
    BroadcastData,
    BroadcastDataResponse,
    Buffermap,
    BuffermapResponse,
    Estab,
    EstabResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    HeartbeatResponse,
    Hello,
    HelloResponse,
    Message,
    PeerAddress,
    Probe,
    ProbeResponse,
    Release,
    ReleaseResponse,
    ScanTree,
    ScanTreeResponse,
    SetCandidate,
    SetCandidateResponse,
    SetPrimary,
    SetPrimaryResponse,
)

_FAULTS = frozenset({"connection closed", "heartbeat timeout"})


@dataclass(slots=True)
class CoreCounters:
    """Events worth a metric; protocol errors are counted here, never raised."""

    protocol_errors: int = 0
    delivered: int = 0
    forwarded: int = 0
    forwarded_bytes: int = 0  # payload bytes relayed on (once per path they went out on)
    published: int = 0
    hellos: int = 0
    volunteered: int = 0
    attempts: int = 0
    repairs: int = 0
    paths_lost: int = 0
    foreign_dropped: int = 0  # SubTree: data whose source is not the overlay's source peer
    unsigned: int = 0  # data without its source's signature on an overlay that requires one
    bad_signatures: int = 0  # data whose source signature does not verify
    unknown_sources: int = 0  # data of a source whose credential this peer has not seen
    bad_credentials: int = 0  # source credentials refused (forged, expired, someone else's)
    scans_dropped: int = 0  # SCAN_TREE requests over the per-path rate (scan_gap)


class PeerCore(Kernel):
    """The hybrid peer core. See docs/peer-core.md for the inputs, effects and procedures."""

    def __init__(self, config: PeerConfig, peer_id: str, address: str, rng: random.Random) -> None:
        self.counters = CoreCounters()
        super().__init__(peer_id, address, rng, self.counters)
        self.config = config
        self.overlay_id = ""
        self.ticket = 0
        self.depth: int | None = None
        self.recovery_by = "push"
        self.grandparent: PeerAddress | None = None
        self.paths = PathTable(
            config.max_children,
            config.max_outgoing_candidates,
            config.max_incoming_candidates,
            config.recovery_children,
        )
        self.duplicates = DuplicateFilter(
            config.duplicate_window, config.max_ahead, config.max_sources
        )
        self.cache = MessageCache(config.cache_count, config.cache_bytes, config.cache_age)
        self.dirty = False  # the path table changed: report it (HOMP) and re-advertise
        self._last_costmap: Costmap | None = None
        self.poc = Control(self)
        self.ppm = PathManager(self)
        self.psp = PathProbe(self)
        self.db = Broadcaster(self)
        self.cm = CacheServer(self)
        self.dr = DataRecovery(self)
        self.scan = TreeScan(self)
        self._on_data = self.db.on_data
        self._gate = False  # links must pass admission (an overlay that requires credentials)
        self._handlers = self._message_handlers()
        self._timer_handlers: dict[str, Callable[[float], None]] = {
            **self.poc.timers(),
            **self.ppm.timers(),
            **self.dr.timers(),
            **self.scan.timers(),
            **self.db.timers(),
        }

    def _message_handlers(self) -> dict[type[Any], Callable[[Link, Any, float], None]]:
        """Which FE handles each R2 message (BROADCAST_DATA is dispatched before this)."""
        ignore = _ignore
        return {
            Auth: self._on_auth,
            AuthResponse: self._on_auth_response,
            Hello: self.ppm.on_hello,
            Estab: self.ppm.on_estab,
            Probe: self.psp.on_probe,
            SetPrimary: self.ppm.on_set_primary,
            SetCandidate: self.ppm.on_set_candidate,
            Release: self.ppm.on_release,
            Heartbeat: self.psp.on_heartbeat,
            ScanTree: self.scan.on_scan,
            Buffermap: self.cm.on_buffermap,
            GetData: self.cm.on_get_data,
            HelloResponse: self.poc.on_hello_response,
            EstabResponse: self.ppm.on_estab_response,
            ProbeResponse: self.psp.on_probe_response,
            SetPrimaryResponse: self.poc.on_set_primary_response,
            ScanTreeResponse: self.scan.on_scan_response,
            BuffermapResponse: self.dr.on_buffermap_response,
            GetDataResponse: self.dr.on_get_data_response,
            SetCandidateResponse: ignore,
            HeartbeatResponse: ignore,
            ReleaseResponse: ignore,
            BroadcastDataResponse: ignore,
        }

    # === outputs =================================================================================
    def take_effects(self) -> list[Effect]:
        """Everything the core decided since the last call, in order."""
        if self.dirty:
            self.dirty = False
            self.psp.advertise()
            costmap = self.paths.costmap()
            if costmap != self._last_costmap and self.phase is not Phase.LEFT:
                self._last_costmap = costmap
                self.effects.append(HomsReport(costmap))
        elif self.psp.advert_dirty:
            self.psp.advertise()
        return super().take_effects()

    def next_timer(self) -> float | None:
        """The earliest instant at which ``handle_timer`` has something to do."""
        when = self.timers.next()
        other = self.psp.next_time()
        if other is not None and (when is None or other < when):
            return other
        return when

    def status(self) -> dict[str, Any]:
        """A plain snapshot for the local API, logs and the demo (no live references)."""
        links = self.paths.links.values()
        return {
            "peer_id": self.peer_id,
            "address": self.address,
            "overlay_id": self.overlay_id,
            "ticket": self.ticket,
            "phase": self.phase.value,
            "depth": self.depth,
            "parent": self.parent,
            "paths": [
                {"peer_id": x.peer_id, "role": x.role.value, "depth": x.depth, "rtt": x.rtt}
                for x in links
                if x.role in PATH_ROLES
            ],
            "counters": dataclasses.asdict(self.counters),
            "duplicates": dataclasses.asdict(self.duplicates.counters),
            "cache": {"messages": len(self.cache), "bytes": self.cache.bytes}
            | dataclasses.asdict(self.cache.counters),
            "recovery": {"wanted_now": len(self.recovery)}
            | dataclasses.asdict(self.recovery.counters),
            "admission": {
                "required": self.admission.required,
                "pending": len(self.admission.pending),
            }
            | dataclasses.asdict(self.admission.counters),
        }

    @property
    def phase(self) -> Phase:
        return self.poc.phase

    @property
    def attached(self) -> bool:
        return self.poc.phase is Phase.ATTACHED

    @property
    def parent(self) -> str | None:
        link = self.paths.parent
        return None if link is None else link.peer_id

    @property
    def recovery(self) -> PullQueue:
        """The wants of the DR FE (what is missing, asked of whom)."""
        return self.dr.queue

    # === inputs: life cycle ======================================================================
    def start(self, info: JoinInfo, now: float) -> None:
        """Begin after the shell's HOMP join: become the root, or HELLO the listed peers.

        After ``JoinFailed`` the shell may join the HOMS afresh and call ``start`` again with
        the *new* ticket. Every path is released first: children hold tickets that need not
        be higher than the new one, and the ticket rule must hold on every primary path.
        """
        self.poc.start(info, now)

    def apply_overlay(self, info: JoinInfo, now: float) -> None:
        """The overlay's own values (HOMP join answer) over the local defaults."""
        policy = info.cr_policy
        self.config = config = self.config.with_overlay(
            info.heartbeat_interval,
            info.heartbeat_timeout,
            policy.cache_count,
            policy.cache_age_minutes,
        )
        self.db.source_only = info.source_peer_id
        self.admission.configure(info.overlay_id, info.membership)
        self.admission.on_refused = self._refused
        self._gate = self.admission.required
        self.db.trust(info.membership)
        self.cache.max_count = config.cache_count
        self.cache.max_age = config.cache_age
        self.dr.queue.settings = pull_settings(config)
        self.psp.deadlines.heartbeat_timeout = config.heartbeat_timeout
        # A reference peer heartbeats by the overlay's values, not by my (maybe pinned) ones.
        self.psp.deadlines.reference_timeout = max(
            config.heartbeat_timeout, info.heartbeat_timeout or 0.0
        )
        self.psp.next_heartbeat = now + config.heartbeat_interval

    def homs_result(self, peers: list[tuple[str, str]], now: float, root: bool = False) -> None:
        """The HOMS answered a ``HomsRecoveryJoin``.

        ``root`` says the HOMS knows no active peer older than this one: it becomes the root.
        """
        self.poc.homs_result(peers, now, root)

    def restart(self, info: JoinInfo, now: float) -> None:
        """Start over under a new HOMP membership (a new ticket), from any phase but LEFT.

        The shell calls this when the HOMS forgot the peer and it joined again: a younger
        ticket keeps the ticket rule only with every path released first. The duplicate
        filter and the cache stay, so nothing is delivered twice and neighbours can still
        pull from this peer.
        """
        if self.phase is Phase.LEFT:
            self.error(None, "restart() after leave")
            return
        self.reset(now)
        self.start(info, now)

    def leave(self, now: float) -> None:
        """RELEASE every path, close every connection, then ``Left``."""
        if self.phase is Phase.LEFT:
            return
        self.db.flush(now)  # messages published before leaving still go out
        self.reset(now)
        self.dr.detached_at = None
        self.poc.to(Event.LEAVE)
        self.psp.stop()
        self.dirty = False
        self.effects.append(Left())

    def reset(self, now: float) -> None:
        """Release every path, close every connection and forget the procedure state."""
        paths = tuple(link.conn for link in self.paths.paths())
        if paths:
            self.send(paths, Release())
        for conn in list(self.paths.links):
            self.paths.remove(conn)
            self.dr.queue.conn_lost(conn)
            self.close(conn)
        self.poc.reset()
        self.ppm.reset()
        self.depth = None
        self.grandparent = None
        self.dirty = True
        self.timers.clear()

    # === inputs: connections =====================================================================
    def accept(self, now: float) -> int:
        """A remote peer opened a connection to us; returns the conn id to use for it."""
        conn = self.new_conn()
        self.add_link(Link(conn, Role.INCOMING, last_rx=now, opened=now))
        return conn

    def connection_made(self, conn: int, now: float) -> None:
        link = self.paths.get(conn)
        if link is None:
            self.error(conn, "connection_made for an unknown connection")
            return
        link.last_rx = now
        if self._gate:
            self.admission.dial(conn, now)  # the purpose is sent once the link is admitted
            return
        self._send_purpose(link, now)

    def _send_purpose(self, link: Link, now: float) -> None:
        conn = link.conn
        purpose = link.purpose
        link.purpose = None
        if isinstance(purpose, Hello):
            self.paths.set_role(link, Role.HELLO)
            self.send((conn,), purpose)
        elif isinstance(purpose, Estab):
            self.send((conn,), purpose)
        else:
            self.error(conn, "connection_made without a purpose")
            self.drop(link, "no purpose", now)

    def connection_failed(self, conn: int, now: float) -> None:
        self.connection_lost(conn, now)

    def connection_lost(self, conn: int, now: float) -> None:
        self.admission.forget(conn)
        link = self.paths.remove(conn)
        if link is not None:
            try:
                self.link_gone(link, "connection closed", now)
            except PathLimitError as exc:  # a state the procedures should never reach
                self.error(conn, f"internal path-table error on connection loss: {exc}")

    # === inputs: messages, publishing, timers ====================================================
    def receive(self, conn: int, message: Message, now: float) -> None:
        """A decoded R2 message arrived on ``conn``."""
        link = self.paths.links.get(conn)
        if link is None:
            if self.phase is not Phase.LEFT:
                self.error(conn, f"{type(message).__name__} on an unknown connection")
            return
        link.last_rx = now
        if type(message) is BroadcastData:
            if link.cred is None and self._gate:
                self.admission.not_admitted(link.conn, message, now)
                return
            self._on_data(link, message, now, False)
            return
        if self._gate and link.cred is None and type(message) not in _ADMISSION:
            self.admission.not_admitted(link.conn, message, now)
            return
        if not link.hp2p and (link.cred is not None or shows_hp2p(message)):
            link.hp2p = True
            self.psp.watch(link)  # its liveness deadline is my own timeout from now on
        handler = self._handlers.get(type(message))
        if handler is None:
            self.error(conn, f"unexpected message {type(message).__name__}")
            return
        try:
            handler(link, message, now)
        except PathLimitError as exc:  # a state the procedures should never reach
            self.error(conn, f"internal path-table error on {type(message).__name__}: {exc}")

    def publish(
        self,
        data: bytes,
        now: float,
        app_id: str = "etri_data",
        payload_type: str = "text/plain",
        candidate_path: bool = False,
    ) -> int:
        """Broadcast ``data`` from this peer (CoreTree is multi-source); returns its sequence."""
        return self.db.publish(data, now, app_id, payload_type, candidate_path)

    def continue_as_source(self, last_sequence: int) -> None:
        """Publish on after ``last_sequence`` (a standby taking over a source's peer-id)."""
        self.db.continue_as_source(last_sequence)

    def scan_tree(self, now: float) -> int:
        """Start SCAN_TREE over the primary paths; ``ScanResult`` comes at the timeout."""
        return self.scan.start(now)

    def handle_timer(self, now: float) -> None:
        """Run everything due at ``now``: protocol timeouts, heartbeats, liveness checks."""
        if self.phase is Phase.LEFT:
            return
        for name in self.timers.pop_due(now):
            try:
                self._timer_handlers[name](now)
            except PathLimitError as exc:  # a state the procedures should never reach
                self.error(None, f"internal path-table error on timer {name}: {exc}")
        if self.admission.pending:
            self.admission.expire(now)
        self.psp.tick(now)

    # === admission (issue #11, docs/security.md) ================================================
    def own_credential(self) -> str | None:
        """My membership credential, for the HELLOs I send (None on an open overlay)."""
        own = self.admission.own
        return None if own is None else own.token

    def _on_auth(self, link: Link, msg: Auth, now: float) -> None:
        if link.role is not Role.INCOMING or link.cred is not None:
            self.admission.refuse(link.conn, f"AUTH on a {link.role.value} connection", now)
            return
        cred = self.admission.on_auth(link.conn, msg, now)
        if cred is not None:
            link.cred = cred
            link.hp2p = True

    def _on_auth_response(self, link: Link, msg: AuthResponse, now: float) -> None:
        expect = link.peer_id or None
        cred = self.admission.on_auth_response(link.conn, msg, now, expect)
        if cred is not None:
            link.cred = cred
            link.hp2p = True
            self._send_purpose(link, now)

    def _refused(self, conn: int, reason: str, now: float) -> None:
        link = self.paths.links.get(conn)
        if link is not None:
            self.drop(link, reason, now)

    # === links: what every FE shares =============================================================
    def add_link(self, link: Link) -> None:
        self.paths.add(link)
        self.psp.watch(link)

    def open_link(self, peer_id: str, address: str, purpose: Hello, now: float) -> int:
        """Connect to ``peer_id`` to send it ``purpose`` (a HELLO) once the link is up."""
        conn = self.new_conn()
        link = Link(conn, Role.CONNECTING, peer_id=peer_id, address=address, opened=now)
        link.last_rx = now
        link.purpose = purpose
        self.add_link(link)
        self.connect(conn, peer_id, (address,))
        return conn

    def note_path(self, link: Link, now: float) -> None:
        """``link`` became a path: its heartbeat deadline starts now."""
        link.last_rx = now
        self.emit_path(link, "added")
        self.psp.watch(link)

    def emit_path(self, link: Link, kind: str) -> None:
        self.dirty = True
        self.effects.append(PathEvent(kind, link.peer_id, link.role.value))

    def release(self, link: Link, reason: str, now: float) -> None:
        self.send((link.conn,), Release())
        self.drop(link, reason, now)

    def drop(self, link: Link, reason: str, now: float) -> None:
        """Forget ``link`` and close its connection."""
        if self.paths.remove(link.conn) is None:
            return
        self.close(link.conn)
        self.link_gone(link, reason, now)

    def drop_if_transient(self, link: Link, now: float) -> None:
        if link.role not in PATH_ROLES:
            self.drop(link, "", now)

    def link_gone(self, link: Link, reason: str, now: float) -> None:
        """``link`` is gone (already removed from the table): update every FE that used it."""
        self.psp.rtt.forget(link.conn)
        if link.role in PATH_ROLES:
            self.counters.paths_lost += 1
            self.dirty = True
            self.effects.append(PathEvent("removed", link.peer_id, link.role.value, reason))
            if reason in _FAULTS:
                self.effects.append(PeerLost(link.peer_id, link.role.value, reason))
            self.ppm.link_gone(link, now)
        self.dr.link_gone(link, now)
        self.poc.link_gone(link, reason, now)


def _ignore(link: Link, msg: Message, now: float) -> None:
    return


_ADMISSION: Final = frozenset({Auth, AuthResponse})
