"""R2 over WebRTC data channels (aiortc), dialled by peer-id through the HOMS signalling relay.

This is the reference Go peer's transport (etri-2023-protocol.md §3.1): one RTCPeerConnection
per link, one ordered reliable data channel labelled ``"data"`` created by the offering side,
and **one R2 frame per data-channel message** (SCTP keeps message boundaries, so each message
is decoded whole with :func:`hp2p.wire.r2.decode`; no stream reassembly). A malformed message
is counted and closes the link, exactly like a malformed TCP stream.

Addressing. A WebRTC-capable peer advertises its HOMS's signalling URL (``ws://HOST:PORT/ws``);
the registry maps ``ws``/``wss`` to :meth:`WebRtcTransport.dial`, which ignores the URL's
host (the dialer's own signalling socket reaches the same HOMS) and sends the offer to the
``Connect`` effect's peer-id. An offer for this peer opens an *accepted* link, handed to the
owner's ``on_accept`` as a TCP listener does.

Signalling shape. Offers and answers are relayed in the Go shape
(``{"fromid","toid","fromticketid":"","type","sdp":{"type","sdp"}}``). aiortc does not trickle:
its descriptions carry every candidate, which Go peers accept (conformance README, signalling
4). Bare candidate strings sent by Go peers (no ``sdpMid``) are added with mid ``"0"``, index 0.
Every link is its own PeerConnection, and two peers may have several at once (a HELLO link and
an ESTAB link in the other direction), so hp2p adds one key, ``hp2p-session``, that pairs an
answer with its offer; a message without it (a Go peer) goes to the newest session of that
peer.

ICE. With no ICE server configured only host candidates are used (no STUN default: aiortc
would otherwise ask Google's). ``host_addresses`` restricts the host candidates to the given
local addresses (``127.0.0.1`` for loopback tests, or one interface); aioice offers no
per-connection option for it, so the restriction is process-wide (one peer per process).

This module is imported only by a peer started with ``webrtc`` set: a TCP-only peer never
loads aiortc (about 30 MB of modules).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from hp2p.transport.base import Link, LinkEvents, LinkStats
from hp2p.transport.ice import IceServer
from hp2p.wire.errors import WireError
from hp2p.wire.r2 import decode
from hp2p.wire.r2.framing import DEFAULT_MAX_PAYLOAD

log = logging.getLogger(__name__)

#: The hp2p key pairing relayed answers and candidates with the offer's PeerConnection.
SESSION_KEY = "hp2p-session"
#: The label of the R2 data channel (the Go peer's).
CHANNEL_LABEL = "data"
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Sessions being negotiated at once (offers received and not yet open): a bound on what a
#: flood of offers through the HOMS can make this peer allocate.
MAX_PENDING = 64

SendRelay = Callable[[dict[str, Any]], Any]  # an awaitable returning bool


def restrict_host_candidates(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates on ``addresses`` only (process-wide; see module)."""
    chosen = list(addresses)
    if not chosen:
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class WebRtcLink:
    """One PeerConnection and its ``data`` channel, behind the :class:`Link` surface."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        remote: str,
        events: LinkEvents | None,
        *,
        max_queue_bytes: int,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self._pc = pc
        self._channel: RTCDataChannel | None = None
        self._remote = remote
        self._events = events
        self._early: list[bytes | str] = []
        self._max_queue_bytes = max_queue_bytes
        self._max_payload = max_payload
        self._closed = False
        self._closing = False
        self.opened = asyncio.Event()
        self.stats = LinkStats()
        #: Where a dial's time went, in ms (``offer``: description with candidates made;
        #: ``answer``: the answer came back through the HOMS; ``open``: ICE, DTLS and SCTP up
        #: to the open channel); the shell adds them to its ``link_open`` event.
        self.phases: dict[str, float] = {}

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._finish(None if pc.connectionState == "closed" else ConnectionError("failed"))

    # -- Link surface --------------------------------------------------------------------------
    @property
    def remote(self) -> str:
        return self._remote

    @property
    def closed(self) -> bool:
        return self._closed

    def send_frame(self, frame: bytes) -> bool:
        channel = self._channel
        if self._closed or self._closing or channel is None or channel.readyState != "open":
            return False
        if channel.bufferedAmount + len(frame) > self._max_queue_bytes:
            self.stats.overflow_drops += 1
            return False
        try:
            channel.send(frame)
        except (ValueError, ConnectionError, OSError) as exc:
            log.info("send on %s failed: %s", self._remote, exc)
            return False
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)
        return True

    def close(self) -> None:
        """Close the PeerConnection (the remote's channel closes too); ``on_closed`` follows."""
        if self._closing or self._closed:
            return
        self._closing = True
        task = asyncio.ensure_future(self._close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pc.close(), 5.0)
        self._finish(None)

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, channel: RTCDataChannel) -> None:
        """Take ``channel`` as the R2 channel of this link."""
        self._channel = channel

        @channel.on("message")
        def _message(data: bytes | str) -> None:
            self._receive(data)

        @channel.on("close")
        def _closed() -> None:
            self._finish(None)

        if channel.readyState == "open":
            self.opened.set()
        else:

            @channel.on("open")
            def _open() -> None:
                self.opened.set()

    def set_events(self, events: LinkEvents) -> None:
        """The owner's callbacks of an accepted link; messages that came before are delivered."""
        self._events = events
        early, self._early = self._early, []
        for data in early:
            self._receive(data)

    def _receive(self, data: bytes | str) -> None:
        if self._closed or self._closing:
            return
        events = self._events
        if events is None:
            self._early.append(data)
            return
        size = len(data)
        self.stats.bytes_received += size
        try:
            if isinstance(data, str):
                raise WireError("a text data-channel message: R2 frames are binary", "message")
            message = decode(data, max_payload=self._max_payload)
        except WireError as err:
            self.stats.protocol_errors += 1
            log.warning("closing %s: malformed R2 message: %s", self._remote, err)
            self._guard(events.on_protocol_error, err)
            self.close()
            return
        self.stats.frames_received += 1
        self._guard(events.on_message, message)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.opened.set()  # wakes a dial waiting for the channel: it sees ``closed``
        if not self._closing:
            self._closing = True
            task = asyncio.ensure_future(self._pc.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if self._events is not None:
            self._guard(self._events.on_closed, exc)

    def _guard(self, callback: Callable[..., None], arg: object) -> None:
        try:
            callback(self, arg)
        except Exception:
            log.exception("peer shell callback failed on link %s", self._remote)


@dataclass
class _Session:
    peer_id: str
    pc: RTCPeerConnection
    link: WebRtcLink
    answer: asyncio.Future[RTCSessionDescription] | None = None


class WebRtcTransport:
    """Dialer and listener of one peer, sharing its signalling socket; see the module.

    ``send_relay`` sends one relay through the signalling client (returns whether it could);
    ``on_accept`` is the owner's listener callback for links opened by a remote's offer.
    """

    def __init__(
        self,
        peer_id: str,
        send_relay: SendRelay,
        on_accept: Callable[[Link], LinkEvents],
        *,
        ice_servers: Sequence[IceServer] = (),
        max_queue_bytes: int,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.peer_id = peer_id
        self._send_relay = send_relay
        self._on_accept = on_accept
        self._ice = [
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
            for s in ice_servers
        ]
        self._max_queue_bytes = max_queue_bytes
        self._connect_timeout = connect_timeout
        self._sessions: dict[str, _Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.refused_offers = 0

    def _new_pc(self) -> RTCPeerConnection:
        # an explicit (possibly empty) list: None would make aiortc use Google's STUN server
        return RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice)))

    def _newest(self, peer_id: str) -> _Session | None:
        for session in reversed(list(self._sessions.values())):
            if session.peer_id == peer_id:
                return session
        return None

    # -- dialing ---------------------------------------------------------------------------------
    async def dial(
        self, peer_id: str, address: str, events: LinkEvents, max_queue_bytes: int
    ) -> WebRtcLink:
        """A link to ``peer_id`` (``address`` only says it is reachable through signalling)."""
        pc = self._new_pc()
        link = WebRtcLink(pc, f"webrtc://{peer_id}", events, max_queue_bytes=max_queue_bytes)
        link.attach(pc.createDataChannel(CHANNEL_LABEL))
        token = secrets.token_hex(8)
        session = _Session(peer_id, pc, link, asyncio.get_running_loop().create_future())
        self._sessions[token] = session
        clock = time.perf_counter
        mark = clock()

        def phase(name: str) -> None:
            nonlocal mark
            now = clock()
            link.phases[name] = round((now - mark) * 1000.0, 3)
            mark = now

        try:
            async with asyncio.timeout(self._connect_timeout):
                await pc.setLocalDescription(await pc.createOffer())
                phase("offer")
                offer = pc.localDescription
                sent = await self._send_relay(
                    {
                        "fromid": self.peer_id,
                        "toid": peer_id,
                        "fromticketid": "",
                        "type": "offer",
                        "sdp": {"type": "offer", "sdp": offer.sdp},
                        SESSION_KEY: token,
                    }
                )
                if not sent:
                    raise ConnectionError("the signalling socket is down")
                assert session.answer is not None
                answer = await session.answer
                phase("answer")
                await pc.setRemoteDescription(answer)
                await link.opened.wait()
                phase("open")
            if link.closed:
                raise ConnectionError(f"the WebRTC connection to {peer_id} failed")
        except BaseException:
            self._sessions.pop(token, None)
            await _close_quietly(pc)
            raise
        self._sessions.pop(token, None)
        return link

    def peer_unreachable(self, peer_id: str) -> None:
        """The HOMS said ``peer_id`` has no signalling socket: its pending dials fail now."""
        for session in list(self._sessions.values()):
            answer = session.answer
            if session.peer_id == peer_id and answer is not None and not answer.done():
                answer.set_exception(ConnectionRefusedError(f"{peer_id} is not signalling"))

    # -- relays ----------------------------------------------------------------------------------
    def on_relay(self, message: dict[str, Any]) -> None:
        """A relayed message from the signalling socket."""
        fromid = message.get("fromid")
        kind = message.get("type")
        if not isinstance(fromid, str):
            return
        token = message.get(SESSION_KEY)
        session = self._sessions.get(token) if isinstance(token, str) else self._newest(fromid)
        if kind == "offer":
            sdp = message.get("sdp")
            if isinstance(sdp, dict) and isinstance(sdp.get("sdp"), str):
                self._spawn(
                    self._answer(fromid, sdp["sdp"], token if isinstance(token, str) else None)
                )
        elif kind == "answer":
            sdp = message.get("sdp")
            if session is None or session.answer is None or session.peer_id != fromid:
                return
            if (
                isinstance(sdp, dict)
                and isinstance(sdp.get("sdp"), str)
                and not session.answer.done()
            ):
                session.answer.set_result(RTCSessionDescription(sdp=sdp["sdp"], type="answer"))
        elif kind == "candidate":
            text = message.get("candidate")
            if session is not None and session.peer_id == fromid and isinstance(text, str):
                self._spawn(self._add_candidate(session.pc, text))

    async def _add_candidate(self, pc: RTCPeerConnection, text: str) -> None:
        try:
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
        except (ValueError, IndexError):
            log.info("ignoring a malformed ICE candidate %r", text[:80])
            return
        candidate.sdpMid = "0"  # Go sends the bare string (conformance README, signalling 3)
        candidate.sdpMLineIndex = 0
        with contextlib.suppress(Exception):
            await pc.addIceCandidate(candidate)

    async def _answer(self, fromid: str, sdp: str, token: str | None) -> None:
        """An offer from ``fromid``: answer it; the link is accepted when its channel opens."""
        pending = sum(1 for s in self._sessions.values() if s.answer is None)
        if pending >= MAX_PENDING:
            self.refused_offers += 1
            log.warning("refusing an offer from %s: %d offers are being answered", fromid, pending)
            return
        pc = self._new_pc()
        link = WebRtcLink(pc, f"webrtc://{fromid}", None, max_queue_bytes=self._max_queue_bytes)
        key = token or secrets.token_hex(8)
        self._sessions[key] = _Session(fromid, pc, link)
        channel_ready: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()

        @pc.on("datachannel")
        def _channel(channel: RTCDataChannel) -> None:
            if not channel_ready.done():
                channel_ready.set_result(channel)

        try:
            async with asyncio.timeout(self._connect_timeout):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                reply: dict[str, Any] = {
                    "fromid": self.peer_id,
                    "toid": fromid,
                    "fromticketid": "",
                    "type": "answer",
                    "sdp": {"type": "answer", "sdp": pc.localDescription.sdp},
                }
                if token is not None:
                    reply[SESSION_KEY] = token
                if not await self._send_relay(reply):
                    raise ConnectionError("the signalling socket is down")
                link.attach(await channel_ready)
                await link.opened.wait()
            if link.closed:
                raise ConnectionError("closed before it opened")
        except (TimeoutError, ConnectionError, ValueError, OSError) as exc:
            log.info("WebRTC offer from %s not completed: %s", fromid, exc)
            await _close_quietly(pc)
            return
        finally:
            self._sessions.pop(key, None)
        link.set_events(self._on_accept(link))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """End the negotiations in progress (open links are closed by their owner)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for session in list(self._sessions.values()):
            await _close_quietly(session.pc)
        self._sessions.clear()


async def _close_quietly(pc: RTCPeerConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pc.close(), 5.0)
