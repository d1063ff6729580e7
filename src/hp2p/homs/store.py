"""The HOMS repository: every HOMP operation as one database transaction.

OIM FE (overlay information), OPM FE (peer lists, tickets), PSM FE (liveness) and OSM FE
(status) of Q.4100 §7.3 meet here, behind one async API that the routes, the expiry sweep
and the benchmarks call. Rules this module keeps:

* **One transaction per operation**, and nothing is kept in process memory: a crash between
  two requests loses nothing, and several HOMS processes on one PostgreSQL behave as one.
* **Tickets** come from ``UPDATE overlay SET last_ticket = last_ticket + 1 … RETURNING``
  inside the join transaction. The row lock serialises concurrent joins of one overlay, and a
  join that fails afterwards (admission, duplicate peer-id) rolls the counter back: no burnt
  ticket and no ghost peer, unlike the reference (etri-2023-protocol.md §2.3, §9.3).
* **Events are published after commit**, so monitors never see a change that did not happen.
* Slow work (scrypt for admin keys) runs outside write transactions and in a thread; the
  write then re-checks that the hash it verified is still the stored one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import BindParameter

from hp2p.homs import join, monitor, peerlist, secrets
from hp2p.homs.credentials import KeyRing
from hp2p.homs.db import DatabaseTarget, accusation, auth_peer, overlay, peer, peer_info
from hp2p.homs.errors import (
    AdmissionRefusedError,
    HompError,
    unknown_overlay,
    unknown_peer,
    wrong_password,
)
from hp2p.homs.monitor import Event, MonitorHub
from hp2p.homs.peerlist import PeerEntry
from hp2p.homs.transactions import (
    SqliteRunner,
    open_runner,
)
from hp2p.trust.credential import Role
from hp2p.trust.membership import CREDENTIALS, PROFILES, REFERENCE_COMPAT
from hp2p.wire import homp

AnyRow: TypeAlias = Row[*tuple[Any, ...]]
T = TypeVar("T")

#: A peer counts as "stopped refreshing" once it is past the moment a reference peer would
#: have refreshed (it refreshes every 0.8 × expires, etri-2023-protocol.md §2.6).
REFRESH_FRACTION = 0.8

#: Distinct reporters whose accusations (after its last sign of life) make a peer a suspect.
ACCUSERS_FOR_SUSPECT = 2

#: Live accusations one reporter may hold in an overlay: a tree peer's neighbours are its
#: parent, its children and a few candidates; more is either churn or a lie.
DEFAULT_MAX_ACCUSATIONS = 8

_OVERLAY_COLS = (
    overlay.c.overlay_id,
    overlay.c.title,
    overlay.c.type,
    overlay.c.sub_type,
    overlay.c.owner_id,
    overlay.c.status,
    overlay.c.description,
    overlay.c.heartbeat_interval,
    overlay.c.heartbeat_timeout,
    overlay.c.auth_type,
    overlay.c.auth_keyword,
    overlay.c.access_key_hash,
    overlay.c.app_id,
    overlay.c.mn_cache,
    overlay.c.md_cache,
    overlay.c.recovery_by,
    overlay.c.parent_overlay_id,
    overlay.c.source_peer_id,
    overlay.c.source_key,
    overlay.c.delete_when_empty,
    overlay.c.security,
    overlay.c.last_ticket,
    overlay.c.created_at,
)


_OVERLAY_NAMES = tuple(c.name for c in _OVERLAY_COLS)
assert _OVERLAY_NAMES == join.OVERLAY_COLUMNS, "keep hp2p.homs.join's columns in step"


@dataclass(frozen=True, slots=True)
class OverlayRecord:
    """An overlay as stored, without secrets (what status, query and join answers show)."""

    overlay_id: str
    title: str
    type: str
    sub_type: str
    owner_id: str
    status: str
    description: str
    heartbeat_interval: int
    heartbeat_timeout: int
    auth_type: str
    keyword: str | None
    app_id: str | None
    cr_policy: homp.CrPolicy | None
    parent_overlay_id: str | None
    source_peer_id: str | None
    source_key: str | None
    delete_when_empty: bool
    last_ticket: int
    created_at: float
    num_peers: int = 0
    access_key_hash: str | None = field(default=None, repr=False)
    #: ``credentials`` or ``reference-compat`` (docs/security.md).
    security: str = REFERENCE_COMPAT

    @property
    def is_mesh(self) -> bool:
        return self.sub_type == "mesh"

    @property
    def requires_credentials(self) -> bool:
        return self.security == CREDENTIALS

    def role_of(self, peer_id: str) -> Role:
        """The credential role: ``source`` for a sub-overlay's source peer, else ``peer``."""
        return "source" if peer_id == self.source_peer_id else "peer"


def record_from_values(values: Sequence[Any]) -> OverlayRecord:
    """An :class:`OverlayRecord` from a plain row in the order of ``_OVERLAY_COLS``."""
    return _record_from(dict(zip(_OVERLAY_NAMES, values, strict=True)))


def _record(row: AnyRow, num_peers: int = 0) -> OverlayRecord:
    return _record_from(row._mapping, num_peers)


def _record_from(m: Any, num_peers: int = 0) -> OverlayRecord:
    cr = None
    if m["recovery_by"] is not None:
        cr = homp.CrPolicy(
            mN_Cache=m["mn_cache"], mD_Cache=m["md_cache"], recovery_by=m["recovery_by"]
        )
    return OverlayRecord(
        overlay_id=m["overlay_id"],
        title=m["title"],
        type=m["type"],
        sub_type=m["sub_type"],
        owner_id=m["owner_id"],
        status=m["status"],
        description=m["description"],
        heartbeat_interval=m["heartbeat_interval"],
        heartbeat_timeout=m["heartbeat_timeout"],
        auth_type=m["auth_type"],
        keyword=m["auth_keyword"],
        app_id=m["app_id"],
        cr_policy=cr,
        parent_overlay_id=m["parent_overlay_id"],
        source_peer_id=m["source_peer_id"],
        source_key=m["source_key"],
        delete_when_empty=bool(m["delete_when_empty"]),
        last_ticket=m["last_ticket"],
        created_at=m["created_at"],
        num_peers=num_peers,
        access_key_hash=m["access_key_hash"],
        security=m["security"],
    )


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What a (normal or recovery) join answers."""

    overlay: OverlayRecord
    peer_id: str
    ticket: int
    expires: int
    peer_list: list[PeerEntry]
    #: The membership credential issued for the member's key, and the HOMS keys to check it
    #: with; ``None`` for a keyless member of a ``reference-compat`` overlay.
    credential: str | None = None
    homs_keys: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What a refresh answers: the granted ``expires`` and the renewed credential, if any."""

    expires: int
    credential: str | None = None
    homs_keys: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One member as the status endpoint shows it (OSM FE)."""

    peer_id: str
    ticket: int
    address: str
    expires: int
    last_seen: float
    expires_at: float
    num_primary: int
    num_out_candidate: int
    num_in_candidate: int
    costmap: dict[str, list[str]] | None
    report_time: float | None
    #: Reported gone by a neighbour and silent since: left out of peer lists (see report).
    suspect_since: float | None = None


@dataclass(frozen=True, slots=True)
class ModifyResult:
    overlay_id: str
    owner_id: str
    title: str | None
    description: str | None
    access_key: str | None
    peerlist: list[str] | None


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one expiry sweep removed."""

    peers: list[tuple[str, str]]
    overlays: list[str]


