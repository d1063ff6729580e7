"""Data broadcast (DB FE, Q.4100 §7.2.3.3): the per-source duplicate window.

The reference peer keeps one ``last_seen`` per source and drops everything not newer, and it
overwrites ``last_seen`` even for rejected packets (etri-2023-protocol.md §9.2): late and
recovered messages are lost, and one forged huge sequence silences a source. hp2p keeps, per
source, the newest accepted sequence and a bitmap of the ``window`` sequences below it:

* newer than the newest, by at most ``max_ahead``: accepted, the window slides;
* further ahead than ``max_ahead``: rejected as forged (``too_far``), the window does not move;
* inside the window and not yet seen: accepted (a late or recovered message);
* inside the window and seen: rejected (``duplicates``);
* below the window: rejected (``too_old``): it can no longer be told from a duplicate.

Every check is O(1) (a shift or a bit test on a Python int), so it sits on the hot path. The
first message of a source sets its base; messages before it are not reported as gaps. At most
``max_sources`` windows are kept (the oldest source out first): a stream of made-up source ids
cannot grow a peer's memory.

On an overlay that requires credentials (docs/security.md) the DB FE also checks **who said
it** before anything else happens to a message: the source's membership credential (sent
once per link, kept per source) and its signature over the message (:mod:`hp2p.trust.origin`).
Live, pushed and pulled data all come through :meth:`Broadcaster.on_data`, so the check is
written once; a forged message changes no window, enters no cache and reaches no one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgspec

from hp2p.peer.effects import Deliver, Send
from hp2p.peer.errors import NotSourceError
from hp2p.peer.paths import PATH_ROLES, Link
from hp2p.trust import origin
from hp2p.trust.credential import CLOCK_SKEW, CredentialError
from hp2p.trust.keys import SigningKey
from hp2p.trust.membership import Membership
from hp2p.wire.r2.messages import LIVE, BroadcastData, BroadcastDataResponse, BroadcastExt

if TYPE_CHECKING:
    from hp2p.peer.core import PeerCore

ACCEPTED = 0
DUPLICATE = 1
TOO_OLD = 2
TOO_FAR = 3


class SourceWindow:
    """Sliding bitmap for one source: bit ``k`` set ⇔ sequence ``newest − k`` was accepted."""

    __slots__ = ("first", "mask", "newest")

    def __init__(self, first: int) -> None:
        self.first = first
        self.newest = first
        self.mask = 1

    def missing(self, window: int) -> list[int]:
        """Sequences between the first seen and the newest that never arrived (oldest first)."""
        span = min(window, self.newest - self.first + 1)
        holes = ~self.mask & ((1 << span) - 1)
        out: list[int] = []
        while holes:
            low = holes & -holes
            out.append(self.newest - (low.bit_length() - 1))
            holes ^= low
        out.reverse()
        return out


@dataclass(slots=True)
class DuplicateCounters:
    """Why messages were refused; every rejection is counted, none is silent."""

    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    too_old: int = 0
    too_far: int = 0
    evicted: int = 0  # source windows dropped to stay within max_sources


class DuplicateFilter:
    """Per-source sliding windows; ``check`` answers ACCEPTED or the reason for refusal."""

    __slots__ = ("_full", "counters", "max_ahead", "max_sources", "sources", "window")

    def __init__(self, window: int, max_ahead: int, max_sources: int = 4096) -> None:
        if window < 1 or max_ahead < 1 or max_sources < 1:
            raise ValueError("window, max_ahead and max_sources must be at least 1")
        self.window = window
        self.max_ahead = max_ahead
        self.max_sources = max_sources
        self._full = (1 << window) - 1
        self.sources: dict[str, SourceWindow] = {}
        self.counters = DuplicateCounters()

    def check(self, source: str, sequence: int) -> int:
        """Record ``sequence`` of ``source`` if new: ACCEPTED, or DUPLICATE/TOO_OLD/TOO_FAR."""
        win = self.sources.get(source)
        counters = self.counters
        if win is None:
            sources = self.sources
            if len(sources) >= self.max_sources:
                del sources[next(iter(sources))]  # the source first seen longest ago
                counters.evicted += 1
            sources[source] = SourceWindow(sequence)
            counters.accepted += 1
            return ACCEPTED
        ahead = sequence - win.newest
        if ahead > 0:
            if ahead > self.max_ahead:
                counters.too_far += 1
                return TOO_FAR
            win.mask = ((win.mask << ahead) | 1) & self._full
            win.newest = sequence
            counters.accepted += 1
            return ACCEPTED
        back = -ahead
        if back >= self.window:
            counters.too_old += 1
            return TOO_OLD
        bit = 1 << back
        if win.mask & bit:
            counters.duplicates += 1
            return DUPLICATE
        win.mask |= bit
        if sequence < win.first:
            win.first = sequence
        counters.accepted += 1
        counters.late += 1
        return ACCEPTED

    def seen(self, source: str, sequence: int) -> bool:
        """Whether ``sequence`` was accepted (and is still inside the window)."""
        win = self.sources.get(source)
        if win is None:
            return False
        back = win.newest - sequence
        return 0 <= back < self.window and bool(win.mask >> back & 1)

    def newest(self, source: str) -> int | None:
        win = self.sources.get(source)
        return None if win is None else win.newest

    def gaps(self, source: str) -> list[int]:
        """Missing sequences of ``source`` inside the window: the DR FE's pull list."""
        win = self.sources.get(source)
        return [] if win is None else win.missing(self.window)

    def all_gaps(self) -> dict[str, list[int]]:
        """Every source with at least one missing sequence inside its window."""
        result: dict[str, list[int]] = {}
        for source, win in self.sources.items():
            holes = win.missing(self.window)
            if holes:
                result[source] = holes
        return result


