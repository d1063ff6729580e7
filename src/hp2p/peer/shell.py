"""The asyncio half that every sans-IO peer core needs, written once for the tree and the mesh.

Both :class:`~hp2p.peer.node.PeerNode` (CoreTree, SubTree) and
:class:`~hp2p.peer.mesh_node.MeshNode` (SubMesh) drive a core with the same contract: every
input (an accepted or opened TCP connection, a decoded R2 message, a closed link, the timer)
goes to the core with ``loop.time()`` as ``now``; then the core's effects are executed in
order and one timer is re-armed to ``core.next_timer()``. What differs between them is only
which effects exist beyond the transport ones, so this class owns the connection table, the
timer and the effect loop, and a subclass supplies :meth:`CoreShell._execute` for the rest.

Two details of the connection table matter for correctness:

* frames that arrive on a connection the shell opened, before ``tcp.connect`` returned, are
  held and fed to the core right after ``connection_made``, in order;
* a ``Close`` for a connection still being opened is remembered and applied when (if) it
  opens; a link the core closed itself is not reported back to it as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from hp2p.peer.admission import Admission
from hp2p.peer.effects import Close, Connect, HomsReport, ProtocolError, Send
from hp2p.peer.homs_client import HomsClient
from hp2p.peer.settings import ANY_HOSTS, split_host_port
from hp2p.peer.signalling_client import Identity, SignallingClient, signalling_url
from hp2p.transport import tcp
from hp2p.transport.base import Link, LinkEvents
from hp2p.transport.bind_errors import bind_error_message
from hp2p.transport.faults import FaultPlan, FaultyLink
from hp2p.transport.ice import parse_ice_servers, split_list
from hp2p.transport.limits import R2Budget, R2Limits
from hp2p.transport.registry import TransportRegistry, default_registry, scheme_of
from hp2p.trust.keys import SigningKey
from hp2p.wire.errors import WireError
from hp2p.wire.r2 import encode
from hp2p.wire.r2.messages import Message

log = logging.getLogger("hp2p.peer.shell")


def host_address() -> str:
    """This host's address for others: the address of the interface its default route uses,
    else the first non-loopback address its name resolves to, else 127.0.0.1.

    No packet is sent: "connecting" a UDP socket only asks the kernel which source address it
    would use. A host whose name resolves only to loopback (common in containers and network
    namespaces) still finds its real interface that way; across NATs give ``--advertise``.
    """
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed to anyone, only looked up
        address = str(udp.getsockname()[0])
        if not address.startswith("127.") and address not in ANY_HOSTS:
            return address
    try:
        _, _, addresses = socket.gethostbyname_ex(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    usable = [a for a in addresses if not a.startswith("127.") and a not in ANY_HOSTS]
    return usable[0] if usable else "127.0.0.1"


class DrivenCore(Protocol):
    """The inputs a sans-IO core takes and the outputs it gives (ARCHITECTURE.md, rule 2)."""

    def accept(self, now: float) -> int: ...
    def connection_made(self, conn: int, now: float) -> None: ...
    def connection_failed(self, conn: int, now: float) -> None: ...
    def connection_lost(self, conn: int, now: float) -> None: ...
    def receive(self, conn: int, message: Message, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_timer(self) -> float | None: ...
    def take_effects(self) -> Sequence[Any]: ...
    @property
    def admission(self) -> Admission: ...


CoreT = TypeVar("CoreT", bound=DrivenCore)


class ListenSettings(Protocol):
    """What both kinds of peer settings say about where R2 arrives (NodeSettings, MeshSettings)."""

    @property
    def homs(self) -> str: ...
    @property
    def listen(self) -> str: ...
    @property
    def advertise(self) -> str | None: ...
    @property
    def tls(self) -> bool: ...
    @property
    def webrtc(self) -> bool: ...
    @property
    def ice_servers(self) -> str: ...
    @property
    def ice_hosts(self) -> str: ...


@dataclass
class LinkStats:
    """What the transport side of a shell counted; the shells add their own counters."""

    frames_sent: int = 0
    frames_refused: int = 0  # a link's bounded send queue was full, or it had closed
    sends_to_gone: int = 0  # the core named a connection the shell no longer has
    encode_errors: int = 0
    connects: int = 0
    connect_failures: int = 0
    accepted: int = 0
    wire_errors: int = 0  # malformed R2 streams (the link was closed)
    protocol_errors: int = 0  # the core's ProtocolError effects
    limit_closes: int = 0  # links closed by a process-wide R2 limit (hp2p.transport.limits)


class CoreShell(Generic[CoreT]):
    """Connection table, timer and effect loop around one core; see the module docstring."""

    core: CoreT | None
    stats: LinkStats
    homs: HomsClient
    address: str
    peer_id: str
    #: Delay, loss and partitions injected on every link (``--faults``); None: none.
    fault_plan: FaultPlan | None = None
    on_event: Any  # EventSink | None
    #: Task name of the connection attempts (visible in asyncio debugging).
    connect_task_name = "hp2p-connect"

    def _init_shell(
        self,
        send_queue_bytes: int,
        transports: TransportRegistry | None = None,
        limits: R2Limits | None = None,
    ) -> None:
        self._send_queue_bytes = send_queue_bytes
        #: What incomplete R2 frames may hold, over every link of this peer (issue #11):
        #: accepted links and the links the default registry dials are charged to it.
        self.r2_budget = R2Budget(limits)
        #: How a ``Connect`` reaches a peer: one dialer per address scheme.
        self.transports = transports if transports is not None else default_registry(self.r2_budget)
        self._server: asyncio.Server | None = None
        self._links: dict[int, Link] = {}
        self._connecting: dict[int, list[Message]] = {}
        self._closing: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._handlers = self._effect_handlers()
        #: WebRTC (``webrtc`` setting): the transport, its signalling socket and the URL this
        #: peer is reached at through it; None when off (aiortc is then never imported).
        self.webrtc: Any = None
        self.signalling: SignallingClient | None = None
        self.webrtc_url: str | None = None
        #: Seconds from dial to open link of the last links this peer dialled (any transport).
        self.connect_times: deque[float] = deque(maxlen=1024)

    # === hooks for subclasses ====================================================================
    def _effect_handlers(self) -> dict[type[Any], Callable[[Any], None]]:
        """The effects only this kind of peer has, and what carries each out."""
        raise NotImplementedError

    def _execute(self, effect: Any) -> None:
        """Carry out one effect: the ones every peer has here, the others by the subclass table.

        ``Send`` (most of a broadcast hop) is tested first, by exact type; an effect that no
        table names is a bug in the shell, and is logged.
        """
        kind = type(effect)
        if kind is Send:
            self._send(effect)
        elif kind is Connect:
            self._start_connect(effect)
        elif kind is Close:
            self._close(effect)
        elif kind is HomsReport:
            self.homs.report(effect.costmap)  # the path table (tree) or neighbours (mesh)
        elif kind is ProtocolError:
            self.stats.protocol_errors += 1
            log.info("protocol error on connection %s: %s", effect.conn, effect.reason)
            self._emit("error", {"conn": effect.conn, "reason": effect.reason})
        else:
            handler = self._handlers.get(kind)
            if handler is None:
                log.error("no handler for the %s effect", kind.__name__)
            else:
                handler(effect)

    def _wrap(self, link: Link, remote: str) -> Link:
        """The link the shell sends on: wrapped in the fault injector when ``--faults`` is set."""
        if self.fault_plan is None:
            return link
        return FaultyLink(link, self.fault_plan, local=self.address, remote=remote)

    def _link_closed(self) -> None:
        """A link left the table (the tree shell waits on this when leaving)."""

    # === transport inputs ========================================================================
    async def _listen(
        self, s: ListenSettings, key: SigningKey | None, error: type[Exception]
    ) -> str:
        """Listen for R2 on TCP (TLS with ``s.tls``) and, with ``s.webrtc``, through the HOMS
        signalling; the one address this peer advertises (the HOMP address is one string)."""
        tls = None
        if s.tls and key is not None:
            from hp2p.transport.tls import server_context  # x509: only for a TLS listener

            tls = server_context(key)
        advertise = s.advertise
        if s.webrtc:
            try:
                url = self._setup_webrtc(s.homs, s.ice_servers, s.ice_hosts)
            except ImportError as exc:
                raise error(f"webrtc needs aiortc ({exc}): pip install 'hp2p[webrtc]'") from None
            except ValueError as exc:
                raise error(f"webrtc: {exc}") from None
            if advertise is None:
                advertise = url  # reached by peer-id through the HOMS (docs/peer.md)
        return await self._listen_r2(s.listen, error, advertise, tls)

    async def _signalling_up(self, within: float, error: type[Exception]) -> None:
        """Register on the HOMS signalling socket (WebRTC peers); stop everything if it fails."""
        try:
            await self._start_signalling(within)
        except OSError as exc:
            await self._shutdown_io()
            raise error(f"webrtc: {exc}") from None

    async def _shutdown_io(self) -> None:
        """Stop every link, task and client of the shell (each kind of peer adds its own)."""
        raise NotImplementedError

    async def _listen_r2(
        self,
        listen: str,
        error: type[Exception],
        advertise: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> str:
        """Listen for R2 on ``listen`` (HOST:PORT); the address peers reach us at.

        That is ``advertise`` when given; else the listening address, except that a peer
        listening on every interface (0.0.0.0) never advertises 0.0.0.0, which nobody can
        dial: it names this host's own address (:func:`host_address`). With ``tls`` every
        link is TLS 1.3 and the address is ``tls://`` (:mod:`hp2p.transport.tls`).
        """
        host, port = split_host_port(listen, "listen")
        try:
            self._server = await tcp.listen(
                host,
                port,
                self._on_accept,
                max_queue_bytes=self._send_queue_bytes,
                budget=self.r2_budget,
                tls=tls,
            )
        except OSError as exc:
            hint = bind_error_message(exc, host, port, "--listen")
            raise error(f"R2: {hint}") from None
        if advertise is not None:
            return advertise
        if host in ANY_HOSTS:
            host = host_address()
        scheme = "tcp" if tls is None else "tls"
        return tcp.format_tcp_address(host, self._server.sockets[0].getsockname()[1], scheme)

    def _setup_webrtc(self, homs_url: str, ice_servers: str, ice_hosts: str) -> str:
        """Load the WebRTC transport and register it for ``ws``/``wss``; the signalling URL.

        The socket is opened later (:meth:`_start_signalling`): its hello proves the
        membership that the HOMP join establishes.
        """
        from hp2p.transport import webrtc  # only here: a TCP-only peer never loads aiortc

        url = signalling_url(homs_url)
        webrtc.restrict_host_candidates(split_list(ice_hosts))

        async def relay(message: dict[str, Any]) -> bool:
            return self.signalling is not None and await self.signalling.send(message)

        transport = webrtc.WebRtcTransport(
            self.peer_id,
            relay,
            self._on_accept,
            ice_servers=parse_ice_servers(ice_servers),
            max_queue_bytes=self._send_queue_bytes,
        )
        self.signalling = SignallingClient(
            url, self._signalling_identity, on_relay=transport.on_relay, on_error=self._on_sig_error
        )
        for scheme in ("ws", "wss"):
            self.transports.register_peer_dialer(scheme, transport.dial)
        self.webrtc = transport
        self.webrtc_url = url
        return url

    async def _start_signalling(self, within: float) -> None:
        """Open and register the signalling socket (after the HOMP join); OSError if not."""
        if self.signalling is not None:
            await self.signalling.start(within)

    def _signalling_identity(self) -> Identity:
        m = self.homs.membership
        if m is None:
            raise ValueError("signalling before the HOMP join")
        trust = m.trust
        if trust is not None and trust.required:
            return Identity(m.overlay_id, m.peer_id, m.password, trust.credential, trust.key)
        return Identity(m.overlay_id, m.peer_id, m.password)

    def _on_sig_error(self, message: dict[str, Any]) -> None:
        """A relay the HOMS could not deliver fails that peer's dials at once, not by timeout."""
        if self.webrtc is not None and message.get("field") == "$.toid":
            reason = str(message.get("reason", ""))
            peer = reason.split("'")[1] if reason.count("'") >= 2 else None
            if peer:
                self.webrtc.peer_unreachable(peer)

    def _link_opened(
        self, address: str, seconds: float, phases: dict[str, float] | None = None
    ) -> None:
        """A dialled link is open: how long the dial took (the benchmark's connect time).

        For TCP the dial is the TCP (and TLS) handshake; for WebRTC it is offer, answer, ICE,
        DTLS and SCTP up to the open data channel. The first R2 frame can be sent then.
        """
        self.connect_times.append(seconds)
        fields: dict[str, Any] = {"scheme": scheme_of(address), "ms": round(seconds * 1000.0, 3)}
        if phases:
            fields["phases"] = phases  # WebRTC: offer, answer (signalling), open (ICE/DTLS/SCTP)
        self._emit("link_open", fields)

    def _on_accept(self, link: Link) -> LinkEvents:
        core = self.core
        if core is None or self._stopped:
            link.close()
            return LinkEvents(on_message=lambda _l, _m: None, on_closed=lambda _l, _e: None)
        conn = core.accept(self._now())
        self.stats.accepted += 1
        self._links[conn] = self._wrap(link, link.remote)
        self._drain()
        return self._events(conn)

    def _events(self, conn: int) -> LinkEvents:
        return LinkEvents(
            on_message=lambda _link, message: self._on_message(conn, message),
            on_closed=lambda _link, _exc: self._on_closed(conn),
            on_protocol_error=lambda _link, err: self._on_wire_error(conn, err),
            on_refused=lambda _link, reason: self._on_limit(conn, reason),
        )

    def _on_message(self, conn: int, message: Message) -> None:
        pending = self._connecting.get(conn)
        if pending is not None:
            pending.append(message)  # arrived before connect() returned: keep the order
            return
        core = self.core
        if core is None or self._stopped:
            return
        core.receive(conn, message, self._now())
        self._drain()

    def _on_closed(self, conn: int) -> None:
        self._links.pop(conn, None)
        self._link_closed()
        if conn in self._closing:
            self._closing.discard(conn)
            return  # the core closed it: it already knows
        core = self.core
        if core is None or self._stopped:
            return
        core.connection_lost(conn, self._now())
        self._drain()

    def _on_wire_error(self, conn: int, err: WireError) -> None:
        self.stats.wire_errors += 1
        log.info("malformed R2 stream on connection %d: %s", conn, err)
        self._emit("error", {"conn": conn, "reason": f"malformed R2 stream: {err}"})

    def _on_limit(self, conn: int, reason: str) -> None:
        """A process-wide R2 limit closed the link; the core hears of it as a lost link."""
        self.stats.limit_closes += 1
        self._emit("r2_limit", {"conn": conn, "reason": reason})

    def _start_connect(self, effect: Connect) -> None:
        self._connecting[effect.conn] = []
        self._spawn(self._connect(effect), self.connect_task_name)

    async def _connect(self, effect: Connect) -> None:
        conn = effect.conn
        self.stats.connects += 1
        addresses = effect.addresses
        url = self.webrtc_url
        if url is not None and not any(a.startswith(("ws://", "wss://")) for a in addresses):
            # a peer advertising TCP may accept WebRTC too: tried after its own addresses
            addresses = (*addresses, url)
        started = self._now()
        try:
            link, address = await self.transports.dial(
                effect.peer_id, addresses, self._events(conn), self._send_queue_bytes
            )
        except (OSError, TimeoutError, ValueError) as exc:
            self._connecting.pop(conn, None)
            self.stats.connect_failures += 1
            log.debug("connect to %s failed: %s", effect.peer_id, exc)
            if self.core is not None and not self._stopped and conn not in self._closing:
                self.core.connection_failed(conn, self._now())
                self._drain()
            self._closing.discard(conn)
            return
        early = self._connecting.pop(conn, [])
        core = self.core
        if conn in self._closing or self._stopped or core is None:
            self._closing.add(conn)
            link.close()
            return
        self._links[conn] = self._wrap(link, address)
        self._link_opened(address, self._now() - started, getattr(link, "phases", None))
        certificate_key = getattr(link, "certificate_key", None)
        if isinstance(certificate_key, bytes):
            core.admission.bind(conn, certificate_key)  # its credential must name this key
        core.connection_made(conn, self._now())
        for message in early:
            core.receive(conn, message, self._now())
        self._drain()

    # === timer ===================================================================================
    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        core = self.core
        if core is None or self._stopped:
            return
        core.handle_timer(self._now())
        self._drain()

    def _rearm(self) -> None:
        core = self.core
        if core is None or self._loop is None or self._stopped:
            return
        when = core.next_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    # === effects =================================================================================
    def _drain(self) -> None:
        """Execute every effect the core produced, in order, then re-arm the timer."""
        self._drain_effects()
        self._rearm()

    def _drain_effects(self) -> None:
        core = self.core
        if core is None:
            return
        while True:
            effects = core.take_effects()
            if not effects:
                return
            for effect in effects:
                try:
                    self._execute(effect)
                except Exception:  # a shell bug must not take the peer down silently
                    log.exception("executing %s failed", type(effect).__name__)

    def _send(self, effect: Send) -> None:
        try:
            frame = encode(effect.message)
        except (WireError, ValueError, TypeError) as exc:
            self.stats.encode_errors += 1
            log.error("cannot encode %s: %s", type(effect.message).__name__, exc)
            self._emit("error", {"reason": f"cannot encode {type(effect.message).__name__}"})
            return
        links = self._links
        for conn in effect.conns:
            link = links.get(conn)
            if link is None:
                self.stats.sends_to_gone += 1
            elif link.send_frame(frame):
                self.stats.frames_sent += 1
            else:
                self.stats.frames_refused += 1

    def _close(self, effect: Close) -> None:
        conn = effect.conn
        if conn in self._connecting:
            self._closing.add(conn)  # _connect closes it when (if) it opens
            return
        link = self._links.get(conn)
        if link is not None:
            self._closing.add(conn)
            link.close()

    # === plumbing ================================================================================
    async def _stop_io(self) -> None:
        """Cancel the timer, close every link, end every task and the listening server."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for link in list(self._links.values()):
            link.close()
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.webrtc is not None:
            await self.webrtc.close()
        if self.signalling is not None:
            await self.signalling.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:
                log.exception("event callback failed on %s", kind)
