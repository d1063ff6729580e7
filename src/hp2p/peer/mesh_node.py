"""The asyncio shell of a SubMesh peer: TCP links, one timer, the HOMS client, the application.

Like :mod:`hp2p.peer.node` for the tree, it decides nothing: every input (accepted or opened
TCP connection, decoded R2 message, closed link, timer, HOMS answer, application call) goes to
the sans-IO :class:`~hp2p.peer.mesh.MeshCore` with ``loop.time()`` as ``now``, then the core's
effects are executed in order and the single timer is re-armed to ``core.next_timer()``.

R1: the peer joins the SubMesh with HOMP like any peer (``POST /peer``); a SubMesh join answers
with a uniformly random peer list, and when the core wants more neighbours (``PeerListWanted``)
the shell asks again with ``POST /peer?recovery=true`` (PLM FE). The neighbour set is reported
as the peer's primary paths, so the HOMS topology endpoints draw the mesh.

A source may create its SubMesh first (``create`` + ``parent``): HOMP create with the hp2p
extension fields ``parent-overlay-id`` and ``source-peer-id``.

Manifest signing keys (issue #7). The source signs manifests with an Ed25519 key kept in a key
file (:func:`load_signing_key`: created 0600 on first use, so a restarted source keeps its
key). Its public key reaches the HOMS with the source's own HOMP create or join (hp2p field
``source-key``), and every peer takes the key from the HOMS's answer, or from the operator
(``source_key``, pinned), never from the neighbour that sends a manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hp2p.peer.homs_client import HomsError, member_key
from hp2p.peer.mesh import (
    BecameSource,
    MeshCore,
    MeshJoinInfo,
    NotSourceError,
    ObjectReceived,
    PeerListWanted,
    SourceKeyWanted,
    WantsData,
)
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_objects import ManifestSigner, parse_public_key
from hp2p.peer.mesh_store import DiskPieceStore, MemoryPieceStore, PieceStore
from hp2p.peer.mesh_trust import TrustError, choose_source_key
from hp2p.peer.settings import Settings, split_host_port
from hp2p.peer.shell import CoreShell, LinkStats
from hp2p.peer.subscription import Subscription
from hp2p.peer.subtree import SubOverlayHomsClient
from hp2p.transport import ice
from hp2p.transport.faults import FaultPlan
from hp2p.transport.limits import (
    DEFAULT_BUFFERED_BYTES,
    DEFAULT_FRAME_DEADLINE,
    DEFAULT_MAX_UNIDENTIFIED,
    R2Limits,
)
from hp2p.transport.registry import TransportRegistry
from hp2p.trust.keys import KeyFileError
from hp2p.trust.membership import Membership as TrustMembership
from hp2p.wire import homp

log = logging.getLogger("hp2p.peer.mesh")

EventSink = Callable[[str, dict[str, Any]], None]

__all__ = [
    "MeshDelivery",
    "MeshNode",
    "MeshNodeError",
    "MeshSettings",
    "NotSourceError",
    "default_key_path",
    "load_signing_key",
]

T = TypeVar("T")

#: Where source key files live when no path is given: ``$HP2P_KEY_DIR``, else
#: ``$XDG_STATE_HOME/hp2p/submesh-keys``, else ``~/.local/state/hp2p/submesh-keys``.
KEY_DIR_ENV = "HP2P_KEY_DIR"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


class MeshNodeError(Exception):
    """The SubMesh peer could not start or join; ``str(err)`` says what and what to do."""


def default_key_path(source_id: str) -> Path:
    """The key file of source ``source_id`` when none is configured (one per source id).

    Per source id, not per process, so a restarted source, and a standby on the same host
    taking over the same source id, find the same key.
    """
    base = os.environ.get(KEY_DIR_ENV)
    if not base:
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = str(Path(state) / "hp2p" / "submesh-keys")
    name = (
        source_id
        if _SAFE_NAME.fullmatch(source_id)
        else hashlib.sha256(source_id.encode()).hexdigest()[:32]
    )
    return Path(base) / f"{name}.ed25519.pem"


def load_signing_key(path: str | os.PathLike[str], *, create: bool) -> ManifestSigner | None:
    """The source's Ed25519 key from ``path`` (PKCS#8 PEM); created 0600 if absent and asked.

    Returns None when the file is absent and ``create`` is false. A file other users may read
    is refused, as ssh does: a leaked private key lets anyone sign manifests as the source.
    Creation is atomic (written under a temporary name, then hard-linked into place), so two
    processes starting at once end up with one key, never a half-written file.
    """
    target = Path(path)
    for _ in range(3):  # bounded: absent -> created (or lost the race) -> read
        try:
            return _read_key(target)
        except FileNotFoundError:
            if not create:
                return None
        _create_key(target)
    raise MeshNodeError(f"cannot create or read the signing key file {target}")


def _read_key(path: Path) -> ManifestSigner:
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(64 * 1024)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise MeshNodeError(
            f"cannot read the signing key file {path}: {exc.strerror or exc}"
        ) from None
    if mode & 0o077:
        raise MeshNodeError(
            f"signing key file {path} may be read by other users (mode {mode & 0o777:o}); "
            f"it is the source's private key: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise MeshNodeError(
            f"signing key file {path} is not an unencrypted PEM private key ({exc}); "
            "move it away to let the source create a new one (its public key then changes: "
            "the SubMesh owner must record it at the HOMS)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MeshNodeError(f"signing key file {path} holds a {type(key).__name__}, not Ed25519")
    return ManifestSigner(key)


def _create_key(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise MeshNodeError(
            f"cannot create the directory of the signing key file {path}: "
            f"{exc.strerror or exc} (choose another path with --signing-key)"
        ) from None
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            os.link(tmp, path)
    except OSError as exc:
        raise MeshNodeError(
            f"cannot write the signing key file {path}: {exc.strerror or exc} "
            "(choose another path with --signing-key)"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class MeshHomsClient(SubOverlayHomsClient):
    """The sub-overlay HOMS client, plus the SubMesh source key on R1.

    ``declared_key`` (the source's public key) is added to this peer's HOMP create and its
    normal join as the hp2p field ``source-key``; ``recorded_key`` is what the last join
    answer said the HOMS records. Done on the request bodies, so every join path of the
    parent classes carries it.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.declared_key: str | None = None
        self.recorded_key: str | None = None

    async def _call(
        self,
        method: str,
        path: str,
        body: msgspec.Struct | None,
        answer_type: type[T],
        **kwargs: Any,
    ) -> T:
        key = self.declared_key
        declares = isinstance(body, homp.CreateRequest) or (
            isinstance(body, homp.JoinRequest) and not body.peer.ticket_id
        )
        if key is not None and declares and isinstance(body, homp.CreateRequest | homp.JoinRequest):
            body = msgspec.structs.replace(
                body, overlay=msgspec.structs.replace(body.overlay, source_key=key)
            )
        answer = await super()._call(method, path, body, answer_type, **kwargs)
        if isinstance(answer, homp.JoinResponse):
            self.recorded_key = answer.overlay.source_key
        return answer


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """What :class:`MeshNode` takes: the shell settings of a SubMesh peer and its core's.

    ``hp2p peer`` builds it from the one settings object (:meth:`from_settings`: the ``node``,
    ``submesh`` and ``mesh`` sections of :class:`hp2p.peer.settings.Settings`); programs that
    embed a SubMesh peer (the R3 bridge, tests) may build it directly. Defaults are those of
    ``NodeSettings`` except ``send_queue_bytes`` (pieces are large).
    """

    homs: str = "http://127.0.0.1:8081"
    join: str | None = None  # overlay-id or title of the SubMesh
    create: str | None = None  # title of a SubMesh to create (this peer is its source)
    parent: str | None = None  # parent overlay-id (CoreTree) for create
    parent_admin_key: str | None = None  # the CoreTree owner's consent to create under it
    listen: str = "127.0.0.1:0"
    advertise: str | None = None  # tcp://HOST:PORT others dial (default: from listen)
    tls: bool = False  # R2 over TLS 1.3 (tls://), certificate from the membership key
    #: WebRTC data channels through the HOMS signalling (``hp2p.transport.webrtc``), as on a
    #: tree peer: ``ice_servers``/``ice_hosts`` are the comma-separated settings.
    webrtc: bool = False
    ice_servers: str = ""
    ice_hosts: str = ""
    peer_id: str | None = None
    store: str | None = None  # directory of a persistent piece store
    standby: bool = False  # watch the source, publish in its place when it is gone
    access_key: str | None = None
    admin_key: str | None = None
    description: str = ""
    expires: int = 30
    homs_timeout: float = 5.0
    homs_attempts: int = 4
    leave_timeout: float = 5.0
    subscriber_queue: int = 1024
    send_queue_bytes: int = 16 * 1024 * 1024
    seed: int | None = None
    config: MeshConfig = field(default_factory=MeshConfig)
    #: ``security`` of a created SubMesh, and the membership key file (None: a fresh key).
    security: str = "credentials"
    key_file: str | None = None
    #: The source's key file (created 0600 on first use); None: :func:`default_key_path`.
    #: A standby reads it (never creates it) to sign in the source's place after take-over.
    signing_key: str | None = None
    #: Source only: sign manifests (off: publish unsigned, as hp2p did before issue #7).
    sign: bool = True
    #: Pin the source's public key (``ed25519:<hex>``) instead of trusting the HOMS record.
    source_key: str | None = None
    #: Fault injection on every link (``hp2p.transport.faults``), as on a tree peer.
    faults: str = ""
    fault_seed: int = 0
    #: Process-wide R2 limits (``hp2p.transport.limits``), as on a tree peer.
    r2_buffered_bytes: int = DEFAULT_BUFFERED_BYTES
    r2_frame_deadline: float = DEFAULT_FRAME_DEADLINE
    r2_max_unidentified: int = DEFAULT_MAX_UNIDENTIFIED

    @classmethod
    def from_settings(cls, settings: Settings) -> MeshSettings:
        """The SubMesh peer that ``hp2p peer`` runs with ``settings``."""
        n, m = settings.node, settings.submesh
        queue = (
            {"send_queue_bytes": n.send_queue_bytes} if "send_queue_bytes" in settings.given else {}
        )
        return cls(
            homs=n.homs,
            join=n.join,
            create=n.create,
            parent=m.parent,
            parent_admin_key=m.parent_admin_key,
            listen=n.listen,
            advertise=n.advertise,
            tls=n.tls,
            webrtc=n.webrtc,
            ice_servers=n.ice_servers,
            ice_hosts=n.ice_hosts,
            peer_id=n.peer_id,
            store=m.store,
            standby=m.standby,
            access_key=n.access_key,
            admin_key=n.admin_key,
            description=n.description,
            expires=n.expires,
            homs_timeout=n.homs_timeout,
            homs_attempts=n.homs_attempts,
            leave_timeout=n.leave_timeout,
            subscriber_queue=n.subscriber_queue,
            seed=n.seed,
            config=settings.mesh,
            signing_key=m.signing_key,
            sign=not m.unsigned,
            source_key=m.source_key,
            faults=n.faults,
            fault_seed=n.fault_seed,
            r2_buffered_bytes=n.r2_buffered_bytes,
            r2_frame_deadline=n.r2_frame_deadline,
            r2_max_unidentified=n.r2_max_unidentified,
            security=n.security,
            key_file=n.key_file,
            **queue,
        )

    def __post_init__(self) -> None:
        if (self.create is None) == (self.join is None):
            raise MeshNodeError("give exactly one of join (a SubMesh id/title) or create (title)")
        if self.create is not None and not self.parent:
            raise MeshNodeError("creating a SubMesh needs its parent overlay-id (--parent)")
        split_host_port(self.listen, "listen")
        if self.expires <= 0 or self.subscriber_queue <= 0 or self.send_queue_bytes <= 0:
            raise MeshNodeError("expires, subscriber_queue and send_queue_bytes must be > 0")
        if self.source_key is not None:
            try:
                parse_public_key(self.source_key)
            except ValueError as exc:
                raise MeshNodeError(f"--source-key: {exc}") from None
        if self.faults:
            try:
                FaultPlan.parse(self.faults, self.fault_seed)
            except ValueError as exc:
                raise MeshNodeError(f"faults: {exc}") from None
        try:
            self.r2_limits()
        except ValueError as exc:
            raise MeshNodeError(str(exc)) from None

    def r2_limits(self) -> R2Limits:
        """The process-wide R2 limits of this peer (:mod:`hp2p.transport.limits`)."""
        return R2Limits(self.r2_buffered_bytes, self.r2_frame_deadline, self.r2_max_unidentified)


@dataclass(frozen=True, slots=True)
class MeshDelivery:
    """One whole, verified object for the application; ``lost``: dropped before it (slow)."""

    object_number: int
    data: bytes
    app_id: str | None
    meta: dict[str, Any] | None
    lost: int = 0


#: A SubMesh peer's bounded queue of whole objects (:class:`hp2p.peer.subscription.Subscription`).
MeshSubscription = Subscription[MeshDelivery]


@dataclass
class MeshNodeStats(LinkStats):
    deliveries: int = 0
    peer_list_requests: int = 0


def _password() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(16))


