"""The SubMesh core (Q.4100 §6): a sans-IO pull mesh for large objects, fed with ``(input, now)``.

A SubMesh has one source peer. It cuts each object into pieces (numbering and manifest in
:mod:`hp2p.peer.mesh_objects`) and announces them; every peer keeps a set of mesh neighbours
picked from the HOMS's random peer lists (PLM FE), tells them what it holds with BUFFERMAP, and
pulls what it lacks with GET_DATA, **rarest first**, from several neighbours in parallel. So the
source uploads each piece about once and the mesh spreads the rest, and a late joiner pulls the
history from the piece store of whoever holds it.

Why pull and not push: large objects pushed down a tree cross each tree link whole and stall
behind the slowest hop; pulled pieces take many paths at once and a lost neighbour costs only
its in-flight requests. The price is one BUFFERMAP announcement per piece per neighbour and one
GET_DATA per piece, a few percent of the bytes (measured by ``hp2p bench mesh``).

R2 mapping (hp2p speaks only existing R2 messages on a mesh link):

* ``HELLO`` (with ``hp2p: {"mesh": 1}``) opens a mesh link; 1202 accepts it, ``RELEASE``
  refuses it (full, duplicate, banned) and the link closes.
* ``BUFFERMAP`` (10) asks a neighbour for its whole buffermap; ``BUFFERMAP`` responses (10200)
  are *additive*: they are sent unasked on every link-up (the whole map, in chunks) and on news
  (only the new sequences, only to neighbours not known to hold them).
* ``GET_DATA`` (11) asks for one piece; 11200 carries it, 11404 says "not held".
* ``HEARTBEAT`` (8) on idle links; a neighbour silent for ``heartbeat_timeout`` is dropped.

Everything is bounded: neighbours, known peers, requests in flight (per neighbour and total),
the piece store (bytes and objects, oldest objects evicted whole), banned peers. A piece that
does not match its manifest is counted, its sender gets a strike (dropped and banned after
``max_strikes``) and the piece is pulled again from another neighbour.

Signed manifests (issue #7): the piece hashes are only as good as the manifest that lists
them, so when the source's public key is known (HOMS ``source-key`` or pinned by the
operator) a manifest is accepted only with a valid signature of the source
(:mod:`hp2p.peer.mesh_objects`). A refused manifest is counted (``bad_signatures`` or
``unsigned_refused``), reported as a protocol error, earns its sender a strike, and that
neighbour is never asked for it again: the manifest comes from another holder. Without a key
the mesh behaves as before signing existed (``manifests_unverified`` counts what was taken on
trust), unless ``require_signatures`` is set: then no manifest is even requested until a key
is known. A peer that meets a signed manifest without knowing a key asks its shell once for
the HOMS's record (``SourceKeyWanted``) before it takes anything on trust, which closes the
window where a peer joined before the source recorded its key.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hp2p.peer.effects import Close, Connect, HomsReport, ProtocolError, Send
from hp2p.peer.errors import NotSourceError as NotSourceError
from hp2p.peer.kernel import Kernel
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_holdings import MeshHoldings
from hp2p.peer.mesh_links import MeshLink, MeshLinks
from hp2p.peer.mesh_objects import (
    Manifest,
    ManifestSigner,
    parse_public_key,
    public_key_text,
)
from hp2p.peer.mesh_pull import MeshPuller
from hp2p.peer.mesh_store import MemoryPieceStore, PieceStore
from hp2p.trust.membership import Membership
from hp2p.wire.r2.messages import (
    AUTH_OK,
    Auth,
    AuthResponse,
    Buffermap,
    BuffermapResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    HeartbeatResponse,
    Hello,
    HelloResponse,
    Message,
    Release,
    ReleaseResponse,
)

#: ``wants(object_number, manifest)``: does the application want this object's data?
WantsData = Callable[[int, Manifest], bool]


# --- effects only the mesh core emits (the shared ones come from hp2p.peer.effects) ----------
@dataclass(frozen=True, slots=True)
class ObjectReceived:
    """A whole object, every piece and the object hash verified: deliver it, exactly once."""

    object_number: int
    data: bytes
    app_id: str | None
    meta: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class PeerListWanted:
    """Too few neighbours and no untried address: ask the HOMS for a fresh random peer list.

    Answer with ``MeshCore.homs_result(peers, now)`` (``POST /peer?recovery=true`` in HOMP).
    """


@dataclass(frozen=True, slots=True)
class SourceKeyWanted:
    """The core needs the source's public key: ask the HOMS (``GET /homs``, ``source-key``).

    Answer with ``MeshCore.set_source_key(key_or_None, now)``; an unanswered request is given
    up after ``request_timeout`` (then the core goes on as if the HOMS had no key).
    """


@dataclass(frozen=True, slots=True)
class BecameSource:
    """A standby took over from an unreachable source; its first object number follows."""

    first_object: int


MeshEffect = (
    Connect
    | Send
    | Close
    | ProtocolError
    | HomsReport
    | ObjectReceived
    | PeerListWanted
    | SourceKeyWanted
    | BecameSource
)


@dataclass(frozen=True, slots=True)
class MeshJoinInfo:
    """What the HOMS join told the shell: the overlay, its source, a ticket and a peer list."""

    overlay_id: str
    source_id: str
    ticket: int
    peers: tuple[tuple[str, str], ...]
    #: Standby for the source: watch ``source_address`` and publish in its place when gone.
    standby: bool = False
    source_address: str | None = None
    #: The source's Ed25519 public key (``ed25519:<hex>``) from the HOMS or pinned; None: none.
    source_key: str | None = None
    #: This peer's key and HOMS credential (issue #11); None: the overlay runs without them.
    membership: Membership | None = None


@dataclass
class MeshCounters:
    """What a person debugging a mesh wants to see (in ``status()``)."""

    pieces_received: int = 0
    pieces_served: int = 0
    misses_served: int = 0  # 11404 answers
    requests_sent: int = 0
    timeouts: int = 0
    misses: int = 0  # 11404 received
    forged: int = 0  # pieces or manifests that failed verification
    bad_signatures: int = 0  # signed manifests whose signature is malformed or wrong
    unsigned_refused: int = 0  # manifests without a signature while a key is known/required
    manifests_verified: int = 0  # signature checked against the source key
    manifests_unverified: int = 0  # accepted without a key to check (interoperable mode)
    key_requests: int = 0  # SourceKeyWanted asked of the shell
    bad_objects: int = 0  # every piece matched but the object hash did not
    unsolicited: int = 0
    foreign_source: int = 0  # buffermap/data for a source that is not the overlay's
    objects_delivered: int = 0
    objects_evicted: int = 0
    bytes_received: int = 0
    bytes_served: int = 0
    banned: int = 0
    refused_links: int = 0
    peer_list_requests: int = 0
    protocol_errors: int = 0


class MeshCore(Kernel):
    """One SubMesh peer's decisions: a thin composition of its neighbour set
    (:mod:`hp2p.peer.mesh_links`), its holdings (:mod:`hp2p.peer.mesh_holdings`) and its pull
    schedule (:mod:`hp2p.peer.mesh_pull`) over the shared kernel. See the module docstring and
    docs/sub-overlays.md."""

    def __init__(
        self,
        config: MeshConfig,
        peer_id: str,
        address: str,
        rng: random.Random,
        *,
        store: PieceStore | None = None,
        signer: ManifestSigner | None = None,
    ) -> None:
        self.counters = MeshCounters()
        super().__init__(peer_id, address, rng, self.counters)
        self.config = config
        self.store: PieceStore = store if store is not None else MemoryPieceStore()
        self.overlay_id = ""
        self.source_id = ""
        self.ticket = 0
        self.is_source = False
        self.standby = False
        self.started = False
        self.left = False
        #: The source's private key: used only while this peer publishes (source, or standby
        #: after take-over); None: manifests go out unsigned.
        self.signer = signer
        self.source_key: Ed25519PublicKey | None = None
        self.key_asked = False  # the shell was asked once, answered or timed out
        self._key_deadline: float | None = None  # asking now; gives up at this time
        self._next_key_request = 0.0
        self._next_maintenance: float | None = None
        self.gated = False  # links must pass admission (an overlay that requires credentials)
        self.links = MeshLinks(self)
        self.holdings = MeshHoldings(self)
        self.pull = MeshPuller(self)
        #: the application's want-predicate (None: every object, the SubMesh default)
        self.wants: WantsData | None = None

    # === outputs =================================================================================
    def next_timer(self) -> float | None:
        """The earliest time ``handle_timer`` must run (None: nothing pending)."""
        times = [self._key_deadline, self._next_maintenance, self.pull.next_deadline()]
        return min((t for t in times if t is not None), default=None)

    @property
    def neighbours(self) -> list[str]:
        return sorted(self.links.neighbours)

    def holds(self, object_number: int) -> bool:
        """Is the whole object held (and verified)?"""
        return self.holdings.holds(object_number)

    def objects(self) -> list[int]:
        """Object numbers wholly held, ascending."""
        return sorted(o for o in self.holdings.objects if self.holdings.holds(o))

    def manifest(self, object_number: int) -> Manifest | None:
        return self.holdings.manifests.get(object_number)

    def read_object(self, object_number: int) -> bytes | None:
        """The object's bytes from the store, if wholly held."""
        return self.holdings.read_object(object_number)

    def status(self) -> dict[str, Any]:
        holdings = self.holdings
        return {
            "peer-id": self.peer_id,
            "overlay-id": self.overlay_id,
            "source-id": self.source_id,
            "is-source": self.is_source,
            "standby": self.standby,
            "neighbours": self.neighbours,
            "links": len(self.links.links),
            "objects": len(self.objects()),
            "pieces": len(holdings.have),
            "store-bytes": holdings.bytes,
            "requests-in-flight": len(self.pull.requests),
            "parked": len(self.pull.parked),
            "floor": holdings.floor,
            "signatures": {
                "source-key": public_key_text(self.source_key) if self.source_key else None,
                "required": self.config.require_signatures,
                "signing": self.signer.public_text if self.signer else None,
                "waiting-for-key": self.awaiting_key(),
            },
            "counters": dict(vars(self.counters)),
            "admission": {"required": self.gated, "pending": len(self.admission.pending)}
            | dataclasses.asdict(self.admission.counters),
        }

    # === inputs ==================================================================================
    def start(self, info: MeshJoinInfo, now: float) -> None:
        """Begin: remember the peer list, load the store, open links, arm the timer."""
        if self.started:
            raise RuntimeError("MeshCore.start() called twice")
        self.started = True
        self.overlay_id = info.overlay_id
        self.source_id = info.source_id
        self.ticket = info.ticket
        self.admission.configure(info.overlay_id, info.membership)
        self.admission.on_refused = self._refused
        self.gated = self.admission.required
        self.is_source = info.source_id == self.peer_id
        self.standby = info.standby and not self.is_source
        self.links.source_address = info.source_address
        if info.source_key is not None:
            self.source_key = parse_public_key(info.source_key)
            self.key_asked = True
        signer, key = self.signer, self.source_key
        if self.is_source and signer and key and signer.public_text != public_key_text(key):
            raise ValueError(
                f"this source's key {signer.public_text} is not the key the SubMesh records "
                f"for it ({public_key_text(key)}): peers would refuse every manifest. Use the "
                "key file the source was first started with."
            )
        if self.is_source and self.signer is not None and self.source_key is None:
            self.source_key = self.signer.public_key  # re-check its own store on restart
        self.holdings.load()
        self.links.learn(info.peers)
        self.links.next_buffermap = now + self.config.buffermap_interval
        self._maintain(now)
        self._after(now)

    def set_source_key(self, key: str | None, now: float) -> None:
        """The source's public key, learnt after start (HOMS answer to ``SourceKeyWanted``).

        ``None`` means "the HOMS records none". A key once known is never dropped or replaced
        here: replacing a trust root is an operator decision (restart with ``--source-key``).
        """
        self._key_deadline = None
        self.key_asked = True
        if key is not None and self.source_key is None:
            self.source_key = parse_public_key(key)
        self._after(now)

    def awaiting_key(self) -> bool:
        return self.source_key is None and (
            self._key_deadline is not None or self.config.require_signatures
        )

    def want_key(self, now: float) -> None:
        """Ask the shell for the HOMS's key, at most once per ``peer_list_interval``."""
        if self._key_deadline is not None or now < self._next_key_request:
            return
        self._next_key_request = now + self.config.peer_list_interval
        self._key_deadline = now + self.config.request_timeout
        self.counters.key_requests += 1
        self.effects.append(SourceKeyWanted())

    def homs_result(self, peers: list[tuple[str, str]], now: float) -> None:
        """A HOMS peer list (join or recovery): new addresses to fill the neighbour set from."""
        self.links.learn(tuple(peers))
        self._maintain(now)
        self._after(now)

    def accept(self, now: float) -> int:
        """The shell accepted an incoming connection: its id. The remote must HELLO first."""
        return self.links.accept(now)

    def connection_made(self, conn: int, now: float) -> None:
        self.links.connection_made(conn, now)
        self._after(now)

    def connection_failed(self, conn: int, now: float) -> None:
        self.connection_lost(conn, now)

    def connection_lost(self, conn: int, now: float) -> None:
        self.admission.forget(conn)
        link = self.links.links.get(conn)
        if link is None:
            return
        self.links.remove(link, now, backoff=True)
        self._maintain(now)
        self._after(now)

    def receive(self, conn: int, message: Message, now: float) -> None:
        """One decoded R2 message on connection ``conn``. Never raises on peer input."""
        links = self.links
        link = links.links.get(conn)
        if link is None:
            return
        link.last_rx = now
        if self.gated and link.cred is None:
            self._admit(link, message, now)
        elif type(message) is AuthResponse and message.code == AUTH_OK and not message.credential:
            pass  # the responder's acknowledgement of the dialer's proof
        elif link.state == "incoming":
            if isinstance(message, Hello):
                links.on_hello(link, message, now)
            else:
                self.link_error(link, f"{type(message).__name__} before HELLO on a mesh link")
                links.drop(link, now)
        elif link.state == "hello":
            if isinstance(message, HelloResponse):
                links.on_hello_response(link, now)
            elif isinstance(message, Release):
                links.refused(link, message, now)
            else:
                self.link_error(link, f"{type(message).__name__} before 1202 on a mesh link")
                links.drop(link, now)
        elif link.state == "up":
            self._on_message(link, message, now)
        self._after(now)

    def _admit(self, link: MeshLink, msg: Message, now: float) -> None:
        """Before admission only AUTH moves (docs/security.md); anything else closes the link."""
        admission = self.admission
        if isinstance(msg, Auth) and not link.outgoing:
            link.cred = admission.on_auth(link.conn, msg, now)
        elif isinstance(msg, AuthResponse) and link.outgoing and link.state == "auth":
            cred = admission.on_auth_response(link.conn, msg, now, link.peer_id)
            if cred is not None:
                link.cred = cred
                self.links.send_hello(link, now)
        else:
            admission.not_admitted(link.conn, msg, now)

    def _refused(self, conn: int, reason: str, now: float) -> None:
        link = self.links.links.get(conn)
        if link is not None:
            self.links.drop(link, now, backoff=True)

    def _on_message(self, link: MeshLink, msg: Message, now: float) -> None:
        if isinstance(msg, GetDataResponse):
            self.pull.on_piece(link, msg, now)
        elif isinstance(msg, BuffermapResponse):
            self.pull.on_buffermap_response(link, msg)
        elif isinstance(msg, GetData):
            self.holdings.serve(link, msg, now)
        elif isinstance(msg, Buffermap):
            self.links.send_buffermap(link, sorted(self.holdings.have), now)
        elif isinstance(msg, Heartbeat):
            pass  # last_rx is already updated
        elif isinstance(msg, Release):
            if msg.ack:
                self.links.send(link, ReleaseResponse(), now)
            self.links.drop(link, now, backoff=True)
        elif isinstance(msg, HeartbeatResponse | ReleaseResponse | HelloResponse):
            pass
        else:
            self.link_error(link, f"{type(msg).__name__} is not used on a mesh link")

    def publish(
        self,
        data: bytes,
        now: float,
        *,
        app_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Publish one object (source only): store its pieces and announce them.

        Returns the object number. Raises :class:`NotSourceError` on any other peer and
        ``ValueError`` for an object the store or the numbering cannot hold.
        """
        if not self.is_source:
            raise NotSourceError(
                f"only the source peer {self.source_id!r} of SubMesh {self.overlay_id!r} may "
                f"publish; this peer is {self.peer_id!r}. Publish at the source (or through an "
                "R3 bridge that feeds it)."
            )
        number = self.holdings.publish(data, app_id, meta)
        self._after(now)
        return number

    def handle_timer(self, now: float) -> None:
        if self._key_deadline is not None and self._key_deadline <= now:
            # the shell never answered: go on as if the HOMS had no key
            self._key_deadline = None
            self.key_asked = True
        self.pull.expire(now)
        if self.admission.pending:
            self.admission.expire(now)
        if self._next_maintenance is not None and self._next_maintenance <= now:
            self._next_maintenance = None
            self._maintain(now)
        self._after(now)

    def leave(self, now: float) -> None:
        """Release every link and stop; the core ignores later inputs except ``take_effects``."""
        self.links.close_all(now)
        self.pull.requests.clear()
        self.pull.availability.clear()
        self.pull.parked.clear()
        self._next_maintenance = None
        self.left = True

    def prioritise(self, objects: list[int], now: float) -> None:
        """Pull these objects before any other (replaces the previous wish; [] clears it).

        An application waiting for particular objects (a history query) gets them first
        instead of after a long backfill; at most ``fetch_window`` of them count at a time.
        """
        before = self.pull.priority
        self.pull.priority = frozenset(sorted(objects)[: 4 * self.config.fetch_window])
        self.pull.rewant(sorted(before | self.pull.priority))
        self._after(now)

    # === which objects' data the application wants ==========================================
    def set_wants(self, wants: WantsData | None, now: float) -> None:
        """Pull data only for objects ``wants(number, manifest)`` accepts (None: all).

        Manifests are always pulled. An object not wanted is parked: not requested, not in
        the pull window, but its holders are still counted, so :meth:`prioritise` fetches it
        on demand. An object with some data already held is always finished.
        """
        self.wants = wants
        self.rewant(now)

    def rewant(self, now: float) -> None:
        """The answers of the want-predicate may have changed (e.g. a member set): ask again."""
        self.pull.rewant()
        self._after(now)

    def wanted(self, obj: int) -> bool:
        """Is the data of ``obj`` to be pulled now? (See :meth:`set_wants`.)"""
        if self.wants is None or obj in self.pull.priority:
            return True
        manifest = self.holdings.manifests.get(obj)
        if manifest is None or len(self.holdings.objects.get(obj, ())) > 1:
            return True  # its manifest is pulled first; what was begun is finished
        return self.wants(obj, manifest)

    def release(self, obj: int, now: float) -> bool:
        """Let the data of a delivered object go, keeping its manifest (an application that
        fetched it on demand and does not keep it). It is fetched again only if wanted or
        prioritised anew (it leaves the current wish); neighbours asking for it get 11404.
        Returns whether anything went."""
        if not self.holdings.release_data(obj):
            return False
        # a wish that brought it is fulfilled: without this it would be fetched again at once
        self.pull.priority = self.pull.priority - {obj}
        self.pull.relearn(obj)
        self._after(now)
        return True

    def forget_below(self, floor: int, now: float) -> int:
        """Drop every object numbered below ``floor`` and never fetch those again.

        The application's retention (an IoT history keeps so many days): the objects leave
        the store whole, like evicted ones, and raise the floor. Returns how many were held.
        """
        holdings = self.holdings
        gone = sorted(o for o in holdings.objects if o < floor)
        for obj in gone:
            holdings.discard_object(obj)
        if floor > holdings.floor:
            holdings.floor = floor
            self.pull.below_floor(floor)
            holdings.delivered = {o for o in holdings.delivered if o >= floor}
        self._after(now)
        return len(gone)

    def take_over(self, now: float) -> int:
        """Become the publisher of this SubMesh (standby bridge). Returns the first object.

        Numbering continues after the highest object this peer has heard of, so receivers see
        one unbroken source; objects the old source published but nobody announced are lost
        to the mesh and must be re-published by the caller (the bridge knows them by ``meta``).
        """
        if not self.standby:
            raise NotSourceError(
                f"peer {self.peer_id!r} is not a standby of {self.source_id!r}; it cannot take over"
            )
        holdings = self.holdings
        heard = list(self.pull.availability)
        highest = max([*holdings.objects, *heard, holdings.next_object - 1])
        holdings.next_object = highest + 1
        self.is_source = True
        self.standby = False
        self.effects.append(BecameSource(holdings.next_object))
        return holdings.next_object

    # === shared by the parts =====================================================================
    def _after(self, now: float) -> None:
        """End of every input: announce news, pull what is missing."""
        if self.left:
            return
        holdings = self.holdings
        if holdings.news:
            news, holdings.news = holdings.news, []
            self.links.announce(news, now)
        self.pull.schedule(now)

    def _maintain(self, now: float) -> None:
        c = self.config
        if self.left or not self.started:
            return
        self.links.maintain(now)
        if c.require_signatures and self.source_key is None and self.pull.availability:
            self.want_key(now)
        self.links.top_up(now)
        self.bump_maintenance(now + min(c.heartbeat_interval, c.connect_timeout) / 2)

    def bump_maintenance(self, at: float) -> None:
        if self._next_maintenance is None or at < self._next_maintenance:
            self._next_maintenance = at

    def want_peer_list(self) -> None:
        self.effects.append(PeerListWanted())

    def object_received(self, obj: int, data: bytes, manifest: Manifest) -> None:
        meta = dict(manifest.meta) if manifest.meta else None
        self.effects.append(ObjectReceived(obj, data, manifest.app_id, meta))

    def link_error(self, link: MeshLink | None, reason: str) -> None:
        who = f"{link.peer_id or '?'}: " if link is not None else ""
        self.error(link.conn if link is not None else None, who + reason)
