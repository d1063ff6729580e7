"""Link admission: no path, slot, buffermap or data before the peer behind a link is a member.

On an overlay that requires credentials (docs/security.md), every R2 connection starts with
AUTH. The dialer sends its membership credential and a fresh nonce; the responder checks the
credential (signed by a HOMS key the overlay trusts, for this overlay, not expired) and answers
with its own credential, its nonce and its proof (a signature by its credential's key over
both nonces and both credentials); the dialer checks that, and sends its own proof. Each side
then holds the other's verified credential for the connection, and the procedures use *it*
(peer-id, ticket) rather than what later messages claim.

The state per connection is kept only while the exchange runs and is bounded: at most
``max_pending`` exchanges at once (the rest are refused at their first AUTH), each finished or
dropped within ``timeout`` seconds, at most ``max_pending_per_peer`` of them for one peer-id.
Everything else a not-yet-admitted connection sends is a protocol error that closes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hp2p.trust import link as link_proof
from hp2p.trust.credential import Credential, CredentialError, CredentialVerifier, decode
from hp2p.trust.keys import Verifier
from hp2p.trust.membership import Membership
from hp2p.wire.r2.messages import AUTH_OK, AUTH_REFUSED, Auth, AuthResponse

if TYPE_CHECKING:
    from hp2p.peer.kernel import Kernel

DEFAULT_MAX_PENDING: Final = 64
DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_MAX_PENDING_PER_PEER: Final = 2


@dataclass(slots=True, eq=False)
class _Exchange:
    """One AUTH exchange in progress."""

    dialer: bool
    nonce: bytes
    started: float
    their_nonce: bytes = b""
    their: Credential | None = None


@dataclass(slots=True)
class AdmissionCounters:
    admitted: int = 0
    refused: int = 0
    """Links refused: bad, forged, expired or foreign credentials, bad proofs, out of order."""
    busy: int = 0
    """First AUTHs refused because ``max_pending`` exchanges were already running."""
    tls_checked: int = 0
    """Dialled TLS links whose certificate key the responder's credential names."""


