"""The signalling switchboard of the HOMS WebSocket (etri-2023-protocol.md §2.8).

Peers register their socket under a peer-id (``hello``/``bye``) and the HOMS relays any
message carrying a ``toid`` to the socket registered under that id: this is how two peers
exchange WebRTC offers, answers and ICE candidates before they have a direct path. The same
socket type serves the monitoring UI (``server`` key): ``hello`` subscribes it to the
monitoring events of :mod:`hp2p.homs.monitor`, ``get`` answers the current cost map.

Two profiles, chosen per HOMS (``--signalling-profile``):

* ``secure`` (default): a socket may register a peer-id only after proving that peer's HOMP
  password (``password`` on the hello; checked against the stored hash in the named overlay,
  or in any overlay the peer belongs to), may relay only to peers that share a current
  overlay with it, and may not speak for another peer-id (a different ``fromid`` is refused,
  a missing one is filled in). Every refusal goes back to the sender as
  ``{"action":"error","reason":…,"field":…}``. The reference's relay lets anyone hijack any
  peer's signalling (etri-2023-protocol.md §9.1); this profile closes that.

  On an overlay that requires membership credentials (docs/security.md) the password does not
  register a peer-id: the hello carries the member's credential for ``overlay-id`` instead, the
  HOMS answers ``{"action":"challenge","peer-id","nonce"}``, and the socket registers only once
  it sends ``{"action":"prove","peer-id","proof"}``, the nonce signed with the credential's key
  (:mod:`hp2p.trust.hello`); the HOMS then answers ``{"action":"registered",…}``. The
  credential must verify with this HOMS's keys, name that overlay and peer-id, be unexpired
  and bind the key the member joined with, and the member must be live. A peer-id that a live
  socket registered with a credential is not handed to a second hello (no takeover): the first
  socket must say ``bye`` or close. ``reference-compat`` overlays keep the password hello.
* ``etri-2023``: the reference behaviour for reference peers, which send no password: open
  registration, any ``fromid``, relays to any id, errors silently ignored.

Monitors see every member's address and links, so in ``secure`` a monitor presents the HOMS's
operator token (``token``: every overlay) or an overlay's ``overlay_id`` + ``admin_key`` (that
overlay only; its events are the only ones it is sent). ``etri-2023`` leaves monitoring open,
as the reference web UI expects.

Both profiles bound message sizes (:data:`hp2p.wire.signalling.MAX_MESSAGE_BYTES`), rate-limit
each socket (a socket over its rate is closed with 1008, never silently throttled), and bound
each socket's outgoing queue (a receiver too slow to drain it is closed with 1013, so a slow
peer cannot make the HOMS buffer without limit or stall its senders).

The switchboard is transport-free: :class:`Session` is fed text by ``hp2p.homs.ws`` and
queues what to send; the WebSocket layer pumps that queue. With several HOMS instances on one
PostgreSQL, a :class:`Fanout` (``hp2p.homs.fanout``) carries relays and registrations to the
other instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, Protocol

import msgspec

from hp2p.homs.errors import HompError
from hp2p.homs.limits import HomsLimits
from hp2p.homs.monitor import MonitorHub, SubscriberLagged
from hp2p.homs.store import HomsStore, cost_map
from hp2p.trust import hello as hello_proof
from hp2p.trust.credential import Credential, CredentialError, CredentialVerifier
from hp2p.trust.keys import parse_public_key, public_key_text
from hp2p.wire.errors import WireError
from hp2p.wire.signalling import (
    MonitorGet,
    MonitorHello,
    PeerBye,
    PeerHello,
    PeerProve,
    Relay,
    decode_client_message,
)

log = logging.getLogger("hp2p.homs.signalling")

Profile = Literal["secure", "etri-2023"]
PROFILES: Final[tuple[Profile, ...]] = ("secure", "etri-2023")

#: WebSocket close codes (RFC 6455 §7.4.1).
CLOSE_POLICY: Final = 1008
CLOSE_TRY_AGAIN: Final = 1013
#: Challenges a socket may have outstanding at once (one per peer-id it is registering).
MAX_CHALLENGES: Final = 4


class Fanout(Protocol):
    """Carries signalling to the other HOMS instances sharing this database."""

    def relay(self, toid: str, text: str) -> None:
        """Deliver ``text`` to ``toid`` if another instance holds its socket."""

    def announce_hello(self, peer_id: str) -> None:
        """Tell the other instances that ``peer_id`` is now registered here."""


class TokenBucket:
    """A per-socket message rate limit: ``rate`` messages/s with bursts of ``burst``."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Session:
    """One WebSocket as the switchboard sees it: its identities, its monitor feed, its outbox.

    ``identities`` maps each peer-id this socket registered to the overlays in which it
    proved that peer's password (an empty set in the ``etri-2023`` profile, which checks
    nothing).
    """

    def __init__(
        self, *, outbox_bound: int, rate: float, burst: int, address: str = "unknown"
    ) -> None:
        self.identities: dict[str, frozenset[str]] = {}
        #: Peer-ids this socket registered by proving a credential: not taken over.
        self.proven: set[str] = set()
        #: Outstanding credential challenges: peer-id → (nonce, verified credential).
        self.challenges: dict[str, tuple[bytes, Credential]] = {}
        #: The client's address (for the admin-key rate limit of monitor credentials).
        self.address = address
        #: What this socket may monitor: ``OPERATOR`` (everything) or the overlays whose
        #: admin key it presented.
        self.monitor_scope: frozenset[str] | _Operator = frozenset()
        self.monitor_task: asyncio.Task[None] | None = None
        self.limiter = TokenBucket(rate, burst)
        self.closing: _Close | None = None
        self._bound = outbox_bound
        # One spare slot so that close() always fits behind a full outbox.
        self._outbox: asyncio.Queue[str | _Close] = asyncio.Queue(outbox_bound + 1)

    def send(self, text: str) -> bool:
        """Queue ``text`` for this socket; a full outbox closes it (1013) instead of waiting."""
        if self.closing is not None:
            return False
        if self._outbox.qsize() >= self._bound:
            self.close(CLOSE_TRY_AGAIN, "receiver too slow: outgoing queue full, messages lost")
            return False
        self._outbox.put_nowait(text)
        return True

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close with ``code``; later sends are refused."""
        if self.closing is not None:
            return
        self.closing = _Close(code, reason[:120])
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(self.closing)

    async def pump(
        self,
        send_text: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
    ) -> None:
        """Write the outbox to the socket until :meth:`close` (run as the socket's writer)."""
        while True:
            item = await self._outbox.get()
            if isinstance(item, _Close):
                await close(item.code, item.reason)
                return
            await send_text(item)


class _Operator:
    """The monitoring scope of a socket that presented the operator token: everything."""

    def __repr__(self) -> str:
        return "OPERATOR"


OPERATOR = _Operator()


def _text(payload: Any) -> str:
    return msgspec.json.encode(payload).decode("utf-8")


class Switchboard:
    """Registrations, relays and monitor feeds of one HOMS instance."""

    def __init__(
        self,
        store: HomsStore,
        hub: MonitorHub,
        profile: Profile = "secure",
        *,
        fanout: Fanout | None = None,
        operator_token: str | None = None,
        limits: HomsLimits | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"signalling profile must be one of {PROFILES}, not {profile!r}")
        self.store = store
        self.hub = hub
        self.profile: Profile = profile
        self.fanout = fanout
        #: The operator credential of monitoring (``None``: only overlay admin keys work).
        self.operator_token = operator_token
        self.limits = limits
        self._peers: dict[str, Session] = {}
        self.sockets = 0
        self.verifier = CredentialVerifier({})
        #: Fresh nonces for credential challenges (tests may pin it).
        self.entropy: Callable[[int], bytes] = os.urandom
        #: Messages handled so far (after handling), so a client can tell when its last one was.
        self.messages = 0

    @property
    def secure(self) -> bool:
        return self.profile == "secure"

    def registered(self, peer_id: str) -> bool:
        return peer_id in self._peers

    def status(self) -> dict[str, Any]:
        """Counts for ``GET /api/SignallingStatus`` (OSM FE): no peer-ids, nothing secret."""
        return {
            "profile": self.profile,
            "sockets": self.sockets,
            "registered": len(self._peers),
            "monitors": self.hub.subscriber_count,
            "messages": self.messages,
            "multi-instance": self.fanout is not None,
        }

    def on_open(self, _session: Session) -> None:
        self.sockets += 1

    # ------------------------------------------------------------------ input

    async def on_message(self, session: Session, raw: str | bytes) -> None:
        """Handle one message from ``session``; never raises for bad input."""
        try:
            await self._handle(session, raw)
        finally:
            self.messages += 1

    async def _handle(self, session: Session, raw: str | bytes) -> None:
        if not session.limiter.take():
            self._refuse(session, "rate limit exceeded: closing this socket", None)
            session.close(CLOSE_POLICY, "rate limit exceeded")
            return
        try:
            msg = decode_client_message(raw)
        except WireError as exc:
            self._refuse(session, exc.reason, exc.field)
            return
        try:
            if isinstance(msg, Relay):
                await self._relay(session, msg)
            elif isinstance(msg, PeerHello):
                if msg.credential is not None and self.secure:
                    await self._challenge(session, msg)
                else:
                    await self._hello(session, msg)
            elif isinstance(msg, PeerProve):
                await self._prove(session, msg)
            elif isinstance(msg, PeerBye):
                self._bye(session, msg)
            elif isinstance(msg, MonitorHello):
                await self._authorise_monitor(session, msg.token, msg.overlay_id, msg.admin_key)
                self._subscribe(session)
            elif isinstance(msg, MonitorGet):
                await self._cost_map(session, msg)
        except HompError as exc:
            self._refuse(session, exc.message, exc.field)

    def on_close(self, session: Session) -> None:
        """The socket is gone: unregister its peer-ids (those still mapped to it)."""
        self.sockets -= 1
        for peer_id in list(session.identities):
            if self._peers.get(peer_id) is session:
                del self._peers[peer_id]
        session.identities.clear()
        session.proven.clear()
        session.challenges.clear()
        if session.monitor_task is not None:
            session.monitor_task.cancel()
            session.monitor_task = None

    # ------------------------------------------------------------------ from other instances

    def deliver(self, toid: str, text: str) -> bool:
        """A relay that arrived from another instance: send it if ``toid`` is held here."""
        target = self._peers.get(toid)
        return target is not None and target.send(text)

    def forget(self, peer_id: str) -> None:
        """Another instance registered ``peer_id`` after us: the newest registration wins."""
        session = self._peers.pop(peer_id, None)
        if session is not None:
            session.identities.pop(peer_id, None)
            session.proven.discard(peer_id)

    # ------------------------------------------------------------------ peers

    def _refuse(self, session: Session, reason: str, field: str | None) -> None:
        if not self.secure:
            log.debug("signalling: ignored (%s at %s)", reason, field)
            return
        error: dict[str, Any] = {"action": "error", "reason": reason}
        if field is not None:
            error["field"] = field
        session.send(_text(error))

    async def _hello(self, session: Session, msg: PeerHello) -> None:
        overlays: frozenset[str] = frozenset()
        if self.secure:
            if msg.password is None:
                hint = " (tokens are not issued by this HOMS)" if msg.token is not None else ""
                raise HompError(
                    401,
                    "hello needs the peer's HOMP `password` to register its peer-id" + hint,
                    "$.password",
                )
            overlays = await self.store.authenticate_peer(msg.peer_id, msg.password, msg.overlay_id)
            if not overlays:
                where = f"overlay {msg.overlay_id!r}" if msg.overlay_id else "any overlay"
                raise HompError(
                    401,
                    f"peer-id {msg.peer_id!r} with this password is not a member of {where}: "
                    "join first",
                    "$.password",
                )
        self._register(session, msg.peer_id, overlays)

    def _register(self, session: Session, peer_id: str, overlays: frozenset[str]) -> None:
        previous = self._peers.get(peer_id)
        if previous is not None and previous is not session:
            if peer_id in previous.proven:
                raise HompError(
                    409,
                    f"peer-id {peer_id!r} is registered by another live socket with its "
                    "credential; that socket must say bye (or close) first",
                    "$.peer-id",
                )
            previous.identities.pop(peer_id, None)
        self._peers[peer_id] = session
        session.identities[peer_id] = overlays
        if self.fanout is not None:
            self.fanout.announce_hello(peer_id)

    # ------------------------------------------------------------------ credential hello

    async def _challenge(self, session: Session, msg: PeerHello) -> None:
        """First half of a credential hello: check the credential, send a fresh nonce."""
        if msg.overlay_id is None:
            raise HompError(400, "a hello with `credential` names its `overlay-id`", "$.overlay-id")
        assert msg.credential is not None
        cred = await self._verified(msg.credential, msg.overlay_id, msg.peer_id)
        holder = self._peers.get(msg.peer_id)
        if holder is not None and holder is not session and msg.peer_id in holder.proven:
            raise HompError(
                409,
                f"peer-id {msg.peer_id!r} is registered by another live socket with its "
                "credential; that socket must say bye (or close) first",
                "$.peer-id",
            )
        if msg.peer_id not in session.challenges and len(session.challenges) >= MAX_CHALLENGES:
            raise HompError(
                429, f"more than {MAX_CHALLENGES} hellos awaiting their proof", "$.peer-id"
            )
        nonce = self.entropy(hello_proof.NONCE_BYTES)
        session.challenges[msg.peer_id] = (nonce, cred)
        session.send(_text({"action": "challenge", "peer-id": msg.peer_id, "nonce": nonce.hex()}))

    async def _verified(self, token: str, overlay_id: str, peer_id: str) -> Credential:
        """The credential, checked against this HOMS's keys and the stored membership."""
        store = self.store
        self.verifier.set_keys(
            {kid: parse_public_key(text) for kid, text in store.keyring.homs_keys().items()}
        )
        try:
            cred = self.verifier.check(token, store.now(), overlay_id, peer_id=peer_id)
        except CredentialError as exc:
            raise HompError(401, f"credential refused: {exc.reason}", "$.credential") from None
        public, live = await store.member_key(overlay_id, peer_id)
        if not live or public != public_key_text(cred.body.public_key):
            raise HompError(
                401,
                f"peer-id {peer_id!r} is not a live member of overlay {overlay_id!r} with this "
                "credential's key: join (again) first",
                "$.credential",
            )
        return cred

    async def _prove(self, session: Session, msg: PeerProve) -> None:
        """Second half: the nonce signed with the credential's key registers the peer-id."""
        pending = session.challenges.pop(msg.peer_id, None)
        if pending is None:
            raise HompError(
                400, f"no challenge for {msg.peer_id!r}: send hello with `credential`", "$.peer-id"
            )
        nonce, cred = pending
        body = cred.body
        ok = hello_proof.check(
            self.verifier.crypto,
            body.public_key,
            bytes.fromhex(msg.proof),
            body.overlay_id,
            body.peer_id,
            nonce,
            cred.digest,
        )
        if not ok:
            raise HompError(401, "the proof does not verify with the credential's key", "$.proof")
        # Re-checked now: the member may have left, or its credential expired, meanwhile.
        await self._verified(cred.token, body.overlay_id, body.peer_id)
        self._register(session, body.peer_id, frozenset({body.overlay_id}))
        session.proven.add(body.peer_id)
        session.send(
            _text({"action": "registered", "peer-id": body.peer_id, "overlay-id": body.overlay_id})
        )

    def _bye(self, session: Session, msg: PeerBye) -> None:
        if self.secure and msg.peer_id not in session.identities:
            raise HompError(403, f"this socket has not registered {msg.peer_id!r}", "$.peer-id")
        # The reference unregisters the id whichever socket holds it.
        holder = self._peers.pop(msg.peer_id, None)
        if holder is not None:
            holder.identities.pop(msg.peer_id, None)
            holder.proven.discard(msg.peer_id)
        session.identities.pop(msg.peer_id, None)
        session.proven.discard(msg.peer_id)

    async def _relay(self, session: Session, msg: Relay) -> None:
        message = msg.message
        if self.secure:
            sender = self._sender(session, msg.fromid)
            message = {**message, "fromid": sender}
            if not await self.store.share_overlay(sender, session.identities[sender], msg.toid):
                raise HompError(
                    403, f"{msg.toid!r} is not a member of an overlay you belong to", "$.toid"
                )
        text = _text(message)
        target = self._peers.get(msg.toid)
        if target is not None:
            target.send(text)
            return
        if self.fanout is not None:
            self.fanout.relay(msg.toid, text)
            return
        self._refuse(session, f"{msg.toid!r} is not connected to the signalling channel", "$.toid")

    def _sender(self, session: Session, fromid: str | None) -> str:
        """The peer-id a secure relay is sent as: the socket's own, never someone else's."""
        if not session.identities:
            raise HompError(401, "say hello with your peer-id and password first", "$")
        if fromid is None:
            if len(session.identities) == 1:
                return next(iter(session.identities))
            raise HompError(400, "this socket holds several peer-ids: give `fromid`", "$.fromid")
        if fromid not in session.identities:
            raise HompError(
                403, f"fromid {fromid!r} is not a peer-id this socket registered", "$.fromid"
            )
        return fromid

    # ------------------------------------------------------------------ monitors

    async def _authorise_monitor(
        self,
        session: Session,
        token: str | None,
        overlay_id: str | None,
        admin_key: str | None,
    ) -> None:
        """Widen the socket's monitoring scope with the credential it presents.

        ``secure``: the operator token (every overlay) or an overlay's admin key (that overlay
        only); a socket without either may not monitor. ``etri-2023``: anyone may, as with the
        reference (that profile is for reference peers and UI on a trusted network).
        """
        if not self.secure:
            session.monitor_scope = OPERATOR
            return
        if token is not None:
            expected = self.operator_token
            if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
                raise HompError(401, "wrong operator token", "$.token")
            session.monitor_scope = OPERATOR
            return
        if overlay_id is not None and admin_key is not None:
            if self.limits is not None:
                self.limits.check_admin(session.address, overlay_id, "$.admin_key")
            if not await self.store.verify_admin_key(overlay_id, admin_key):
                if self.limits is not None:
                    self.limits.admin_failed(session.address, overlay_id)
                raise HompError(401, f"wrong admin_key for overlay {overlay_id!r}", "$.admin_key")
            if not isinstance(session.monitor_scope, _Operator):
                session.monitor_scope = session.monitor_scope | {overlay_id}
            return
        if session.monitor_scope == frozenset():
            raise HompError(
                401,
                "monitoring needs the operator token (`token`, printed when the HOMS starts) "
                "or an overlay's `overlay_id` and `admin_key`",
                "$.token",
            )

    def _may_monitor(self, session: Session, overlay_id: Any) -> bool:
        scope = session.monitor_scope
        return isinstance(scope, _Operator) or overlay_id in scope

    def _subscribe(self, session: Session) -> None:
        if session.monitor_task is not None:
            return  # already subscribed; the reference also just keeps one feed
        subscription = self.hub.subscribe()

        async def feed() -> None:
            try:
                async with subscription:
                    async for event in subscription:
                        if not self._may_monitor(session, event.get("overlay_id")):
                            continue
                        if not session.send(_text(event)):
                            return
            except SubscriberLagged:
                session.close(
                    CLOSE_TRY_AGAIN, "monitor fell behind and lost events: reconnect, re-read"
                )

        session.monitor_task = asyncio.create_task(feed(), name="hp2p-homs-monitor-feed")

    async def _cost_map(self, session: Session, msg: MonitorGet) -> None:
        if msg.token is not None or msg.admin_key is not None:
            await self._authorise_monitor(session, msg.token, msg.overlay_id, msg.admin_key)
        if not self._may_monitor(session, msg.overlay_id):
            # the same answer whether the overlay exists or not: no probing without a key
            raise HompError(
                401,
                f"monitoring overlay {msg.overlay_id!r} needs the operator token (`token`) "
                "or that overlay's `admin_key`",
                "$.overlay_id",
            )
        try:
            members = await self.store.peers(msg.overlay_id)
        except HompError as exc:
            raise HompError(404, exc.message, "$.overlay_id") from exc
        session.send(_text(cost_map(msg.overlay_id, members)))
