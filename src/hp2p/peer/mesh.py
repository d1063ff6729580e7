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

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hp2p.peer.effects import Close, Connect, Costmap, HomsReport, ProtocolError, Send
from hp2p.peer.errors import NotSourceError as NotSourceError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_objects import (
    MANIFEST_APP_ID,
    MAX_OBJECT,
    PIECE_BITS,
    PIECE_MASK,
    Manifest,
    ManifestError,
    ManifestSigner,
    SignatureError,
    decode_manifest,
    make_object,
    object_ok,
    parse_public_key,
    piece_ok,
    public_key_text,
    sequence_of,
    split_sequence,
    split_signature,
    verify_piece0,
)
from hp2p.peer.mesh_store import MemoryPieceStore, PieceStore
from hp2p.wire.r2.messages import (
    GET_DATA_MISSING,
    GET_DATA_OK,
    Buffermap,
    BuffermapEntry,
    BuffermapResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    HeartbeatResponse,
    Hello,
    HelloExt,
    HelloResponse,
    Message,
    Release,
    ReleaseExt,
    ReleaseResponse,
)
from hp2p.wire.r2.schema import MAX_TEXT

#: Extra neighbour slots for the source and for standbys watching it.
_SPARE_SLOTS = 4


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


@dataclass(eq=False)
class _Link:
    conn: int
    outgoing: bool
    opened_at: float
    state: str = "opening"  # opening -> hello (sent HELLO) | incoming -> up
    peer_id: str | None = None
    address: str | None = None
    last_rx: float = 0.0
    last_tx: float = 0.0
    have: set[int] = field(default_factory=set)
    inflight: int = 0
    strikes: int = 0


@dataclass(slots=True)
class _Request:
    peer_id: str
    deadline: float


def _release(reason: str) -> Release:
    """A RELEASE saying why, for the remote's log; cut to what the wire field allows."""
    return Release(hp2p=ReleaseExt(reason=reason[:MAX_TEXT]))