class Admission:
    """The kernel's admission procedure, shared by the tree and the mesh cores."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_per_peer: int = DEFAULT_MAX_PENDING_PER_PEER,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.kernel = kernel
        self.max_pending = max_pending
        self.max_pending_per_peer = max_pending_per_peer
        self.timeout = timeout
        self.membership: Membership | None = None
        self.overlay_id = ""
        self.own: Credential | None = None
        self.verifier = CredentialVerifier({})
        self.proofs = Verifier(max_keys=1024)
        self.pending: dict[int, _Exchange] = {}
        #: Dialled TLS connections: the key of the certificate the responder presented. Its
        #: credential must name that key, or a man in the middle holds the TLS session.
        self.channel_keys: dict[int, bytes] = {}
        self.counters = AdmissionCounters()
        self.entropy: Callable[[int], bytes] = kernel.rng.randbytes
        """Where nonces come from; the shell sets ``os.urandom``, the simulator keeps its rng."""
        self.on_refused: Callable[[int, str, float], None] = lambda conn, reason, now: None
        """The core forgets the refused connection's link (the kernel has closed it)."""

    # === configuration ===========================================================================
    def configure(self, overlay_id: str, membership: Membership | None) -> None:
        """Take the membership of a (new) join; ``None`` turns admission off (open overlay)."""
        self.overlay_id = overlay_id
        self.membership = membership
        self.pending.clear()
        if membership is None:
            self.own = None
            return
        self.own = decode(membership.credential)
        self.verifier.set_keys(membership.homs_keys)

    def renew(self, membership: Membership) -> None:
        """A refreshed credential (same key): used for links admitted from now on."""
        self.membership = membership
        self.own = decode(membership.credential)
        self.verifier.set_keys(membership.homs_keys)

    @property
    def required(self) -> bool:
        """Whether every link must be admitted (the ``credentials`` profile)."""
        m = self.membership
        return m is not None and m.required

    def wall(self, now: float) -> float:
        m = self.membership
        return now if m is None else now + m.clock_offset

    def check(self, token: str, now: float, peer_id: str | None = None) -> Credential:
        """A credential for this overlay, verified; :class:`CredentialError` says why not."""
        return self.verifier.check(token, self.wall(now), self.overlay_id, peer_id=peer_id)

    # === the exchange ============================================================================
    def bind(self, conn: int, certificate_key: bytes) -> None:
        """The shell dialled ``conn`` over TLS and saw this certificate key."""
        self.channel_keys[conn] = certificate_key

    def dial(self, conn: int, now: float) -> None:
        """An outgoing connection is up: send step 1."""
        if self.own is None:
            self.refuse(conn, "this peer holds no credential for the overlay", now)
            return
        exchange = _Exchange(dialer=True, nonce=self.entropy(link_proof.NONCE_BYTES), started=now)
        self.pending[conn] = exchange
        self.kernel.send((conn,), Auth(credential=self.own.token, nonce=exchange.nonce))

    def on_auth(self, conn: int, msg: Auth, now: float) -> Credential | None:
        """Responder side. The dialer's credential once its proof checked, else None."""
        exchange = self.pending.get(conn)
        if exchange is None:
            return self._step1(conn, msg, now)
        if exchange.dialer or exchange.their is None or msg.proof is None:
            self.refuse(conn, "AUTH out of order", now)
            return None
        their, own = exchange.their, self.own
        if own is None:
            self.refuse(conn, "this peer holds no credential for the overlay", now)
            return None
        ok = link_proof.check(
            self.proofs,
            their.body.public_key,
            msg.proof,
            "dialer",
            exchange.their_nonce,
            exchange.nonce,
            their.digest,
            own.digest,
            overlay_id=self.overlay_id,
        )
        if not ok:
            self.refuse(conn, "the dialer's proof of key possession does not verify", now)
            return None
        del self.pending[conn]
        self.kernel.send((conn,), AuthResponse(code=AUTH_OK))
        self.counters.admitted += 1
        return their

    def _step1(self, conn: int, msg: Auth, now: float) -> Credential | None:
        own, membership = self.own, self.membership
        if own is None or membership is None:
            self.refuse(conn, "this overlay runs without credentials", now)
            return None
        if msg.credential is None or msg.nonce is None:
            self.refuse(conn, "AUTH step 1 carries a credential and a nonce", now)
            return None
        if len(self.pending) >= self.max_pending:
            self.expire(now)
            if len(self.pending) >= self.max_pending:
                self.counters.busy += 1
                self.refuse(conn, "too many links being admitted at once; retry later", now)
                return None
        try:
            their = self.check(msg.credential, now)
        except CredentialError as exc:
            self.refuse(conn, f"credential refused: {exc.reason}", now)
            return None
        peer = their.body.peer_id
        same = sum(
            1 for e in self.pending.values() if e.their is not None and e.their.body.peer_id == peer
        )
        if same >= self.max_pending_per_peer:
            # A credential travels in the clear: whoever saw one may replay step 1 without the
            # key. Such a replay never finishes, so it may hold only a couple of slots.
            self.counters.busy += 1
            self.refuse(conn, f"peer {peer!r} already has links being admitted; retry later", now)
            return None
        exchange = _Exchange(
            dialer=False,
            nonce=self.entropy(link_proof.NONCE_BYTES),
            started=now,
            their_nonce=msg.nonce,
            their=their,
        )
        self.pending[conn] = exchange
        proof = link_proof.prove(
            membership.key,
            "responder",
            msg.nonce,
            exchange.nonce,
            their.digest,
            own.digest,
            overlay_id=self.overlay_id,
        )
        self.kernel.send(
            (conn,),
            AuthResponse(code=AUTH_OK, credential=own.token, nonce=exchange.nonce, proof=proof),
        )
        return None

    def on_auth_response(
        self, conn: int, msg: AuthResponse, now: float, expect: str | None
    ) -> Credential | None:
        """Dialer side: the responder's verified credential (step 2 sent), else None.

        ``expect`` is the peer-id the dialer meant to reach, when it knows one: a link that
        turns out to belong to someone else is refused.
        """
        exchange = self.pending.get(conn)
        if exchange is None or not exchange.dialer:
            if msg.code == AUTH_OK and msg.credential is None:
                return None  # the responder's acknowledgement of step 2: nothing to do
            self.refuse(conn, "AUTH response out of order", now)
            return None
        if msg.code != AUTH_OK:
            self.pending.pop(conn, None)
            self.counters.refused += 1
            reason = f"refused by the peer: {msg.reason or 'no reason given'}"
            self.kernel.error(conn, reason)
            self.on_refused(conn, reason, now)
            return None
        if msg.credential is None or msg.nonce is None or msg.proof is None:
            self.refuse(conn, "AUTH response carries a credential, a nonce and a proof", now)
            return None
        try:
            their = self.check(msg.credential, now, peer_id=expect)
        except CredentialError as exc:
            self.refuse(conn, f"credential refused: {exc.reason}", now)
            return None
        own, membership = self.own, self.membership
        if own is None or membership is None:
            self.refuse(conn, "this peer holds no credential for the overlay", now)
            return None
        bound = self.channel_keys.pop(conn, None)
        if bound is not None and bound != their.body.public_key:
            self.refuse(
                conn,
                "the TLS certificate is not the key of the responder's credential "
                "(a man in the middle?)",
                now,
            )
            return None
        if bound is not None:
            self.counters.tls_checked += 1
        parts = (exchange.nonce, msg.nonce, own.digest, their.digest)
        if not link_proof.check(
            self.proofs,
            their.body.public_key,
            msg.proof,
            "responder",
            *parts,
            overlay_id=self.overlay_id,
        ):
            self.refuse(conn, "the responder's proof of key possession does not verify", now)
            return None
        del self.pending[conn]
        proof = link_proof.prove(membership.key, "dialer", *parts, overlay_id=self.overlay_id)
        self.kernel.send((conn,), Auth(proof=proof))
        self.counters.admitted += 1
        return their

    # === failures and housekeeping ===============================================================
    def refuse(self, conn: int, reason: str, now: float = 0.0) -> None:
        """Tell the peer why, count it, and close the connection (the core drops the link)."""
        self.pending.pop(conn, None)
        self.channel_keys.pop(conn, None)
        self.counters.refused += 1
        self.kernel.send((conn,), AuthResponse(code=AUTH_REFUSED, reason=reason))
        self.kernel.error(conn, reason)
        self.on_refused(conn, reason, now)

    def not_admitted(self, conn: int, message: object, now: float) -> None:
        """Anything but AUTH on a link that has not proven membership: refused, closed."""
        self.refuse(conn, f"{type(message).__name__} before link admission (send AUTH first)", now)

    def forget(self, conn: int) -> None:
        self.pending.pop(conn, None)
        self.channel_keys.pop(conn, None)

    def expire(self, now: float) -> list[int]:
        """Connections whose exchange outlived ``timeout``: refused, returned for the core."""
        late = [c for c, e in self.pending.items() if now - e.started > self.timeout]
        for conn in late:
            self.refuse(conn, f"link admission did not finish within {self.timeout:g} s", now)
        return late