_NEW_SOURCE_BACKFILL = 64
T_SIGN: Final = "sign"
"""The named timer that sends a batch of this source's messages under one signature."""
_STRIKES: Final = 8
"""Forged or unverifiable messages a link may bring before it is dropped."""
_SENT_MAX: Final = 1024


@dataclass(slots=True, eq=False)
class SourceTrust:
    """A source whose membership credential this peer verified: its key, until when."""

    public: bytes
    token: str
    expires: float
    sent_to: set[int] = field(default_factory=set)
    """Connections that were given this token (each link gets it with its first message)."""


class Broadcaster:
    """The DB FE's procedures: publish, and accept-deliver-forward each BROADCAST_DATA.

    The hot path of the whole peer is :meth:`on_data`: one dict lookup, one duplicate-window
    check, one cache insert, one precomputed fan-out tuple and two effects; no logging, no
    payload copy. It holds the core's long-lived parts in attributes of its own so that a
    message costs no extra indirection.
    """

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        self.duplicates = core.duplicates
        self.cache = core.cache
        self.paths = core.paths
        self.counters = core.counters
        self.effects = core.effects
        self.sequence = 0
        #: SubTree (Q.4100 §6): the only source whose data this overlay carries; None on a
        #: CoreTree. Checked here, in the core, so the simulator enforces it as daemons do.
        self.source_only: str | None = None
        self.key: SigningKey | None = None  # signs what this peer originates
        self.verify = False  # data needs its source's credential and signature
        self.trusted: OrderedDict[str, SourceTrust] = OrderedDict()
        self.origin = origin.OriginVerifier()
        #: Own messages waiting for the batch signature, with their leaf digests.
        self.batch: list[tuple[BroadcastData, bytes]] = []
        self.signed_at = float("-inf")  # when the last own message went out signed

    def trust(self, membership: Membership | None) -> None:
        """Sign and verify per the overlay's membership (``None``: neither)."""
        self.trusted.clear()
        if membership is None:
            self.key = None
            self.verify = False
            return
        self.key = membership.key
        self.verify = membership.required
        self.renew(membership)

    def renew(self, membership: Membership) -> None:
        """This peer's own (renewed) credential: links get the new one with the next message."""
        own = self.core.admission.own
        if own is None:
            return
        self.trusted[self.core.peer_id] = SourceTrust(
            own.body.public_key, own.token, float(own.body.expires_at)
        )

    def publish(
        self, data: bytes, now: float, app_id: str, payload_type: str, candidate_path: bool
    ) -> int:
        """Broadcast ``data`` from this peer (CoreTree is multi-source); returns its sequence.

        On a SubTree only the source peer may: any other raises :class:`NotSourceError`
        before anything is sent.
        """
        source = self.core.peer_id
        if self.source_only is not None and source != self.source_only:
            raise NotSourceError(
                f"only the source peer {self.source_only!r} of SubTree {self.core.overlay_id!r} "
                f"may publish; this peer is {source!r}. Publish at the source (or through an "
                "R3 bridge that feeds it)."
            )
        self.sequence += 1
        ext_header = {"app-id": app_id}
        message = BroadcastData(
            source=source,
            sequence=self.sequence,
            data=data,
            ext_header=ext_header,
            payload_type=payload_type,
            candidate_path=candidate_path,
            hp2p=LIVE,
        )
        self.duplicates.check(source, self.sequence)
        self.counters.published += 1
        key = self.key
        if key is None:
            self._send_own(message, now)
            return self.sequence
        digest = origin.leaf(
            self.core.overlay_id,
            source,
            self.sequence,
            payload_type,
            msgspec.json.encode(ext_header),
            data,
        )
        config = self.core.config
        if not self.batch and now - self.signed_at >= config.sign_window:
            # publishing slowly: this message goes at once, signed alone
            self.signed_at = now
            signed = BroadcastExt(sig=key.sign(origin.CONTEXT + digest))
            self._send_own(msgspec.structs.replace(message, hp2p=signed), now)
            return self.sequence
        # Publishing faster than a signature per message pays for: one signature per batch
        # (a Merkle root), every relay verifies it once for the whole batch.
        self.batch.append((message, digest))
        if len(self.batch) >= config.sign_batch:
            self.flush(now)
        elif not self.core.timers.armed(T_SIGN):
            self.core.timers.arm(T_SIGN, now + config.sign_window)
        return self.sequence

    def flush(self, now: float) -> None:
        """Sign the waiting batch with one signature and send its messages, in order."""
        batch, self.batch = self.batch, []
        self.core.timers.cancel(T_SIGN)
        key = self.key
        if not batch or key is None:
            return
        self.signed_at = now
        sig, paths = origin.sign_batch(key, [digest for _, digest in batch])
        for index, ((message, _), path) in enumerate(zip(batch, paths, strict=True)):
            ext = BroadcastExt(sig=sig, idx=index, path=path) if path else BroadcastExt(sig=sig)
            self._send_own(msgspec.structs.replace(message, hp2p=ext), now)

    def timers(self) -> dict[str, Callable[[float], None]]:
        return {T_SIGN: self.flush}

    def _send_own(self, message: BroadcastData, now: float) -> None:
        self.cache.put(message, now)
        targets = self.paths.fanout(None, message.candidate_path)
        if targets:
            self.send_data(targets, message)

    def continue_as_source(self, last_sequence: int) -> None:
        """Publish on after ``last_sequence``: a standby taking over a source's peer-id.

        Every peer's duplicate filter already holds the failed source's sequences, so a
        takeover that numbered from 1 again would be refused as old or duplicate data; the
        standby learns the last sequence it saw from that source and goes on from there.
        """
        if last_sequence < 0:
            raise ValueError(f"last_sequence must be ≥ 0, got {last_sequence}")
        self.sequence = max(self.sequence, last_sequence)

    def on_data(self, link: Link, msg: BroadcastData, now: float, recovered: bool) -> None:
        if link.role not in PATH_ROLES:
            self.core.error(link.conn, "BROADCAST_DATA on a connection that is not a path")
            return
        if self.source_only is not None and msg.source != self.source_only:
            self.counters.foreign_dropped += 1  # neither delivered nor relayed
            return
        effects = self.effects
        if msg.ack:
            effects.append(Send((link.conn,), BroadcastDataResponse()))
        duplicates = self.duplicates
        if self.verify:
            if duplicates.seen(msg.source, msg.sequence):
                duplicates.counters.duplicates += 1  # before the signature: it costs ~100 µs
                return
            if not self._authentic(link, msg, now):
                return
            if msg.hp2p.cred is not None:
                msg = msgspec.structs.replace(
                    msg, hp2p=msgspec.structs.replace(msg.hp2p, cred=None)
                )
        win = duplicates.sources.get(msg.source)
        previous = None if win is None else win.newest
        if duplicates.check(msg.source, msg.sequence) != ACCEPTED:
            return
        if previous is not None:
            if msg.sequence > previous + 1:
                self.core.dr.live_gap(msg.source, previous + 1, msg.sequence - 1, now)
        elif 1 < msg.sequence <= _NEW_SOURCE_BACKFILL and self.core.dr.settled(now):
            self.core.dr.live_gap(msg.source, 1, msg.sequence - 1, now)
        if msg.hp2p.recovered:
            recovered = True
        self.cache.put(msg, now)
        targets = self.paths.fanout(link.conn, msg.candidate_path)
        if targets:
            if self.verify:
                self.send_data(targets, msg)
            else:
                effects.append(Send(targets, msg))
            self.counters.forwarded += 1
            self.counters.forwarded_bytes += len(msg.data) * len(targets)
        effects.append(
            Deliver(msg.source, msg.sequence, msg.data, msg.app_id, msg.payload_type, recovered)
        )
        self.counters.delivered += 1

    # === source signatures (issue #11) ===========================================================
    def send_data(self, targets: tuple[int, ...], msg: BroadcastData) -> None:
        """Send ``msg``, with its source's credential to the links that do not have it yet."""
        trust = self.trusted.get(msg.source) if self.key is not None else None
        if trust is None:
            self.effects.append(Send(targets, msg))
            return
        sent = trust.sent_to
        fresh = tuple(c for c in targets if c not in sent)
        if not fresh:
            self.effects.append(Send(targets, msg))
            return
        if len(fresh) < len(targets):
            self.effects.append(Send(tuple(c for c in targets if c in sent), msg))
        carrying = msgspec.structs.replace(
            msg, hp2p=msgspec.structs.replace(msg.hp2p, cred=trust.token)
        )
        self.effects.append(Send(fresh, carrying))
        sent.update(fresh)
        if len(sent) > _SENT_MAX:
            sent.intersection_update(self.paths.links)

    def credential_for(self, source: str, conn: int) -> str | None:
        """The source's token if ``conn`` has not been given it (for a GET_DATA answer)."""
        trust = self.trusted.get(source)
        if trust is None or conn in trust.sent_to:
            return None
        trust.sent_to.add(conn)
        return trust.token

    def _authentic(self, link: Link, msg: BroadcastData, now: float) -> bool:
        """Whether ``msg`` verifiably comes from its source; a failure is counted and charged."""
        counters = self.counters
        ext = msg.hp2p
        trust = self.trusted.get(msg.source)
        if ext.cred is not None and (trust is None or trust.token != ext.cred):
            trust = self._learn(link, msg.source, ext.cred, now)
            if trust is None:
                return False
        if trust is None:
            counters.unknown_sources += 1
            return self._strike(link, f"data of {msg.source!r}, whose credential I lack", now)
        if self.core.admission.wall(now) > trust.expires + CLOCK_SKEW:
            counters.unknown_sources += 1
            return self._strike(link, f"data of {msg.source!r}, whose credential expired", now)
        if ext.sig is None:
            counters.unsigned += 1
            return self._strike(link, f"unsigned data of {msg.source!r}", now)
        digest = origin.leaf(
            self.core.overlay_id,
            msg.source,
            msg.sequence,
            msg.payload_type,
            msgspec.json.encode(msg.ext_header),
            msg.data,
        )
        if not self.origin.check(trust.public, ext.sig, digest, ext.idx, ext.path):
            counters.bad_signatures += 1
            return self._strike(link, f"a forged message of {msg.source!r}", now)
        self.trusted.move_to_end(msg.source)
        return True

    def _learn(self, link: Link, source: str, token: str, now: float) -> SourceTrust | None:
        try:
            cred = self.core.admission.check(token, now, peer_id=source)
        except CredentialError as exc:
            self.counters.bad_credentials += 1
            self._strike(link, f"a bad credential for source {source!r}: {exc.reason}", now)
            return None
        trust = SourceTrust(cred.body.public_key, token, float(cred.body.expires_at))
        trusted = self.trusted
        trusted[source] = trust
        trusted.move_to_end(source)
        if len(trusted) > self.core.config.max_sources:
            oldest, kept = trusted.popitem(last=False)
            if oldest == self.core.peer_id:  # never forget my own: my links need it
                trusted[oldest] = kept
                trusted.move_to_end(oldest, last=False)
                trusted.popitem(last=False) if len(trusted) > 1 else None
        return trust

    def _strike(self, link: Link, reason: str, now: float) -> bool:
        """Charge ``link`` for bad data; after a few strikes it is dropped. Always False."""
        link.strikes += 1
        self.core.error(link.conn, reason)
        if link.strikes >= _STRIKES:
            self.core.drop(link, f"dropped after {link.strikes} bad messages", now)
        return False