class MeshCore:
    """One SubMesh peer's decisions. See the module docstring and docs/sub-overlays.md."""

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
        self.config = config
        self.peer_id = peer_id
        self.address = address
        self.rng = rng
        self.store: PieceStore = store if store is not None else MemoryPieceStore()
        self.counters = MeshCounters()
        self.overlay_id = ""
        self.source_id = ""
        self.ticket = 0
        self.is_source = False
        self.standby = False
        self.started = False
        self.left = False
        self._source_address: str | None = None
        self._source_missing_since: float | None = None
        self._effects: list[MeshEffect] = []
        self._links: dict[int, _Link] = {}
        self._neighbours: dict[str, _Link] = {}
        self._known: OrderedDict[str, str] = OrderedDict()
        self._retry_after: dict[str, float] = {}
        self._banned: OrderedDict[str, None] = OrderedDict()
        self._manifests: dict[int, Manifest] = {}
        self._manifest_from: dict[int, str] = {}
        self._objects: dict[int, set[int]] = {}  # object -> piece indexes held (0 = manifest)
        self._have: set[int] = set()
        self._bytes = 0
        self._floor = 1  # objects below are never fetched again (evicted or not wanted)
        self._delivered: set[int] = set()
        # object -> {sequence I lack -> neighbours holding it}: grouped by object so that a
        # scheduling pass looks at a bounded window of objects, not at the whole history
        self._availability: dict[int, dict[int, int]] = {}
        self._requests: dict[int, _Request] = {}
        self._tried: dict[int, set[str]] = {}
        self._news: list[int] = []
        self._next_object = 1
        self._next_conn = 0
        self._next_peer_list = 0.0
        self._next_buffermap = 0.0
        self._next_maintenance: float | None = None
        self._reported: tuple[str, ...] | None = None
        #: The source's private key: used only while this peer publishes (source, or standby
        #: after take-over); None: manifests go out unsigned.
        self.signer = signer
        self.source_key: Ed25519PublicKey | None = None
        self._key_asked = False  # the shell was asked once, answered or timed out
        self._key_deadline: float | None = None  # asking now; gives up at this time
        self._next_key_request = 0.0
        # peer-id -> manifests (sequences) it served with a bad or missing signature: never
        # asked of it again (bounded like the ban list, each set by max_announced)
        self._refused_manifests: OrderedDict[str, set[int]] = OrderedDict()

    # === outputs =================================================================================
    def take_effects(self) -> list[MeshEffect]:
        effects, self._effects = self._effects, []
        return effects

    def next_timer(self) -> float | None:
        """The earliest time ``handle_timer`` must run (None: nothing pending)."""
        times = [r.deadline for r in self._requests.values()]
        if self._key_deadline is not None:
            times.append(self._key_deadline)
        if self._next_maintenance is not None:
            times.append(self._next_maintenance)
        return min(times) if times else None

    @property
    def neighbours(self) -> list[str]:
        return sorted(self._neighbours)

    def holds(self, object_number: int) -> bool:
        """Is the whole object held (and verified)?"""
        m = self._manifests.get(object_number)
        held = self._objects.get(object_number)
        return m is not None and held is not None and len(held) == m.count + 1

    def objects(self) -> list[int]:
        """Object numbers wholly held, ascending."""
        return sorted(o for o in self._objects if self.holds(o))

    def manifest(self, object_number: int) -> Manifest | None:
        return self._manifests.get(object_number)

    def read_object(self, object_number: int) -> bytes | None:
        """The object's bytes from the store, if wholly held."""
        m = self._manifests.get(object_number)
        if m is None or not self.holds(object_number):
            return None
        parts = [self.store.get(sequence_of(object_number, i)) for i in range(1, m.count + 1)]
        if any(p is None for p in parts):
            return None
        return b"".join(p for p in parts if p is not None)

    def status(self) -> dict[str, Any]:
        return {
            "peer-id": self.peer_id,
            "overlay-id": self.overlay_id,
            "source-id": self.source_id,
            "is-source": self.is_source,
            "standby": self.standby,
            "neighbours": self.neighbours,
            "links": len(self._links),
            "objects": len(self.objects()),
            "pieces": len(self._have),
            "store-bytes": self._bytes,
            "requests-in-flight": len(self._requests),
            "floor": self._floor,
            "signatures": {
                "source-key": public_key_text(self.source_key) if self.source_key else None,
                "required": self.config.require_signatures,
                "signing": self.signer.public_text if self.signer else None,
                "waiting-for-key": self._awaiting_key(),
            },
            "counters": dict(vars(self.counters)),
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
        self.is_source = info.source_id == self.peer_id
        self.standby = info.standby and not self.is_source
        self._source_address = info.source_address
        if info.source_key is not None:
            self.source_key = parse_public_key(info.source_key)
            self._key_asked = True
        signer, key = self.signer, self.source_key
        if self.is_source and signer and key and signer.public_text != public_key_text(key):
            raise ValueError(
                f"this source's key {signer.public_text} is not the key the SubMesh records "
                f"for it ({public_key_text(key)}): peers would refuse every manifest. Use the "
                "key file the source was first started with."
            )
        if self.is_source and self.signer is not None and self.source_key is None:
            self.source_key = self.signer.public_key  # re-check its own store on restart
        self._load_store()
        self._learn(info.peers)
        self._next_buffermap = now + self.config.buffermap_interval
        self._maintain(now)
        self._after(now)

    def set_source_key(self, key: str | None, now: float) -> None:
        """The source's public key, learnt after start (HOMS answer to ``SourceKeyWanted``).

        ``None`` means "the HOMS records none". A key once known is never dropped or replaced
        here: replacing a trust root is an operator decision (restart with ``--source-key``).
        """
        self._key_deadline = None
        self._key_asked = True
        if key is not None and self.source_key is None:
            self.source_key = parse_public_key(key)
        self._after(now)

    def _awaiting_key(self) -> bool:
        return self.source_key is None and (
            self._key_deadline is not None or self.config.require_signatures
        )

    def _want_key(self, now: float) -> None:
        """Ask the shell for the HOMS's key, at most once per ``peer_list_interval``."""
        if self._key_deadline is not None or now < self._next_key_request:
            return
        self._next_key_request = now + self.config.peer_list_interval
        self._key_deadline = now + self.config.request_timeout
        self.counters.key_requests += 1
        self._effects.append(SourceKeyWanted())

    def homs_result(self, peers: list[tuple[str, str]], now: float) -> None:
        """A HOMS peer list (join or recovery): new addresses to fill the neighbour set from."""
        self._learn(tuple(peers))
        self._maintain(now)
        self._after(now)

    def accept(self, now: float) -> int:
        """The shell accepted an incoming connection: its id. The remote must HELLO first."""
        conn = self._new_conn()
        self._links[conn] = _Link(conn, outgoing=False, opened_at=now, state="incoming")
        self._links[conn].last_rx = now
        self._bump_maintenance(now + self.config.connect_timeout)
        return conn

    def connection_made(self, conn: int, now: float) -> None:
        link = self._links.get(conn)
        if link is None or link.state != "opening":
            return
        link.state = "hello"
        link.last_rx = now
        hello = Hello(
            overlay_id=self.overlay_id,
            peer_id=self.peer_id,
            address=self.address,
            ticket_id=self.ticket,
            conn_num=0,
            ttl=0,
            hp2p=HelloExt(mesh=1, standby=1 if self.standby else 0),
        )
        self._send(link, hello, now)
        self._after(now)

    def connection_failed(self, conn: int, now: float) -> None:
        self.connection_lost(conn, now)

    def connection_lost(self, conn: int, now: float) -> None:
        link = self._links.get(conn)
        if link is None:
            return
        self._remove(link, now, backoff=True)
        self._maintain(now)
        self._after(now)

    def receive(self, conn: int, message: Message, now: float) -> None:
        """One decoded R2 message on connection ``conn``. Never raises on peer input."""
        link = self._links.get(conn)
        if link is None:
            return
        link.last_rx = now
        if link.state == "incoming":
            if isinstance(message, Hello):
                self._on_hello(link, message, now)
            else:
                self._error(link, f"{type(message).__name__} before HELLO on a mesh link", now)
                self._drop(link, now)
        elif link.state == "hello":
            if isinstance(message, HelloResponse):
                self._on_hello_response(link, now)
            elif isinstance(message, Release):
                self._refused(link, message, now)
            else:
                self._error(link, f"{type(message).__name__} before 1202 on a mesh link", now)
                self._drop(link, now)
        elif link.state == "up":
            self._on_message(link, message, now)
        self._after(now)

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
        if len(data) > self.config.max_object_size:
            raise ValueError(
                f"object of {len(data)} bytes exceeds max_object_size "
                f"{self.config.max_object_size}; split it or raise the limit"
            )
        if len(data) > self.config.store_bytes:
            raise ValueError(
                f"object of {len(data)} bytes does not fit the piece store "
                f"({self.config.store_bytes} bytes); raise store_bytes"
            )
        number = self._next_object
        if number > MAX_OBJECT:
            raise ValueError("object numbers exhausted for this source")
        manifest, pieces = make_object(
            number, data, self.config.piece_size, app_id=app_id, meta=meta
        )
        self._next_object += 1
        self._manifests[number] = manifest
        piece0 = manifest.encode()
        if self.signer is not None:
            piece0 = self.signer.sign(piece0, self.overlay_id, self.source_id)
        self._keep(sequence_of(number, 0), piece0)
        for index, piece in enumerate(pieces, 1):
            self._keep(sequence_of(number, index), piece)
        self._delivered.add(number)
        self._evict()
        self._after(now)
        return number

    def handle_timer(self, now: float) -> None:
        if self._key_deadline is not None and self._key_deadline <= now:
            # the shell never answered: go on as if the HOMS had no key
            self._key_deadline = None
            self._key_asked = True
        for seq, req in list(self._requests.items()):
            if req.deadline <= now:
                self.counters.timeouts += 1
                self._end_request(seq, req)
                self._tried.setdefault(seq, set()).add(req.peer_id)
        if self._next_maintenance is not None and self._next_maintenance <= now:
            self._next_maintenance = None
            self._maintain(now)
        self._after(now)

    def leave(self, now: float) -> None:
        """Release every link and stop; the core ignores later inputs except ``take_effects``."""
        for link in list(self._links.values()):
            if link.state == "up":
                self._send(link, _release("leaving"), now)
            self._effects.append(Close(link.conn))
        self._links.clear()
        self._neighbours.clear()
        self._requests.clear()
        self._availability.clear()
        self._next_maintenance = None
        self.left = True

    # === links ===================================================================================
    def _learn(self, peers: tuple[tuple[str, str], ...]) -> None:
        for peer_id, address in peers:
            if peer_id == self.peer_id or not address:
                continue
            self._known[peer_id] = address
            self._known.move_to_end(peer_id)
        while len(self._known) > self.config.max_known_peers:
            self._known.popitem(last=False)

    def _connect(self, peer_id: str, address: str, now: float) -> None:
        conn = self._new_conn()
        link = _Link(conn, outgoing=True, opened_at=now, peer_id=peer_id, address=address)
        self._links[conn] = link
        self._effects.append(Connect(conn, address))
        self._bump_maintenance(now + self.config.connect_timeout)

    def _on_hello(self, link: _Link, msg: Hello, now: float) -> None:
        peer = msg.peer_id
        if msg.overlay_id != self.overlay_id:
            self._refuse(link, f"overlay {msg.overlay_id!r} is not {self.overlay_id!r}", now)
            return
        if not msg.hp2p.mesh:
            self._refuse(link, "this is a SubMesh: HELLO must carry hp2p.mesh", now)
            return
        if peer == self.peer_id or peer in self._banned:
            self._refuse(link, "refused", now)
            return
        if peer in self._neighbours:
            self._refuse(link, "duplicate link", now)
            return
        pending = next(
            (x for x in self._links.values() if x.peer_id == peer and x is not link), None
        )
        if pending is not None:
            # Both sides dialled at once: keep the link opened by the smaller peer-id.
            if peer < self.peer_id:
                self._drop(pending, now, backoff=False)
            else:
                self._refuse(link, "duplicate link", now)
                return
        # A standby watching its source, and the source itself, get a link even when the set
        # is full (a few spare slots), so that failure detection does not depend on luck.
        special = peer == self.source_id or bool(msg.hp2p.standby)
        limit = self.config.max_neighbours + (_SPARE_SLOTS if special else 0)
        if len(self._neighbours) >= limit:
            self._refuse(link, "mesh neighbour set full", now)
            return
        link.peer_id = peer
        link.address = msg.address
        if msg.address:
            self._learn(((peer, msg.address),))
        self._send(link, HelloResponse(), now)
        self._up(link, now)

    def _on_hello_response(self, link: _Link, now: float) -> None:
        assert link.peer_id is not None
        if link.peer_id in self._neighbours:
            self._drop(link, now, backoff=False)
            return
        self._up(link, now)

    def _up(self, link: _Link, now: float) -> None:
        assert link.peer_id is not None
        link.state = "up"
        self._neighbours[link.peer_id] = link
        self._retry_after.pop(link.peer_id, None)
        self._send_buffermap(link, sorted(self._have), now)
        self._report()

    def _refused(self, link: _Link, msg: Release, now: float) -> None:
        self.counters.refused_links += 1
        self._drop(link, now)

    def _refuse(self, link: _Link, reason: str, now: float) -> None:
        self.counters.refused_links += 1
        self._send(link, _release(reason), now)
        self._drop(link, now, backoff=False)

    def _drop(self, link: _Link, now: float, backoff: bool = True) -> None:
        if link.conn in self._links:
            self._effects.append(Close(link.conn))
            self._remove(link, now, backoff)

    def _remove(self, link: _Link, now: float, backoff: bool) -> None:
        self._links.pop(link.conn, None)
        peer = link.peer_id
        if peer is not None and self._neighbours.get(peer) is link:
            del self._neighbours[peer]
            for seq in link.have:
                self._avail_less(seq)
            for seq, req in list(self._requests.items()):
                if req.peer_id == peer:
                    self._end_request(seq, req)
            self._report()
        if peer is not None and backoff:
            self._retry_after[peer] = now + self.config.retry_backoff
        self._bump_maintenance(now)

    def _ban(self, link: _Link, reason: str, now: float) -> None:
        if link.peer_id is not None:
            self._banned[link.peer_id] = None
            self._known.pop(link.peer_id, None)
            while len(self._banned) > self.config.max_banned:
                self._banned.popitem(last=False)
        self.counters.banned += 1
        self._error(link, f"dropped and banned: {reason}", now)
        self._send(link, _release(reason), now)
        self._drop(link, now)

    def _strike(self, link: _Link, reason: str, now: float) -> None:
        link.strikes += 1
        self._error(link, reason, now)
        if link.strikes >= self.config.max_strikes:
            self._ban(link, f"{link.strikes} bad pieces", now)

    # === messages on an up link ==================================================================
    def _on_message(self, link: _Link, msg: Message, now: float) -> None:
        if isinstance(msg, GetDataResponse):
            self._on_piece(link, msg, now)
        elif isinstance(msg, BuffermapResponse):
            self._on_buffermap_response(link, msg)
        elif isinstance(msg, GetData):
            self._on_get_data(link, msg, now)
        elif isinstance(msg, Buffermap):
            self._send_buffermap(link, sorted(self._have), now)
        elif isinstance(msg, Heartbeat):
            pass  # last_rx is already updated
        elif isinstance(msg, Release):
            if msg.ack:
                self._send(link, ReleaseResponse(), now)
            self._drop(link, now, backoff=True)
        elif isinstance(msg, HeartbeatResponse | ReleaseResponse | HelloResponse):
            pass
        else:
            self._error(link, f"{type(msg).__name__} is not used on a mesh link", now)

    def _on_buffermap_response(self, link: _Link, msg: BuffermapResponse) -> None:
        if msg.overlay_id != self.overlay_id:
            self.counters.foreign_source += 1
            return
        refused = self._refused_manifests.get(link.peer_id or "", ())
        for entry in msg.buffermap:
            if entry.source_peer_id != self.source_id:
                self.counters.foreign_source += 1
                continue
            for seq in entry.sequences:
                if seq in link.have or seq in refused:
                    continue
                if len(link.have) >= self.config.max_announced:
                    self.counters.protocol_errors += 1
                    self._effects.append(
                        ProtocolError(
                            link.conn,
                            f"{link.peer_id}: announced more than {self.config.max_announced} "
                            "pieces; the rest of its buffermap is ignored",
                        )
                    )
                    return
                obj, _ = split_sequence(seq)
                if obj < 1 or obj < self._floor:
                    continue
                link.have.add(seq)
                if seq not in self._have:
                    counts = self._availability.setdefault(obj, {})
                    counts[seq] = counts.get(seq, 0) + 1

    def _on_get_data(self, link: _Link, msg: GetData, now: float) -> None:
        seq = msg.sequence
        data = (
            self.store.get(seq) if seq in self._have and msg.source_id == self.source_id else None
        )
        if data is None:
            self.counters.misses_served += 1
            self._send(
                link,
                GetDataResponse(
                    source=msg.source_id, sequence=seq, data=b"", code=GET_DATA_MISSING
                ),
                now,
            )
            return
        obj, index = split_sequence(seq)
        if index == 0:
            ext: dict[str, Any] = {"app-id": MANIFEST_APP_ID}
            payload_type = "application/json"
        else:
            m = self._manifests.get(obj)
            ext = {"app-id": (m.app_id if m is not None else None) or "etri_data"}
            payload_type = "application/octet-stream"
        self.counters.pieces_served += 1
        self.counters.bytes_served += len(data)
        self._send(
            link,
            GetDataResponse(
                source=self.source_id,
                sequence=seq,
                data=data,
                ext_header=ext,
                payload_type=payload_type,
            ),
            now,
        )

    def _on_piece(self, link: _Link, msg: GetDataResponse, now: float) -> None:
        seq = msg.sequence
        req = self._requests.get(seq)
        if req is None or req.peer_id != link.peer_id:
            self.counters.unsolicited += 1
            return
        self._end_request(seq, req)
        if msg.code != GET_DATA_OK:
            self.counters.misses += 1
            self._forget_holder(link, seq)
            return
        if msg.source != self.source_id:
            self.counters.foreign_source += 1
            self._forget_holder(link, seq)
            self._strike(link, f"piece of source {msg.source!r}, not {self.source_id!r}", now)
            return
        obj, index = split_sequence(seq)
        if obj < self._floor or seq in self._have:
            return
        if index == 0:
            manifest = self._take_manifest(link, seq, msg.data, now)
            if manifest is None:
                return
            self._manifests[obj] = manifest
            self._manifest_from[obj] = link.peer_id or ""
            self._accept_piece(seq, msg.data)
        else:
            manifest_or_none = self._manifests.get(obj)
            if manifest_or_none is None or not piece_ok(manifest_or_none, index, msg.data):
                self.counters.forged += 1
                self._forget_holder(link, seq)
                self._strike(link, f"piece {obj}/{index} does not match its manifest", now)
                return
            self._accept_piece(seq, msg.data)
        self._complete(obj, now)

    def _take_manifest(self, link: _Link, seq: int, data: bytes, now: float) -> Manifest | None:
        """Piece 0 from ``link``: the manifest if it may be trusted, else None (and why)."""
        obj = seq >> PIECE_BITS
        key = self.source_key
        try:
            if key is not None:
                unsigned = verify_piece0(data, key, self.overlay_id, self.source_id)
            else:
                signature, unsigned = split_signature(data)
                if self.config.require_signatures or (
                    signature is not None and not self._key_asked
                ):
                    # No key to check it with: ask the HOMS first; the holder did nothing
                    # wrong, so it stays a holder and the manifest is pulled after the answer.
                    self._want_key(now)
                    return None
                if signature is not None:
                    # Signed, but the HOMS recorded no key when asked: taken on trust, and
                    # the HOMS is asked again now and then (at most once per
                    # peer_list_interval) in case the source has recorded its key since.
                    self._want_key(now)
            manifest = decode_manifest(unsigned, obj, self.config.max_piece_size)
            if manifest.size > self.config.max_object_size:
                raise ManifestError(
                    f"object of {manifest.size} bytes exceeds max_object_size "
                    f"{self.config.max_object_size}"
                )
        except SignatureError as exc:
            self.counters.forged += 1
            if exc.missing:
                self.counters.unsigned_refused += 1
            else:
                self.counters.bad_signatures += 1
            self._refuse_from(link, seq)
            self._strike(link, f"manifest of object {obj} refused: {exc}", now)
            return None
        except ManifestError as exc:
            self.counters.forged += 1
            self._forget_holder(link, seq)
            self._strike(link, f"bad manifest for object {obj}: {exc}", now)
            return None
        if key is not None:
            self.counters.manifests_verified += 1
        else:
            self.counters.manifests_unverified += 1
        return manifest

    def _refuse_from(self, link: _Link, seq: int) -> None:
        """Never ask this neighbour for this manifest again, even if it announces it anew."""
        self._forget_holder(link, seq)
        if link.peer_id is None:
            return
        refused = self._refused_manifests.setdefault(link.peer_id, set())
        self._refused_manifests.move_to_end(link.peer_id)
        if len(refused) < self.config.max_announced:
            refused.add(seq)
        while len(self._refused_manifests) > self.config.max_banned:
            self._refused_manifests.popitem(last=False)

    def _accept_piece(self, seq: int, data: bytes) -> None:
        self.counters.pieces_received += 1
        self.counters.bytes_received += len(data)
        self._tried.pop(seq, None)
        self._keep(seq, data)

    def _forget_holder(self, link: _Link, seq: int) -> None:
        if seq in link.have:
            link.have.discard(seq)
            self._avail_less(seq)
        if link.peer_id is not None:
            self._tried.setdefault(seq, set()).add(link.peer_id)

    def _complete(self, obj: int, now: float) -> None:
        if obj in self._delivered or not self.holds(obj):
            self._evict()
            return
        manifest = self._manifests[obj]
        data = self.read_object(obj)
        if data is None or not object_ok(manifest, data):
            # Every piece matched its digest, so the manifest itself lied: forget it all.
            self.counters.bad_objects += 1
            supplier = self._neighbours.get(self._manifest_from.get(obj, ""))
            self._discard_object(obj)
            if supplier is not None:
                self._strike(supplier, f"manifest of object {obj} does not match its data", now)
            return
        self._delivered.add(obj)
        self.counters.objects_delivered += 1
        self._effects.append(
            ObjectReceived(
                obj, data, manifest.app_id, dict(manifest.meta) if manifest.meta else None
            )
        )
        self._evict()

    # === store ===================================================================================
    def _keep(self, seq: int, data: bytes) -> None:
        obj, index = split_sequence(seq)
        self.store.put(seq, data)
        self._objects.setdefault(obj, set()).add(index)
        self._have.add(seq)
        self._bytes += len(data)
        counts = self._availability.get(obj)
        if counts is not None:
            counts.pop(seq, None)
            if not counts:
                del self._availability[obj]
        self._news.append(seq)

    def _discard_object(self, obj: int) -> None:
        held = self._objects.pop(obj, set())
        for index in held:
            seq = sequence_of(obj, index)
            self._have.discard(seq)
            data = self.store.get(seq)
            self._bytes -= len(data) if data is not None else 0
        self.store.drop_object(obj)
        self._manifests.pop(obj, None)
        self._manifest_from.pop(obj, None)

    def _evict(self) -> None:
        """Oldest objects first, whole, until under both bounds; never fetched again."""
        while self._objects and (
            self._bytes > self.config.store_bytes or len(self._objects) > self.config.store_objects
        ):
            oldest = min(self._objects)
            self._discard_object(oldest)
            self.counters.objects_evicted += 1
            self._floor = max(self._floor, oldest + 1)
            self._delivered.discard(oldest)
        if self._floor > 1:
            for obj in [o for o in self._availability if o < self._floor]:
                del self._availability[obj]
            for seq in [q for q in self._tried if split_sequence(q)[0] < self._floor]:
                del self._tried[seq]
            self._delivered = {o for o in self._delivered if o >= self._floor}

    def _load_store(self) -> None:
        """Re-read a persistent store: keep what still verifies, so it is served again."""
        by_object: dict[int, list[int]] = {}
        for seq in self.store.sequences():
            obj, index = split_sequence(seq)
            if obj >= 1:
                by_object.setdefault(obj, []).append(index)
        for obj in sorted(by_object):
            raw = self.store.get(sequence_of(obj, 0))
            try:
                if raw is None:
                    raise ManifestError("no manifest")
                if self.source_key is not None:
                    unsigned = verify_piece0(raw, self.source_key, self.overlay_id, self.source_id)
                elif self.config.require_signatures:
                    raise SignatureError("no source key to check a stored manifest with")
                else:
                    unsigned = split_signature(raw)[1]
                manifest = decode_manifest(unsigned, obj, self.config.max_piece_size)
            except ManifestError:
                self.store.drop_object(obj)
                continue
            self._manifests[obj] = manifest
            held = {0}
            self._bytes += len(raw)
            for index in by_object[obj]:
                data = self.store.get(sequence_of(obj, index)) if index else None
                if data is not None and piece_ok(manifest, index, data):
                    held.add(index)
                    self._bytes += len(data)
            self._objects[obj] = held
            self._have.update(sequence_of(obj, i) for i in held)
            if self.holds(obj):
                self._delivered.add(obj)
        if self._objects:
            self._next_object = max(self._objects) + 1
        self._evict()

    # === pulling =================================================================================
    def _send_get(self, link: _Link, seq: int, now: float) -> None:
        assert link.peer_id is not None
        link.inflight += 1
        self._requests[seq] = _Request(link.peer_id, now + self.config.request_timeout)
        self.counters.requests_sent += 1
        self._send(link, GetData(self.overlay_id, self.source_id, seq), now)

    def _end_request(self, seq: int, req: _Request) -> None:
        self._requests.pop(seq, None)
        link = self._neighbours.get(req.peer_id)
        if link is not None and link.inflight > 0:
            link.inflight -= 1

    def _schedule(self, now: float) -> None:
        """Rarest first (manifests before data), least-loaded holder, bounded in flight."""
        c = self.config
        free = c.max_requests - len(self._requests)
        if free <= 0 or not self._availability or self.left:
            return
        if not any(n.inflight < c.max_requests_per_neighbour for n in self._neighbours.values()):
            return
        candidates: list[tuple[bool, int, float, int]] = []
        hold_manifests = self._awaiting_key()
        for obj in self._window():
            manifest = self._manifests.get(obj)
            for seq, count in self._availability[obj].items():
                if seq in self._requests:
                    continue
                index = seq & PIECE_MASK
                if index != 0 and (manifest is None or index > manifest.count):
                    continue  # no manifest yet, or a piece the object does not have
                if index == 0 and hold_manifests:
                    continue  # no key yet to check it with (asked of the HOMS)
                candidates.append((index != 0, count, self.rng.random(), seq))
        candidates.sort()
        neighbours = list(self._neighbours.values())
        for _, _, _, seq in candidates:
            if free <= 0:
                break
            tried = self._tried.get(seq, set())
            holders = [
                n for n in neighbours if seq in n.have and n.inflight < c.max_requests_per_neighbour
            ]
            fresh = [n for n in holders if n.peer_id not in tried]
            if not fresh and holders:
                self._tried.pop(seq, None)  # every holder failed once: start a new round
                fresh = holders
            if not fresh:
                continue
            best = min(n.inflight for n in fresh)
            pick = self.rng.choice([n for n in fresh if n.inflight == best])
            self._send_get(pick, seq, now)
            free -= 1

    def _window(self) -> list[int]:
        """Objects a pass may pull from: the oldest ``fetch_window`` and the newest two.

        A late joiner with a long history works through it oldest first, while the newest
        objects (live data) are never starved behind it; either way a pass costs a bounded
        number of pieces, not the whole history.
        """
        objects = sorted(self._availability)
        size = self.config.fetch_window
        if len(objects) <= size + 2:
            return objects
        return objects[:size] + objects[-2:]

    def _avail_less(self, seq: int) -> None:
        obj = seq >> PIECE_BITS
        counts = self._availability.get(obj)
        if counts is None:
            return
        count = counts.get(seq)
        if count is None:
            return
        if count <= 1:
            del counts[seq]
            if not counts:
                del self._availability[obj]
        else:
            counts[seq] = count - 1

    # === periodic work ===========================================================================
    def _maintain(self, now: float) -> None:
        c = self.config
        if self.left or not self.started:
            return
        for link in list(self._links.values()):
            if link.state != "up" and now - link.opened_at >= c.connect_timeout:
                self._drop(link, now)
            elif link.state == "up" and now - link.last_rx >= c.heartbeat_timeout:
                self._error(link, "heartbeat time-out", now)
                self._drop(link, now)
            elif link.state == "up" and now - link.last_tx >= c.heartbeat_interval:
                self._send(link, Heartbeat(), now)
        if now >= self._next_buffermap:
            self._next_buffermap = now + c.buffermap_interval
            for link in self._neighbours.values():
                self._send(link, Buffermap(self.overlay_id), now)
        if self.config.require_signatures and self.source_key is None and self._availability:
            self._want_key(now)
        self._fill(now)
        self._watch_source(now)
        self._bump_maintenance(now + min(c.heartbeat_interval, c.connect_timeout) / 2)

    def _fill(self, now: float) -> None:
        """Keep ``target_neighbours`` links; below the low-water mark, ask the HOMS (PLM FE)."""
        c = self.config
        for peer in [p for p, t in self._retry_after.items() if t <= now]:
            del self._retry_after[peer]  # bounded: only back-offs still running are kept
        linked = {x.peer_id for x in self._links.values()}
        pending = sum(1 for x in self._links.values() if x.state != "up")
        want = c.target_neighbours - len(self._neighbours) - pending
        address = self._source_address or self._known.get(self.source_id)
        watch = self.standby and address is not None and self.source_id not in linked
        if watch and address is not None and self._retry_after.get(self.source_id, 0.0) <= now:
            self._connect(self.source_id, address, now)
            linked.add(self.source_id)
        if want > 0:
            options = [
                p
                for p in self._known
                if p not in linked
                and p not in self._banned
                and self._retry_after.get(p, 0.0) <= now
            ]
            self.rng.shuffle(options)
            for peer in options[:want]:
                self._connect(peer, self._known[peer], now)
            want -= min(want, len(options))
        if len(self._neighbours) < c.low_water and want > 0 and now >= self._next_peer_list:
            self._next_peer_list = now + c.peer_list_interval
            self.counters.peer_list_requests += 1
            self._effects.append(PeerListWanted())

    def _watch_source(self, now: float) -> None:
        if not self.standby or self.is_source:
            return
        known = self._source_address or self._known.get(self.source_id)
        if self.source_id in self._neighbours or known is None:
            # linked to the source, or never told where it is: nothing to judge yet
            self._source_missing_since = None
            return
        if self._source_missing_since is None:
            self._source_missing_since = now
        elif now - self._source_missing_since >= self.config.takeover_after:
            self.take_over(now)

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
        heard = list(self._availability)
        highest = max([*self._objects, *heard, self._next_object - 1])
        self._next_object = highest + 1
        self.is_source = True
        self.standby = False
        self._effects.append(BecameSource(self._next_object))
        return self._next_object

    # === plumbing ================================================================================
    def _after(self, now: float) -> None:
        """End of every input: announce news, pull what is missing."""
        if self.left:
            return
        if self._news:
            news, self._news = self._news, []
            for link in self._neighbours.values():
                fresh = [s for s in news if s not in link.have]
                if fresh:
                    self._send_buffermap(link, fresh, now)
        self._schedule(now)

    def _send_buffermap(self, link: _Link, sequences: list[int], now: float) -> None:
        step = self.config.buffermap_chunk
        for i in range(0, max(len(sequences), 1), step):
            entry = BuffermapEntry(self.source_id, sequences[i : i + step])
            self._send(link, BuffermapResponse(self.overlay_id, [entry]), now)

    def _send(self, link: _Link, message: Message, now: float) -> None:
        link.last_tx = now
        self._effects.append(Send((link.conn,), message))

    def _report(self) -> None:
        neighbours = tuple(sorted(self._neighbours))
        if neighbours != self._reported:
            self._reported = neighbours
            self._effects.append(HomsReport(Costmap(neighbours, (), ())))

    def _bump_maintenance(self, at: float) -> None:
        if self._next_maintenance is None or at < self._next_maintenance:
            self._next_maintenance = at

    def _new_conn(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def _error(self, link: _Link | None, reason: str, now: float) -> None:
        self.counters.protocol_errors += 1
        who = f"{link.peer_id or '?'}: " if link is not None else ""
        self._effects.append(ProtocolError(link.conn if link else None, who + reason))