_EMPTY_COSTMAP: dict[str, list[str]] = {
    "primary": [],
    "outgoing_candidate": [],
    "incoming_candidate": [],
}


def _costmap_dict(costmap: homp.ReportCostmap) -> dict[str, list[str]]:
    return {
        "primary": list(costmap.primary),
        "outgoing_candidate": list(costmap.outgoing_candidate),
        "incoming_candidate": list(costmap.incoming_candidate),
    }


def _load_costmap(text: str | None) -> dict[str, list[str]] | None:
    if text is None:
        return None
    loaded: dict[str, list[str]] = json.loads(text)
    return loaded


def _neighbours(costmap: dict[str, list[str]] | None) -> set[str]:
    if not costmap:
        return set()
    return {pid for ids in costmap.values() for pid in ids}


def peer_links(peer_id: str, costmap: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The links one report describes, in the reference ``update_connection`` layout."""
    links = [{"source": peer_id, "target": t, "primary": True} for t in costmap["primary"]]
    for key in ("outgoing_candidate", "incoming_candidate"):
        links.extend({"source": peer_id, "target": t, "primary": False} for t in costmap[key])
    return links


# ---------------------------------------------------------------------- prepared statements
# Built once: constructing SQLAlchemy expressions per request costs more CPU than running
# them (a join spent ~3 ms building its seven statements before these were hoisted).

_P_OID: BindParameter[str] = bindparam("oid")
_P_PID: BindParameter[str] = bindparam("pid")
_P_NOW: BindParameter[float] = bindparam("now")
_ENTRY_COLS = (peer.c.peer_id, peer.c.address, peer.c.ticket, peer.c.num_primary)
_THIS_PEER = and_(peer.c.overlay_id == _P_OID, peer.c.peer_id == _P_PID)
#: Members a peer list may name: not expired, and not reported gone (``suspect_since``).
_LIVE = and_(
    peer.c.overlay_id == _P_OID, peer.c.expires_at >= _P_NOW, peer.c.suspect_since.is_(None)
)

_SELECT_OVERLAY = select(*_OVERLAY_COLS).where(overlay.c.overlay_id == _P_OID)
_LIVE_PEERS = select(*_ENTRY_COLS).where(_LIVE).order_by(peer.c.ticket)
#: Live peers with no evidence of death, for keyless (reference) joiners: not overdue for
#: their refresh either (peerlist.OVERDUE_FRACTION).
_FRESH_PEERS = (
    select(*_ENTRY_COLS)
    .where(_LIVE, peer.c.last_seen + peer.c.expires * peerlist.OVERDUE_FRACTION >= _P_NOW)
    .order_by(peer.c.ticket)
)
_MEMBER = select(
    peer.c.ticket,
    peer.c.password_hash,
    peer.c.expires,
    peer.c.costmap,
    peer.c.report_time,
    peer.c.public_key,
    peer.c.address,
).where(_THIS_PEER)
_LISTED = select(exists().where(auth_peer.c.overlay_id == _P_OID, auth_peer.c.peer_id == _P_PID))
_UPDATE_PEER = update(peer).where(_THIS_PEER)
_DELETE_PEER = delete(peer).where(_THIS_PEER)
_ANY_PEER = select(exists().where(peer.c.overlay_id == _P_OID))


class HomsStore:
    """The async repository behind every HOMP route.

    Each public method computes what it can outside the database (hashes, the clock), then
    runs one transaction through a :class:`~hp2p.homs.transactions.TransactionRunner`, then
    publishes its monitoring events. ``clock`` returns epoch seconds; tests inject a fake one
    to expire peers without sleeping. ``rng`` drives the SubMesh peer-list choice.
    ``keyring`` signs membership credentials (a fresh in-memory key if not given);
    ``default_security`` is the profile of an overlay created without ``security``.
    """

    def __init__(
        self,
        target: DatabaseTarget,
        *,
        hub: MonitorHub | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        tree_list_size: int = peerlist.DEFAULT_TREE_LIST_SIZE,
        mesh_list_size: int = peerlist.DEFAULT_MESH_LIST_SIZE,
        default_expires: int = 3600,
        delete_empty_overlays: bool = False,
        admin_key_cost: int = secrets.SCRYPT_N,
        keyring: KeyRing | None = None,
        default_security: str = CREDENTIALS,
        max_accusations: int = DEFAULT_MAX_ACCUSATIONS,
    ) -> None:
        if default_security not in PROFILES:
            raise ValueError(
                f"default_security must be one of {PROFILES}, not {default_security!r}"
            )
        self.target = target
        self.hub = hub if hub is not None else MonitorHub()
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.tree_list_size = tree_list_size
        self.mesh_list_size = mesh_list_size
        self.default_expires = default_expires
        self.delete_empty_overlays = delete_empty_overlays
        self.admin_key_cost = admin_key_cost
        self.max_accusations = max_accusations
        self._db = open_runner(target)
        self.keyring = keyring if keyring is not None else KeyRing(None, clock=clock)
        self.default_security = default_security

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create or upgrade the schema (Alembic ``upgrade head``); idempotent."""
        from hp2p.homs.migrations import upgrade_to_head

        await self._db.write(upgrade_to_head)

    async def close(self) -> None:
        await self._db.close()

    async def run_write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (for tests and later layers)."""
        return await self._db.write(work)

    async def run_read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one read transaction (the metrics and listing views)."""
        return await self._db.read(work)

    def now(self) -> float:
        """The store's clock (epoch seconds): what credentials are issued and checked with."""
        return self._clock()

    def _publish(self, events: Iterable[Event]) -> None:
        self.hub.publish_all(events)

    # ------------------------------------------------------------------ overlays (OIM FE)

    async def create_overlay(self, spec: homp.CreateOverlay) -> OverlayRecord:
        """HybridOverlayCreation. A duplicate overlay-id is 409 (the reference says 500)."""
        admin_hash = await asyncio.to_thread(
            secrets.hash_slow, spec.auth.admin_key, self.admin_key_cost
        )
        access_hash = secrets.hash_fast(spec.auth.access_key) if spec.auth.access_key else None
        overlay_id = spec.overlay_id or str(uuid.uuid4())
        parent_hash = await self._parent_consent(spec)
        now = self._clock()
        cr = spec.cr_policy
        values: dict[str, Any] = {
            "overlay_id": overlay_id,
            "title": spec.title,
            "type": spec.type,
            "sub_type": spec.sub_type,
            "owner_id": spec.owner_id,
            "status": "active",
            "description": spec.description,
            "heartbeat_interval": spec.heartbeat_interval,
            "heartbeat_timeout": spec.heartbeat_timeout,
            "auth_type": spec.auth.type,
            "auth_keyword": spec.auth.keyword,
            "admin_key_hash": admin_hash,
            "access_key_hash": access_hash,
            "app_id": spec.app_id,
            "mn_cache": cr.mN_Cache if cr else None,
            "md_cache": cr.mD_Cache if cr else None,
            "recovery_by": cr.recovery_by if cr else None,
            "parent_overlay_id": spec.parent_overlay_id,
            "source_peer_id": spec.source_peer_id,
            "source_key": spec.source_key,
            "delete_when_empty": spec.delete_when_empty,
            "security": spec.security or self.default_security,
            "last_ticket": 0,
            "created_at": now,
            "updated_at": now,
        }

        def tx(conn: Connection) -> AnyRow:
            if conn.scalar(select(exists().where(overlay.c.overlay_id == overlay_id))):
                raise _duplicate_overlay(overlay_id)
            _check_names(conn, overlay_id, spec.title, given_id=spec.overlay_id is not None)
            parent = spec.parent_overlay_id
            if parent is not None and not conn.scalar(
                select(exists().where(overlay.c.overlay_id == parent))
            ):
                raise HompError(
                    400, f"parent overlay {parent!r} does not exist", "$.overlay.parent-overlay-id"
                )
            if parent_hash is not None and not conn.scalar(
                select(
                    exists().where(
                        overlay.c.overlay_id == parent, overlay.c.admin_key_hash == parent_hash
                    )
                )
            ):
                raise _changed_meanwhile()  # the parent's key was rotated while we checked
            conn.execute(insert(overlay).values(**values))
            if spec.auth.peerlist:
                conn.execute(
                    insert(auth_peer),
                    [{"overlay_id": overlay_id, "peer_id": p} for p in set(spec.auth.peerlist)],
                )
            return conn.execute(
                select(*_OVERLAY_COLS).where(overlay.c.overlay_id == overlay_id)
            ).one()

        try:
            row = await self._db.write(tx)
        except IntegrityError as exc:  # a concurrent create on another HOMS instance
            raise _duplicate_overlay(overlay_id) from exc
        self._publish(
            [
                monitor.overlay_created(overlay_id),
                monitor.log(overlay_id, spec.owner_id, "Overlay Creation."),
            ]
        )
        return _record(row)

    async def _parent_consent(self, spec: homp.CreateOverlay) -> str | None:
        """The CoreTree owner's consent to a sub-overlay under it: its admin key (403 if not).

        Checked outside the write transaction (scrypt is slow); returns the verified hash so
        the write can re-check that the key was not rotated meanwhile. ``None`` when no consent
        is needed (a CoreTree, or a sub-overlay under a sub-overlay or an unknown parent, which
        the transaction refuses).
        """
        parent_id = spec.parent_overlay_id
        if parent_id is None:
            return None

        def tx(conn: Connection) -> AnyRow | None:
            return conn.execute(
                select(overlay.c.type, overlay.c.admin_key_hash).where(
                    overlay.c.overlay_id == parent_id
                )
            ).first()

        row = await self._db.read(tx)
        if row is None or row.type != "core":
            return None
        given = spec.auth.parent_admin_key
        if given is None:
            raise HompError(
                403,
                f"a sub-overlay under CoreTree {parent_id!r} needs its owner's consent: send "
                "the CoreTree's admin key as `parent-admin-key` (hp2p bridge --core-admin-key)",
                "$.overlay.auth.parent-admin-key",
            )
        if not await asyncio.to_thread(secrets.verify, given, row.admin_key_hash):
            raise HompError(
                403,
                f"`parent-admin-key` is not the admin key of CoreTree {parent_id!r}",
                "$.overlay.auth.parent-admin-key",
            )
        stored: str = row.admin_key_hash
        return stored

    async def query_overlays(
        self,
        overlay_id: str | None = None,
        title: str | None = None,
        description: str | None = None,
        *,
        parent_overlay_id: str | None = None,
    ) -> list[OverlayRecord]:
        """HybridOverlayQuery: one filter, precedence overlay-id > title > description.

        Title and description match as case-insensitive substrings, like the reference's
        ``LIKE %x%`` under MySQL's default collation; results in creation order.
        ``parent_overlay_id`` (not a HOMP filter) narrows to the SubTree/SubMesh overlays fed
        from that overlay, for the composition views.
        """
        counts = (
            select(peer.c.overlay_id, func.count().label("n"))
            .group_by(peer.c.overlay_id)
            .subquery()
        )
        stmt = select(*_OVERLAY_COLS, func.coalesce(counts.c.n, 0)).outerjoin(
            counts, counts.c.overlay_id == overlay.c.overlay_id
        )
        if overlay_id is not None:
            stmt = stmt.where(overlay.c.overlay_id == overlay_id)
        elif title is not None:
            stmt = stmt.where(overlay.c.title.icontains(title, autoescape=True))
        elif description is not None:
            stmt = stmt.where(overlay.c.description.icontains(description, autoescape=True))
        if parent_overlay_id is not None:
            stmt = stmt.where(overlay.c.parent_overlay_id == parent_overlay_id)
        stmt = stmt.order_by(overlay.c.created_at, overlay.c.overlay_id)

        def tx(conn: Connection) -> list[OverlayRecord]:
            return [_record(r, int(r[-1])) for r in conn.execute(stmt)]

        return await self._db.read(tx)

    async def get_overlay(self, overlay_id: str) -> OverlayRecord:
        found = await self.query_overlays(overlay_id=overlay_id)
        if not found:
            raise unknown_overlay(overlay_id)
        return found[0]

    async def _check_admin(self, overlay_id: str, owner_id: str, admin_key: str) -> str:
        """Verify owner and admin key outside any write transaction; return the hash."""

        def tx(conn: Connection) -> AnyRow | None:
            return conn.execute(
                select(overlay.c.owner_id, overlay.c.admin_key_hash).where(
                    overlay.c.overlay_id == overlay_id
                )
            ).first()

        row = await self._db.read(tx)
        if row is None:
            raise unknown_overlay(overlay_id)
        ok = await asyncio.to_thread(secrets.verify, admin_key, row.admin_key_hash)
        # Both checks always run, and one message covers both, so that a caller cannot
        # learn which of the two was wrong.
        if not ok or row.owner_id != owner_id:
            raise HompError(400, "wrong admin_key or owner-id", "$.overlay.auth.admin_key")
        stored: str = row.admin_key_hash
        return stored

    async def verify_admin_key(self, overlay_id: str, admin_key: str) -> bool:
        """Whether ``admin_key`` is the admin key of ``overlay_id`` (False if no such overlay).

        For credentials that are not a HOMP owner operation (a monitor watching its overlay):
        no owner-id, and one answer for "no overlay" and "wrong key", so nothing is probed.
        """

        def tx(conn: Connection) -> str | None:
            stored: str | None = conn.scalar(
                select(overlay.c.admin_key_hash).where(overlay.c.overlay_id == overlay_id)
            )
            return stored

        stored = await self._db.read(tx)
        if stored is None:
            return False
        return await asyncio.to_thread(secrets.verify, admin_key, stored)

    async def modify_overlay(self, req: homp.ModifyRequest) -> ModifyResult:
        """HybridOverlayModification, including ownership transfer and admin-key rotation."""
        o = req.overlay
        verified_hash = await self._check_admin(o.overlay_id, o.owner_id, o.auth.admin_key)
        values: dict[str, Any] = {"updated_at": self._clock()}
        if o.title is not None:
            values["title"] = o.title
        if o.description is not None:
            values["description"] = o.description
        if o.source_key is not None:
            values["source_key"] = o.source_key
        new_owner = o.owner_id
        if req.ownership is not None:
            if req.ownership.owner_id is not None:
                new_owner = req.ownership.owner_id
                values["owner_id"] = new_owner
            if req.ownership.admin_key is not None:
                values["admin_key_hash"] = await asyncio.to_thread(
                    secrets.hash_slow, req.ownership.admin_key, self.admin_key_cost
                )
        access_key = o.auth.access_key
        plist = list(dict.fromkeys(o.auth.peerlist)) if o.auth.peerlist else None
        replace_admission = plist is not None or access_key is not None
        if plist is not None:
            # As in the reference: a new peer list replaces the access key.
            values["access_key_hash"] = None
            access_key = None
        elif access_key is not None:
            values["access_key_hash"] = secrets.hash_fast(access_key)

        def tx(conn: Connection) -> None:
            done = conn.execute(
                update(overlay)
                .where(
                    overlay.c.overlay_id == o.overlay_id,
                    overlay.c.admin_key_hash == verified_hash,
                    overlay.c.owner_id == o.owner_id,
                )
                .values(**values)
            )
            if done.rowcount != 1:
                raise _changed_meanwhile()
            if replace_admission:
                # As in the reference, new admission data replaces all of the old: a new
                # access key also empties the peer list.
                conn.execute(delete(auth_peer).where(auth_peer.c.overlay_id == o.overlay_id))
            if plist:
                conn.execute(
                    insert(auth_peer), [{"overlay_id": o.overlay_id, "peer_id": p} for p in plist]
                )

        await self._db.write(tx)
        self._publish([monitor.log(o.overlay_id, new_owner, "Overlay Modification.")])
        return ModifyResult(
            overlay_id=o.overlay_id,
            owner_id=new_owner,
            title=o.title,
            description=o.description,
            access_key=access_key,
            peerlist=plist,
        )

    async def remove_overlay(self, overlay_id: str, owner_id: str, admin_key: str) -> None:
        """HybridOverlayRemoval (also the authenticated ``/api/HybridOverlayRemoval``)."""
        verified_hash = await self._check_admin(overlay_id, owner_id, admin_key)

        def tx(conn: Connection) -> None:
            if not _delete_overlay(conn, overlay_id, overlay.c.admin_key_hash == verified_hash):
                raise _changed_meanwhile()

        await self._db.write(tx)
        self._publish(
            [
                monitor.overlay_removed(overlay_id),
                monitor.log(overlay_id, owner_id, "Overlay Removal."),
            ]
        )

    def _delete_if_empty(self, conn: Connection, overlay_id: str, delete_when_empty: bool) -> bool:
        if not (delete_when_empty or self.delete_empty_overlays):
            return False
        if conn.scalar(_ANY_PEER, {"oid": overlay_id}):
            return False
        return _delete_overlay(conn, overlay_id)

    # ------------------------------------------------------------------ peers (OPM/PSM FE)

    def _recovery_list(
        self,
        conn: Connection,
        ov: OverlayRecord,
        peer_id: str,
        now: float,
        ticket: int,
        keyless: bool = False,
    ) -> list[PeerEntry]:
        """The recovery list; for a ``keyless`` (reference) peer, no peer overdue for its refresh.

        A reference orphan dials the first entry and waits for ever if it is dead; told
        only itself, it asks again every 15 s (go-peer-2023 README, HOMP 10), which heals
        once a live peer is there. So it never gets a peer the HOMS itself saw stop
        refreshing; suspects (neighbours' word) come only when nobody else is left, as for
        every orphan (the eclipse of issue #11).
        """
        if keyless and not ov.is_mesh:
            rows = conn.execute(_FRESH_PEERS, {"oid": ov.overlay_id, "now": now})
            live = [PeerEntry(*r) for r in rows]
        else:
            live = _live_entries(conn, ov.overlay_id, now)
        if ov.is_mesh:
            chosen = peerlist.mesh_neighbours(live, peer_id, self._rng, self.mesh_list_size)
        else:
            chosen = peerlist.tree_recovery_points(live, ticket, self.tree_list_size)
        if any(e.peer_id != peer_id for e in chosen):
            return chosen
        # Nobody but the orphan itself is offered: every older member is a suspect. Telling
        # it that it is alone would make it a root and split the overlay (the peer-list
        # eclipse of issue #11), so it gets the suspects, older ones nearest first (a tree
        # orphan never attaches below its own subtree).
        stmt = select(*_ENTRY_COLS).where(
            peer.c.overlay_id == ov.overlay_id,
            peer.c.expires_at >= now,
            peer.c.suspect_since.is_not(None),
            peer.c.peer_id != peer_id,
        )
        if keyless:
            stmt = stmt.where(peer.c.last_seen + peer.c.expires * peerlist.OVERDUE_FRACTION >= now)
        if ov.is_mesh:
            stmt = stmt.order_by(peer.c.ticket).limit(self.mesh_list_size)
        else:
            stmt = stmt.where(peer.c.ticket < ticket).order_by(peer.c.ticket.desc())
            stmt = stmt.limit(self.tree_list_size)
        suspects = [PeerEntry(*r) for r in conn.execute(stmt)]
        return suspects or chosen

    async def join(self, req: homp.JoinRequest, *, addresses: Sequence[str] = ()) -> JoinResult:
        """HybridOverlayJoin (normal): a new ticket, a membership row and a peer list.

        The transaction is :func:`hp2p.homs.join.join_steps`, in plain SQL on the driver's own
        connection (the hot path); the rules on the overlay row are this store's.
        """
        o, p = req.overlay, req.peer
        now = self._clock()
        expires = p.expires if p.expires is not None else self.default_expires
        access_key = o.auth.access_key if o.auth is not None else None
        password_hash = secrets.hash_fast(p.auth.password)
        info = _registry_values(p.peer_id, [p.address, *addresses], p.capabilities, now)

        def check(row: tuple[Any, ...], listed: bool) -> OverlayRecord:
            ov = record_from_values(row)
            _check_kind(ov, o.type, o.sub_type)
            if ov.requires_credentials and p.public_key is None:
                raise _keyless(ov.overlay_id)
            if ov.auth_type == "closed":
                _admission(ov, listed, access_key)
            return ov

        def mesh_choice(live: list[PeerEntry]) -> list[PeerEntry]:
            return peerlist.mesh_neighbours(live, p.peer_id, self._rng, self.mesh_list_size)

        def steps() -> join.Steps[OverlayRecord]:
            return join.join_steps(
                overlay_id=o.overlay_id,
                peer_id=p.peer_id,
                member=(p.address, password_hash, expires, now, p.public_key),
                info=(info["addresses"], info["capabilities"], now),
                tree_list_size=self.tree_list_size,
                check=check,
                mesh_choice=mesh_choice,
                same_peer=lambda stored: secrets.verify(p.auth.password, stored),
                mesh_list_size=self.mesh_list_size,
            )

        def on_sqlite(conn: sqlite3.Connection) -> tuple[OverlayRecord, int, list[PeerEntry]]:
            return join.run_on_sqlite(conn, steps())

        async def on_postgres(conn: Any) -> tuple[OverlayRecord, int, list[PeerEntry]]:
            return await join.run_on_postgres(conn, steps())

        try:
            if isinstance(self._db, SqliteRunner):
                ov, _ticket, chosen = await self._db.write_raw(on_sqlite)
            else:
                ov, _ticket, chosen = await self._db.write_raw(on_postgres)
        except join.DuplicatePeerError as exc:
            raise _duplicate_peer(o.overlay_id, p.peer_id) from exc
        except join.PeerIdTakenError as exc:
            raise HompError(
                409,
                f"peer-id {p.peer_id!r} is a live member of another overlay and this join does "
                "not prove it is that peer (another password); use another peer-id, or the "
                "password it joined with",
                "$.peer.peer-id",
            ) from exc
        self._publish(
            [
                monitor.peer_added(ov.overlay_id, p.peer_id, ov.last_ticket),
                monitor.log(ov.overlay_id, p.peer_id, "Overlay Join."),
            ]
        )
        result = JoinResult(ov, p.peer_id, ov.last_ticket, expires, chosen)
        return self._credentialed(result, p.public_key, p.address, now)

    def _credentialed(
        self, result: JoinResult, public_key: str | None, address: str, now: float
    ) -> JoinResult:
        """``result`` with a credential for ``public_key`` (stored values only), if any."""
        if public_key is None:
            return result
        ov = result.overlay
        token = self.keyring.issue(
            overlay_id=ov.overlay_id,
            peer_id=result.peer_id,
            ticket_id=result.ticket,
            public_key=public_key,
            role=ov.role_of(result.peer_id),
            address=address,
            now=now,
        )
        return dataclasses.replace(result, credential=token, homs_keys=self.keyring.homs_keys())

    async def check_source_key(self, overlay_id: str, peer_id: str, key: str) -> None:
        """Before a join that declares ``source-key``: may this peer declare this key?

        Only the sub-overlay's source peer may, and only the key already recorded if there is
        one (409 otherwise: a new key is the owner's decision, ``PUT /homs``). Checked before
        the join so that a refused declaration leaves no member behind.
        """
        ov = await self.get_overlay(overlay_id)
        if ov.type != "sub" or ov.source_peer_id != peer_id:
            raise HompError(
                400,
                f"only the source peer {ov.source_peer_id!r} of a sub-overlay may declare "
                f"`source-key`; {peer_id!r} may not",
                "$.overlay.source-key",
            )
        if ov.source_key is not None and ov.source_key != key:
            raise HompError(
                409,
                f"sub-overlay {overlay_id!r} records another source key for {peer_id!r}: "
                "start the source with the key file it was first started with, or have the "
                "owner replace the key (PUT /homs with `source-key`)",
                "$.overlay.source-key",
            )

    async def claim_source_key(self, result: JoinResult, key: str) -> JoinResult:
        """After the source's (authenticated, admitted) join: record its key if none is.

        The UPDATE only fills an empty key, so of two racing claims the first wins; the answer
        carries the key the HOMS actually records, and a source whose key lost sees that.
        """
        overlay_id = result.overlay.overlay_id

        def tx(conn: Connection) -> str | None:
            conn.execute(
                update(overlay)
                .where(overlay.c.overlay_id == overlay_id, overlay.c.source_key.is_(None))
                .values(source_key=key, updated_at=self._clock())
            )
            recorded: str | None = conn.scalar(
                select(overlay.c.source_key).where(overlay.c.overlay_id == overlay_id)
            )
            return recorded

        recorded = await self._db.write(tx)
        if recorded != result.overlay.source_key:
            self._publish([monitor.log(overlay_id, result.peer_id, "Source Key Recorded.")])
        return dataclasses.replace(
            result, overlay=dataclasses.replace(result.overlay, source_key=recorded)
        )

    async def recovery_join(self, req: homp.JoinRequest) -> JoinResult:
        """HybridOverlayJoin with ``?recovery=true``: a peer lost its parent.

        The peer must be a member, prove its password and send the ticket the HOMS issued
        to it (a forged ticket would let it attach below its own subtree: 403). No ticket is
        issued; the call refreshes the peer's liveness, since it proves the peer is alive.
        """
        o, p = req.overlay, req.peer
        ticket = p.ticket_id
        if ticket is None:
            raise HompError(400, "a recovery join needs `ticket-id`", "$.peer.ticket-id")
        now = self._clock()
        access_key = o.auth.access_key if o.auth is not None else None

        def tx(conn: Connection) -> tuple[OverlayRecord, int, list[PeerEntry], AnyRow]:
            ov = _overlay(conn, o.overlay_id)
            _check_kind(ov, o.type, o.sub_type)
            member = _member(conn, o.overlay_id, p.peer_id, p.auth.password)
            _same_key(member, p.public_key)
            if member.ticket != ticket:
                raise HompError(
                    403,
                    f"ticket-id {ticket} is not the ticket issued to {p.peer_id!r}",
                    "$.peer.ticket-id",
                )
            _admit(conn, ov, p.peer_id, access_key)
            expires = _renew(conn, o.overlay_id, p.peer_id, p.expires, member, now)
            keyless = member.public_key is None
            chosen = self._recovery_list(conn, ov, p.peer_id, now, ticket, keyless)
            return ov, expires, chosen, member

        ov, expires, chosen, member = await self._db.write(tx)
        self._publish([monitor.log(o.overlay_id, p.peer_id, "Overlay Recovery.")])
        result = JoinResult(ov, p.peer_id, ticket, expires, chosen)
        return self._credentialed(result, member.public_key, member.address, now)

    async def refresh(self, req: homp.RefreshRequest) -> int:
        """HybridOverlayRefresh: extend the peer's liveness; returns the stored ``expires``."""
        return (await self.refresh_member(req)).expires

    async def refresh_member(self, req: homp.RefreshRequest) -> RefreshResult:
        """HybridOverlayRefresh with the renewed credential of a member that has a key.

        Only a current member is renewed: after leave, expiry or removal the membership row is
        gone, the refresh is refused and no credential is issued (the revocation model,
        docs/security.md). The credential names the address stored by this refresh.
        """
        o, p = req.overlay, req.peer
        now = self._clock()
        access_key = o.auth.access_key if o.auth is not None else None

        def tx(conn: Connection) -> tuple[OverlayRecord, int, AnyRow]:
            ov = _overlay(conn, o.overlay_id)
            member = _member(conn, o.overlay_id, p.peer_id, p.auth.password)
            _admit(conn, ov, p.peer_id, access_key)
            expires = _renew(
                conn, o.overlay_id, p.peer_id, p.expires, member, now, address=p.address
            )
            return ov, expires, member

        ov, expires, member = await self._db.write(tx)
        if member.public_key is None:
            return RefreshResult(expires)
        token = self.keyring.issue(
            overlay_id=ov.overlay_id,
            peer_id=p.peer_id,
            ticket_id=member.ticket,
            public_key=member.public_key,
            role=ov.role_of(p.peer_id),
            address=p.address,
            now=now,
        )
        return RefreshResult(expires, token, self.keyring.homs_keys())

    async def member_key(self, overlay_id: str, peer_id: str) -> tuple[str | None, bool]:
        """(the member's public key, whether it is a live member) for the signalling hello."""
        now = self._clock()

        def tx(conn: Connection) -> AnyRow | None:
            return conn.execute(
                select(peer.c.public_key, peer.c.expires_at).where(
                    peer.c.overlay_id == overlay_id, peer.c.peer_id == peer_id
                )
            ).first()

        row = await self._db.read(tx)
        if row is None:
            return None, False
        return row.public_key, bool(row.expires_at >= now)

    async def leave(self, req: homp.LeaveRequest) -> bool:
        """HybridOverlayLeave; returns whether the overlay was deleted as now empty."""
        o, p = req.overlay, req.peer

        def tx(conn: Connection) -> bool:
            ov = _overlay(conn, o.overlay_id)
            _member(conn, o.overlay_id, p.peer_id, p.auth.password)
            conn.execute(_DELETE_PEER, {"oid": o.overlay_id, "pid": p.peer_id})
            return self._delete_if_empty(conn, o.overlay_id, ov.delete_when_empty)

        removed = await self._db.write(tx)
        events = [monitor.log(o.overlay_id, p.peer_id, "Overlay Leave.")]
        if removed:
            events += [
                monitor.overlay_removed(o.overlay_id),
                monitor.log(o.overlay_id, p.peer_id, "Overlay Removal(Empty)."),
            ]
        else:
            events.append(monitor.peer_deleted(o.overlay_id, p.peer_id))
        self._publish(events)
        return removed

    async def report(self, req: homp.ReportRequest) -> list[str]:
        """HybridOverlayReport: store the connection status; returns peers removed as lost.

        Every report refreshes the reporter's liveness (the reference only does so when the
        cost map changed). A neighbour that disappears from the reporter's cost map is
        removed only if it has *also* stopped refreshing, i.e. it is past the time it would
        have refreshed (0.8 × its expires): one peer's word alone never evicts another.
        Until then, if it has shown no life for the overlay's heartbeat timeout, it is a
        *suspect*: still a member, but no longer named in peer lists, so orphans of a mass
        failure are not sent to the dead; its own next refresh or report clears the mark.
        """
        o, p, st = req.overlay, req.peer, req.status
        now = self._clock()
        new_map = _costmap_dict(st.costmap)
        new_text = json.dumps(new_map)

        def tx(conn: Connection) -> tuple[bool, list[str]]:
            ov = _overlay(conn, o.overlay_id)
            member = _member(conn, o.overlay_id, p.peer_id, p.auth.password)
            old_map = _load_costmap(member.costmap)
            conn.execute(
                _UPDATE_PEER,
                {
                    "oid": o.overlay_id,
                    "pid": p.peer_id,
                    "num_primary": st.num_primary,
                    "num_out_candidate": st.num_out_candidate,
                    "num_in_candidate": st.num_in_candidate,
                    "costmap": new_text,
                    "report_time": now,
                    "last_seen": now,
                    "expires_at": now + int(member.expires),
                    "suspect_since": None,
                },
            )
            # A peer that never reported has no links, as the reference sees it: a first
            # report without connections is no change (no ``update_connection``).
            changed = (old_map or _EMPTY_COSTMAP) != new_map
            dropped = _neighbours(old_map) - _neighbours(new_map) - {p.peer_id}
            if not dropped:
                return changed, []
            gone = sorted(
                r.peer_id
                for r in conn.execute(
                    delete(peer)
                    .where(
                        peer.c.overlay_id == o.overlay_id,
                        peer.c.peer_id.in_(sorted(dropped)),
                        peer.c.last_seen + peer.c.expires * REFRESH_FRACTION < now,
                    )
                    .returning(peer.c.peer_id)
                )
            )
            # The others stay members. One reporter's word is only an *accusation* (bounded
            # per reporter); the accused leaves the peer lists (a suspect) once a second,
            # distinct reporter accuses it too after its last sign of life. An accusation needs
            # the accused to look gone: no sign of life (join, refresh, report) for a heartbeat
            # timeout, or no report of its own since the reporter's previous one, which still
            # named it (both ends of a path that really changed report it; a dead end cannot).
            # So a liar that lists every peer and then none eclipses nobody (issue #11).
            rest = sorted(dropped - set(gone))
            if rest:
                self._accuse(conn, ov, p.peer_id, rest, member.report_time, now)
            return changed, gone

        changed, lost = await self._db.write(tx)
        events: list[Event] = []
        if changed:
            links = peer_links(p.peer_id, new_map)
            events.append(monitor.connection_updated(o.overlay_id, p.peer_id, links))
        events.append(monitor.log(o.overlay_id, p.peer_id, "Overlay Report. " + new_text))
        events += [monitor.peer_deleted(o.overlay_id, pid) for pid in lost]
        self._publish(events)
        return lost

    def _accuse(
        self,
        conn: Connection,
        ov: OverlayRecord,
        reporter: str,
        dropped: list[str],
        previous_report: float | None,
        now: float,
    ) -> None:
        """Record ``reporter``'s accusations of ``dropped`` and mark the corroborated ones.

        Rows older than a heartbeat timeout are forgotten, and a reporter holds at most
        ``max_accusations`` live ones (its plausible neighbourhood): a report naming more adds
        nothing, so one peer can neither fill the table nor accuse the whole overlay.
        """
        oid = ov.overlay_id
        quiet_since = now - ov.heartbeat_timeout
        previous = previous_report if previous_report is not None else now
        accusable = [
            r.peer_id
            for r in conn.execute(
                select(peer.c.peer_id).where(
                    peer.c.overlay_id == oid,
                    peer.c.peer_id.in_(dropped),
                    peer.c.suspect_since.is_(None),
                    or_(
                        peer.c.last_seen < quiet_since,
                        peer.c.report_time.is_(None),
                        peer.c.report_time < previous,
                    ),
                )
            )
        ]
        if not accusable:
            return
        conn.execute(
            delete(accusation).where(accusation.c.overlay_id == oid, accusation.c.at < quiet_since)
        )
        held = {
            r.accused_id
            for r in conn.execute(
                select(accusation.c.accused_id).where(
                    accusation.c.overlay_id == oid, accusation.c.reporter_id == reporter
                )
            )
        }
        renewed = sorted(set(accusable) & held)
        if renewed:
            conn.execute(
                update(accusation)
                .where(
                    accusation.c.overlay_id == oid,
                    accusation.c.reporter_id == reporter,
                    accusation.c.accused_id.in_(renewed),
                )
                .values(at=now)
            )
        room = max(self.max_accusations - len(held), 0)
        fresh = [pid for pid in accusable if pid not in held][:room]
        if fresh:
            conn.execute(
                insert(accusation),
                [
                    {"overlay_id": oid, "accused_id": pid, "reporter_id": reporter, "at": now}
                    for pid in fresh
                ],
            )
        targets = sorted({*renewed, *fresh})
        if not targets:
            return
        corroborated = (
            select(accusation.c.accused_id)
            .join(
                peer,
                and_(
                    peer.c.overlay_id == accusation.c.overlay_id,
                    peer.c.peer_id == accusation.c.accused_id,
                ),
            )
            .where(
                accusation.c.overlay_id == oid,
                accusation.c.accused_id.in_(targets),
                accusation.c.at >= peer.c.last_seen,
            )
            .group_by(accusation.c.accused_id)
            .having(func.count() >= ACCUSERS_FOR_SUSPECT)
        )
        suspects = sorted(r.accused_id for r in conn.execute(corroborated))
        if suspects:
            conn.execute(
                update(peer)
                .where(
                    peer.c.overlay_id == oid,
                    peer.c.peer_id.in_(suspects),
                    peer.c.suspect_since.is_(None),
                )
                .values(suspect_since=now)
            )

    # ------------------------------------------------------------------ liveness (PSM FE)

    async def expire(self) -> SweepResult:
        """Remove every peer past its deadline, then the overlays this left empty.

        Idempotent and safe to run from several HOMS processes at once: each deletion is a
        single statement, so a peer is removed (and announced) by exactly one of them.
        """
        now = self._clock()

        def tx(conn: Connection) -> tuple[list[tuple[str, str]], list[str]]:
            gone = conn.execute(
                delete(peer)
                .where(peer.c.expires_at < now)
                .returning(peer.c.overlay_id, peer.c.peer_id)
            ).all()
            removed: list[str] = []
            for overlay_id in sorted({r.overlay_id for r in gone}):
                flag = conn.scalar(
                    select(overlay.c.delete_when_empty).where(overlay.c.overlay_id == overlay_id)
                )
                if flag is not None and self._delete_if_empty(conn, overlay_id, bool(flag)):
                    removed.append(overlay_id)
            return [(r.overlay_id, r.peer_id) for r in gone], removed

        peers_gone, overlays_gone = await self._db.write(tx)
        events: list[Event] = []
        for overlay_id, peer_id in peers_gone:
            events.append(monitor.log(overlay_id, peer_id, "Overlay Leave(Expired)."))
            if overlay_id not in overlays_gone:
                events.append(monitor.peer_deleted(overlay_id, peer_id))
        events += [monitor.overlay_removed(overlay_id) for overlay_id in overlays_gone]
        self._publish(events)
        return SweepResult(peers_gone, overlays_gone)

    # ------------------------------------------------------------------ status (OSM FE)

    async def peers(self, overlay_id: str, *, peer_id: str | None = None) -> list[PeerStatus]:
        """Every member of an overlay in ticket order (or only ``peer_id``: [] or [it]), with
        liveness and last report."""

        def tx(conn: Connection) -> list[PeerStatus]:
            if not conn.scalar(select(exists().where(overlay.c.overlay_id == overlay_id))):
                raise unknown_overlay(overlay_id)
            query = select(peer).where(peer.c.overlay_id == overlay_id)
            if peer_id is not None:
                query = query.where(peer.c.peer_id == peer_id)
            rows = conn.execute(query.order_by(peer.c.ticket))
            return [
                PeerStatus(
                    peer_id=r.peer_id,
                    ticket=r.ticket,
                    address=r.address,
                    expires=r.expires,
                    last_seen=r.last_seen,
                    expires_at=r.expires_at,
                    num_primary=r.num_primary,
                    num_out_candidate=r.num_out_candidate,
                    num_in_candidate=r.num_in_candidate,
                    costmap=_load_costmap(r.costmap),
                    report_time=r.report_time,
                    suspect_since=r.suspect_since,
                )
                for r in rows
            ]

        return await self._db.read(tx)

    # ------------------------------------------------------------------ signalling checks

    async def authenticate_peer(
        self, peer_id: str, password: str, overlay_id: str | None = None
    ) -> frozenset[str]:
        """The overlays in which ``peer_id`` is a member whose password is ``password``.

        With ``overlay_id`` only that overlay is considered. Empty when the peer is in none
        of them or the password is wrong (one answer for both, so that a caller cannot probe
        membership). Used by the signalling WebSocket to let a socket speak for a peer-id.
        Overlays that require credentials are left out: there a socket must prove the
        member's credential instead (the password is a weaker secret, sent to the HOMS with
        every refresh and report; docs/security.md).
        """
        stmt = (
            select(peer.c.overlay_id, peer.c.password_hash)
            .join(overlay, overlay.c.overlay_id == peer.c.overlay_id)
            .where(peer.c.peer_id == peer_id, overlay.c.security != CREDENTIALS)
        )
        if overlay_id is not None:
            stmt = stmt.where(peer.c.overlay_id == overlay_id)

        def tx(conn: Connection) -> list[AnyRow]:
            return list(conn.execute(stmt))

        rows = await self._db.read(tx)
        return frozenset(r.overlay_id for r in rows if secrets.verify(password, r.password_hash))

    async def share_overlay(self, from_id: str, overlays: Iterable[str], to_id: str) -> bool:
        """Whether ``from_id`` and ``to_id`` are both *current* members of one of ``overlays``.

        Checked per relay, so a peer that left (or expired from) an overlay can no longer
        reach that overlay's peers through the HOMS even if its socket stays open.
        """
        allowed = sorted(overlays)
        if not allowed:
            return False
        other = peer.alias("other")
        stmt = (
            select(peer.c.overlay_id)
            .join(other, other.c.overlay_id == peer.c.overlay_id)
            .where(
                peer.c.peer_id == from_id,
                other.c.peer_id == to_id,
                peer.c.overlay_id.in_(allowed),
            )
            .limit(1)
        )

        def tx(conn: Connection) -> bool:
            return conn.execute(stmt).first() is not None

        return await self._db.read(tx)

    async def peer_info(self, peer_id: str) -> dict[str, Any] | None:
        """PIR FE: what ``peer_id`` told about itself at its last join."""

        def tx(conn: Connection) -> AnyRow | None:
            return conn.execute(select(peer_info).where(peer_info.c.peer_id == peer_id)).first()

        row = await self._db.read(tx)
        if row is None:
            return None
        return {
            "peer-id": row.peer_id,
            "addresses": json.loads(row.addresses),
            "capabilities": None if row.capabilities is None else json.loads(row.capabilities),
            "updated_at": row.updated_at,
        }


# ---------------------------------------------------------------------- transaction helpers


def _live_entries(conn: Connection, overlay_id: str, now: float) -> list[PeerEntry]:
    rows = conn.execute(_LIVE_PEERS, {"oid": overlay_id, "now": now})
    return [PeerEntry(*r) for r in rows]


def _overlay(conn: Connection, overlay_id: str) -> OverlayRecord:
    row = conn.execute(_SELECT_OVERLAY, {"oid": overlay_id}).first()
    if row is None:
        raise unknown_overlay(overlay_id)
    return _record(row)


def _member(conn: Connection, overlay_id: str, peer_id: str, password: str) -> AnyRow:
    row = conn.execute(_MEMBER, {"oid": overlay_id, "pid": peer_id}).first()
    if row is None:
        raise unknown_peer(overlay_id, peer_id)
    if not secrets.verify(password, row.password_hash):
        raise wrong_password()
    return row


def _renew(
    conn: Connection,
    overlay_id: str,
    peer_id: str,
    requested: int | None,
    member: AnyRow,
    now: float,
    **also: Any,
) -> int:
    """A member proved it is alive: its ``expires`` (the requested one, else the stored one)
    runs from ``now`` and it is no longer suspect; ``also`` are more columns to set."""
    expires = requested if requested is not None else int(member.expires)
    values = {"expires": expires, "last_seen": now, "expires_at": now + expires}
    conn.execute(
        _UPDATE_PEER, {"oid": overlay_id, "pid": peer_id, **values, "suspect_since": None, **also}
    )
    return expires


def _admit(conn: Connection, ov: OverlayRecord, peer_id: str, access_key: str | None) -> None:
    """Closed-overlay admission: a listed peer-id, or the right access key; else 407.

    Unlike the reference, an unlisted peer that sends no key is refused (there a NULL stored
    key equals a missing key, conformance step 11).
    """
    if ov.auth_type != "closed":
        return
    _admission(ov, bool(conn.scalar(_LISTED, {"oid": ov.overlay_id, "pid": peer_id})), access_key)


def _admission(ov: OverlayRecord, listed: bool, access_key: str | None) -> None:
    """The closed-overlay rule, given whether the peer-id is on the overlay's peer list."""
    if listed:
        return
    if access_key is not None and ov.access_key_hash is not None:
        if secrets.verify(access_key, ov.access_key_hash):
            return
        raise AdmissionRefusedError(ov.overlay_id, "wrong access_key for this closed overlay")
    raise AdmissionRefusedError(
        ov.overlay_id, "closed overlay: peer-id not in its peer list and no valid access_key"
    )


def _keyless(overlay_id: str) -> HompError:
    return HompError(
        403,
        f"overlay {overlay_id!r} requires hp2p membership credentials: join with "
        "`peer.public-key` (hp2p peers do); peers without a key (the reference peers) can only "
        "join overlays created with `security: reference-compat`",
        "$.peer.public-key",
    )


def _same_key(member: AnyRow, public_key: str | None) -> None:
    """A recovery join that names a key must name the member's own (no takeover)."""
    if public_key is not None and public_key != member.public_key:
        raise HompError(
            409,
            "`public-key` is not the key this peer joined with; a peer keeps its key for the "
            "whole membership (leave and join again to change it)",
            "$.peer.public-key",
        )


def _check_kind(ov: OverlayRecord, type_: str, sub_type: str) -> None:
    if type_ != ov.type or sub_type != ov.sub_type:
        raise HompError(
            400,
            f"overlay {ov.overlay_id!r} is type {ov.type!r} sub-type {ov.sub_type!r}, "
            f"not {type_!r} {sub_type!r}",
            "$.overlay.sub-type" if type_ == ov.type else "$.overlay.type",
        )


def _delete_overlay(conn: Connection, overlay_id: str, *extra: Any) -> bool:
    found = conn.scalar(
        select(overlay.c.overlay_id).where(overlay.c.overlay_id == overlay_id, *extra)
    )
    if found is None:
        return False
    # Explicit child deletes: do not depend on SQLite's per-connection foreign_keys.
    conn.execute(delete(peer).where(peer.c.overlay_id == overlay_id))
    conn.execute(delete(auth_peer).where(auth_peer.c.overlay_id == overlay_id))
    conn.execute(delete(accusation).where(accusation.c.overlay_id == overlay_id))
    conn.execute(delete(overlay).where(overlay.c.overlay_id == overlay_id))
    return True


def _registry_values(
    peer_id: str, addresses: list[str], capabilities: dict[str, Any] | None, now: float
) -> dict[str, Any]:
    return {
        "peer_id": peer_id,
        "addresses": json.dumps(list(dict.fromkeys(addresses))),
        "capabilities": None if capabilities is None else json.dumps(capabilities),
        "preferences": None,
        "updated_at": now,
    }


def _check_names(conn: Connection, overlay_id: str, title: str, *, given_id: bool) -> None:
    """409 when a new overlay's names could be confused with an existing overlay's.

    A peer joins by overlay-id *or* title (``--join NAME``): an overlay-id equal to another
    overlay's title, or a title equal to another's id, would let a newcomer capture the
    joins meant for the older overlay.
    """
    if conn.scalar(select(exists().where(overlay.c.title == overlay_id))):
        raise HompError(
            409,
            f"overlay-id {overlay_id!r} is the title of an existing overlay; choose another "
            "(or leave it out: the HOMS generates one)",
            "$.overlay.overlay-id" if given_id else "$.overlay",
        )
    if conn.scalar(select(exists().where(overlay.c.overlay_id == title))):
        raise HompError(
            409, f"title {title!r} is the overlay-id of an existing overlay", "$.overlay.title"
        )


def _changed_meanwhile() -> HompError:
    return HompError(
        409,
        "the overlay changed or was removed while this request was checked; retry",
        "$.overlay.overlay-id",
    )


def topology(members: Sequence[PeerStatus]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes and de-duplicated links of an overlay from the members' last reports.

    The layout is the reference cost map's (``seeder`` marks ticket 1); a link is reported by
    both of its ends, so each unordered pair appears once, as first seen in ticket order.
    """
    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    seen: set[frozenset[str]] = set()
    for m in members:
        node: dict[str, Any] = {"id": m.peer_id, "ticket_id": m.ticket}
        if m.ticket == 1:
            node["seeder"] = True
        nodes.append(node)
        for link in peer_links(m.peer_id, m.costmap or _EMPTY_COSTMAP):
            pair = frozenset((link["source"], link["target"]))
            if pair not in seen:
                seen.add(pair)
                links.append(link)
    return nodes, links


def cost_map(overlay_id: str, members: Sequence[PeerStatus]) -> dict[str, Any]:
    """The reference monitor's ``current_cost_map`` message (REST and WebSocket alike)."""
    nodes, links = topology(members)
    return {
        "overlay_id": overlay_id,
        "type": "peer",
        "action": "current_cost_map",
        "data": {
            "graph": [],
            "nodes": nodes,
            "links": links,
            "directed": False,
            "multigraph": True,
        },
    }


def _duplicate_peer(overlay_id: str, peer_id: str) -> HompError:
    return HompError(
        409,
        f"peer-id {peer_id!r} has already joined overlay {overlay_id!r}; "
        "leave first or use another peer-id",
        "$.peer.peer-id",
    )


def _duplicate_overlay(overlay_id: str) -> HompError:
    return HompError(409, f"overlay-id {overlay_id!r} already exists", "$.overlay.overlay-id")