class MeshNode(CoreShell[MeshCore]):
    """One SubMesh peer process: ``await start()``, publish/subscribe, ``await close()``."""

    stats: MeshNodeStats
    homs: MeshHomsClient
    connect_task_name = "hp2p-mesh-connect"

    def __init__(
        self,
        settings: MeshSettings,
        *,
        on_event: EventSink | None = None,
        store: PieceStore | None = None,
        transports: TransportRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.peer_id = settings.peer_id or f"peer-{secrets.token_hex(4)}"
        self.on_event = on_event
        self.stats = MeshNodeStats()
        try:
            key = member_key(settings.key_file)
        except KeyFileError as exc:
            raise MeshNodeError(str(exc)) from None
        self.homs = MeshHomsClient(
            settings.homs,
            timeout=settings.homs_timeout,
            attempts=settings.homs_attempts,
            rng=random.Random(settings.seed),
            key=key,
            security=settings.security,
        )
        self._key = key
        self.homs.on_renewed = self._renewed
        if store is None:
            store = DiskPieceStore(settings.store) if settings.store else MemoryPieceStore()
        self._store = store
        self.core: MeshCore | None = None
        self.address = ""
        self.overlay_id = ""
        self.source_id = ""
        self.state = "starting"
        self._init_shell(settings.send_queue_bytes, transports, settings.r2_limits())
        self._subscribers: list[MeshSubscription] = []
        self._asking_homs = False
        self._asking_key = False
        self.became_source = asyncio.Event()
        self.signer: ManifestSigner | None = None
        self.source_key: str | None = None  # the key manifests are verified with
        #: The application's want-predicate (``MeshCore.set_wants``); set before ``start``
        #: to have it from the first piece, or later with :meth:`set_wants`.
        self.wants: WantsData | None = None
        self.fault_plan = (
            FaultPlan.parse(settings.faults, settings.fault_seed) if settings.faults else None
        )

    # === life cycle ==============================================================================
    async def start(self) -> None:
        """Listen on R2, create (source) or find the SubMesh, join it, open mesh links."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if s.webrtc and s.config.piece_size > ice.MAX_MESSAGE - 4096:
            raise MeshNodeError(
                f"piece_size {s.config.piece_size} does not fit one WebRTC data-channel message"
                f": use --set piece_size={ice.MAX_MESSAGE - 4096} or less with --webrtc"
            )  # one piece, its header and credential in a frame
        self.address = await self._listen(s, self._key, MeshNodeError)
        try:
            overlay, source = await self._find_submesh()
            if source == self.peer_id and self.signer is None:
                self._become_signer(self.peer_id)
            elif s.standby:
                # ready to sign in the source's place, if the operator gave us its key
                self.signer = load_signing_key(
                    s.signing_key or default_key_path(source), create=False
                )
            membership = await self.homs.join(
                overlay,
                peer_id=self.peer_id,
                address=self.address,
                password=_password(),
                expires=s.expires,
                access_key=s.access_key,
            )
            source_address = None
            if s.standby:
                source_address = await self.homs.peer_address(overlay.overlay_id, source)
            self.source_key = self._trusted_key(
                source, self.homs.recorded_key or overlay.source_key
            )
        except (HomsError, MeshNodeError) as exc:
            await self._shutdown_io()
            raise MeshNodeError(str(exc)) from None
        await self._signalling_up(s.homs_timeout * 2, MeshNodeError)
        self.overlay_id = overlay.overlay_id
        self.source_id = source
        self.core = self._new_core()
        self.homs.start_refresh()
        self.core.start(
            MeshJoinInfo(
                overlay_id=self.overlay_id,
                source_id=self.source_id,
                ticket=membership.ticket,
                peers=tuple(p for p in membership.peers if p[0] != self.peer_id),
                standby=s.standby,
                source_address=source_address,
                source_key=self.source_key,
                membership=membership.trust,
            ),
            self._now(),
        )
        self.state = "running"
        self._drain()

    def _new_core(self) -> MeshCore:
        s = self.settings
        core = MeshCore(
            s.config,
            self.peer_id,
            self.address,
            random.Random(s.seed),
            store=self._store,
            signer=self.signer,
        )
        # link-proof nonces must be unpredictable to other peers, unlike the core's seeded rng
        core.admission.entropy = os.urandom
        core.wants = self.wants
        return core

    async def _find_submesh(self) -> tuple[homp.QueryOverlay, str]:
        """The SubMesh to join (created here: this peer is its source; or found at the HOMS)
        and its source peer."""
        s = self.settings
        if s.create is not None:
            assert s.parent is not None
            self._become_signer(self.peer_id)
            overlay_id = await self.homs.create_sub_overlay(
                s.create,
                sub_type="mesh",
                parent_overlay_id=s.parent,
                source_peer_id=self.peer_id,
                owner_id=self.peer_id,
                admin_key=s.admin_key or secrets.token_urlsafe(16),
                description=s.description,
                access_key=s.access_key,
                parent_admin_key=s.parent_admin_key,
            )
            overlay = await self.homs.find_overlay(overlay_id)
        else:
            assert s.join is not None
            overlay = await self.homs.find_overlay(s.join)
        if overlay.type != "sub" or overlay.sub_type != "mesh":
            raise MeshNodeError(
                f"overlay {overlay.overlay_id!r} is a {overlay.type}/{overlay.sub_type}, "
                "not a SubMesh (sub/mesh); join it with `hp2p peer --join` instead"
            )
        if not overlay.source_peer_id:
            raise MeshNodeError(f"SubMesh {overlay.overlay_id!r} names no source peer")
        return overlay, overlay.source_peer_id

    def _become_signer(self, source_id: str) -> None:
        """This peer is the source: load (or create) its key and declare it to the HOMS."""
        if not self.settings.sign:
            return
        self.signer = load_signing_key(
            self.settings.signing_key or default_key_path(source_id), create=True
        )
        assert self.signer is not None
        self.homs.declared_key = self.signer.public_text

    def _trusted_key(self, source_id: str, recorded: str | None) -> str | None:
        """The key manifests are verified with (:func:`hp2p.peer.mesh_trust.choose_source_key`)."""
        signer = self.signer
        try:
            choice = choose_source_key(
                source_id=source_id,
                peer_id=self.peer_id,
                pinned=self.settings.source_key,
                recorded=recorded,
                signer_key=signer.public_text if signer is not None else None,
            )
        except TrustError as exc:
            raise MeshNodeError(str(exc)) from None
        for warning in choice.warnings:
            self._emit("error", {"reason": warning})
        if not choice.keep_signer:
            self.signer = None
        return choice.key

    def _renewed(self, membership: TrustMembership) -> None:
        """A refresh renewed the credential: the kernel uses it from now on."""
        core = self.core
        if core is None or self._stopped or core.admission.membership is None:
            return
        core.admission.renew(membership)

    async def close(self) -> None:
        """Leave cleanly, bounded by ``leave_timeout``: RELEASE every link, HOMP leave."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self._now() + self.settings.leave_timeout
        if self.core is not None and self.state == "running":
            self.core.leave(self._now())
            self._drain_effects()
        for link in list(self._links.values()):
            link.close()
        if self.homs.membership is not None:
            await self.homs.flush_reports(max(0.0, min(1.0, deadline - self._now())))
            try:
                await asyncio.wait_for(self.homs.leave(), max(0.1, deadline - self._now()))
            except (HomsError, TimeoutError) as exc:
                log.warning("HOMP leave failed (the HOMS will expire this peer): %s", exc)
        self.state = "left"
        await self._shutdown_io()
        self._emit("left", {})

    async def _shutdown_io(self) -> None:
        await self._stop_io()
        for sub in list(self._subscribers):
            sub.close()
        await self.homs.aclose()

    # === application =============================================================================
    def publish(
        self, data: bytes, *, app_id: str | None = None, meta: dict[str, Any] | None = None
    ) -> int:
        """Publish one object (source only); returns its object number.

        Raises :class:`NotSourceError` on a peer that is not the SubMesh's source, and
        ``ValueError`` for an object too large for the configured bounds.
        """
        core = self._running_core()
        number = core.publish(data, self._now(), app_id=app_id, meta=meta)
        manifest = core.manifest(number)
        digest = manifest.sha256 if manifest is not None else None
        self._emit("published", {"object": number, "size": len(data), "sha256": digest})
        self._drain()
        return number

    def prioritise(self, objects: list[int]) -> None:
        """Pull these objects before others (an application waits for them); [] clears it."""
        core = self._running_core()
        core.prioritise(objects, self._now())
        self._drain()

    def set_wants(self, wants: WantsData | None) -> None:
        """Pull data only for the objects ``wants(number, manifest)`` accepts (None: all)."""
        self.wants = wants
        if self.core is not None and not self._stopped:
            self.core.set_wants(wants, self._now())
            self._drain()

    def rewant(self) -> None:
        """The want-predicate's answers may have changed: the core asks it again."""
        core = self._running_core()
        core.rewant(self._now())
        self._drain()

    def release(self, object_number: int) -> bool:
        """Let a delivered object's data go, keeping its manifest (``MeshCore.release``)."""
        core = self._running_core()
        done = core.release(object_number, self._now())
        self._drain()
        return done

    def forget_below(self, floor: int) -> int:
        """Drop every object numbered below ``floor``, for good (an application's retention);
        returns how many were held."""
        core = self._running_core()
        dropped = core.forget_below(floor, self._now())
        self._drain()
        return dropped

    def subscribe(self, maxsize: int | None = None) -> MeshSubscription:
        sub = MeshSubscription(maxsize or self.settings.subscriber_queue, self._subscribers.remove)
        self._subscribers.append(sub)
        return sub

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "peer_id": self.peer_id,
            "state": self.state,
            "address": self.address,
            "homs": self.homs.url,
            "overlay_id": self.overlay_id,
            "source_id": self.source_id,
            "source_key": self.source_key,
            "signing_key": self.signer.public_text if self.signer else None,
            "node": asdict(self.stats),
            "r2_limits": self.r2_budget.status(),
        }
        if self.core is not None:
            out["mesh"] = self.core.status()
        return out

    def _running_core(self) -> MeshCore:
        if self.core is None or self.state != "running" or self._stopped:
            raise MeshNodeError("the SubMesh peer is not running (start it first, or it has left)")
        return self.core

    # === effects =================================================================================
    def _effect_handlers(self) -> dict[type[Any], Callable[[Any], None]]:
        return {
            ObjectReceived: self._deliver,
            PeerListWanted: self._peer_list_wanted,
            SourceKeyWanted: self._source_key_wanted,
            BecameSource: self._became_source,
        }

    def _peer_list_wanted(self, effect: PeerListWanted) -> None:
        if not self._asking_homs:
            self._asking_homs = True
            self.stats.peer_list_requests += 1
            self._spawn(self._peer_list(), "hp2p-mesh-peer-list")

    def _source_key_wanted(self, effect: SourceKeyWanted) -> None:
        if not self._asking_key:
            self._asking_key = True
            self._spawn(self._fetch_source_key(), "hp2p-mesh-source-key")

    def _became_source(self, effect: BecameSource) -> None:
        self.became_source.set()
        self._emit("became_source", {"first_object": effect.first_object})

    def _deliver(self, effect: ObjectReceived) -> None:
        self.stats.deliveries += 1
        delivery = MeshDelivery(effect.object_number, effect.data, effect.app_id, effect.meta)
        for sub in self._subscribers:
            sub.put(delivery)
        self._emit(
            "object",
            {
                "object": effect.object_number,
                "size": len(effect.data),
                "app_id": effect.app_id,
                "meta": effect.meta,
            },
        )

    async def _peer_list(self) -> None:
        try:
            peers, _root = await self.homs.recovery_join()
        except HomsError as exc:
            log.warning("asking the HOMS for mesh peers failed: %s", exc)
            peers = []
        finally:
            self._asking_homs = False
        if self.core is not None and not self._stopped:
            self.core.homs_result(peers, self._now())
            self._drain()

    async def _fetch_source_key(self) -> None:
        """The HOMS's record of the source key, for a core that met a manifest without one."""
        try:
            overlay = await self.homs.find_overlay(self.overlay_id)
            key = overlay.source_key
            if key is not None:
                parse_public_key(key)
        except HomsError as exc:
            log.warning("asking the HOMS for the source key failed: %s", exc)
            return  # unanswered: the core gives up after its time-out
        except ValueError as exc:
            self._emit("error", {"reason": f"the HOMS records an unusable source-key: {exc}"})
            key = None
        finally:
            self._asking_key = False
        if self.core is not None and not self._stopped:
            if key is not None and self.source_key is None:
                self.source_key = key
                self._emit("source_key", {"source_key": key})
            self.core.set_source_key(key, self._now())
            self._drain()
