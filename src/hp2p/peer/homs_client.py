"""The peer's side of R1 (HCI FE with the OM/PLM FEs of Q.4100 §7.2): a HOMP client on httpx.

It speaks the HOMS-2023 dialect through the shared models of :mod:`hp2p.wire.homp`, so what it
sends is exactly what the HOMS decodes. It differs from the reference peer where that one is
wrong (etri-2023-protocol.md §9.2):

* HTTP status codes are honoured: 200/202 are success, 407 is a refused admission with a clear
  error (the reference took a 407 body for a successful join), other 4xx say what the HOMS
  objected to.
* Retries are bounded, with exponential back-off and jitter. A request that may have reached the
  HOMS is only repeated when repeating it is harmless: a join or create is retried only when the
  connection could not even be opened, because a second join of the same peer-id is refused.
* Reports are coalesced: at most one is in flight and the next one always carries the latest
  cost map, so a burst of path changes costs two requests, not one per change.
* Refresh runs every 0.8 × ``expires`` (as the reference), from a task the owner starts; with a
  credential, at least twice per credential lifetime.
* Membership credentials (issue #11, docs/security.md): with a :class:`SigningKey` the client
  sends ``peer.public-key`` on join and turns the credential of the answer into a
  :class:`hp2p.trust.membership.Membership` (:attr:`Membership.trust`); every refresh renews
  it and :attr:`HomsClient.on_renewed` hands the renewed one to the owner (the kernel). A
  reference HOMS answers no credential: the peer then runs without one, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from hp2p.peer.control import CrPolicy
from hp2p.peer.effects import Costmap
from hp2p.trust import membership as trust
from hp2p.trust.credential import decode as decode_credential
from hp2p.trust.keys import SigningKey, parse_public_key
from hp2p.wire import homp
from hp2p.wire.errors import WireError

# httpx's package __init__ imports its command-line tool (click, rich, pygments) when they are
# installed; a peer process never uses it and it costs ~5 MB of RSS per peer (measured). An
# entry of None in sys.modules makes that optional import fail the way httpx expects.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx  # noqa: E402

log = logging.getLogger("hp2p.peer.homs")

T = TypeVar("T")

_JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


class HomsError(Exception):
    """A HOMP operation failed; ``str(err)`` is one line saying what and what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PeerForgottenError(HomsError):
    """The HOMS no longer knows this peer (it expired there, or the HOMS lost its records).

    The tree may still hold the peer, but the HOMS will not list it, count it or take its
    reports until it joins again: :class:`~hp2p.peer.node.PeerNode` does so (a new ticket).
    """


class HomsUnreachableError(HomsError):
    """No answer from the HOMS after every bounded retry."""


class OverlayNotFoundError(HomsError):
    """No overlay has that id or title."""


class AdmissionRefusedError(HomsError):
    """407: a closed overlay refused this peer (wrong or missing access key)."""


@dataclass(frozen=True, slots=True)
class Membership:
    """What a successful HOMP join established: enough to start the core and to stay a member."""

    overlay_id: str
    overlay_type: str
    sub_type: str
    peer_id: str
    address: str
    password: str
    ticket: int
    expires: int
    peers: tuple[tuple[str, str], ...]
    heartbeat_interval: float
    heartbeat_timeout: float
    cr_policy: CrPolicy = field(default_factory=CrPolicy)
    access_key: str | None = None
    #: The HOMS-signed credential and what checks others' (``None``: the HOMS issued none).
    trust: trust.Membership | None = None

    @property
    def root(self) -> bool:
        """The HOMS listed only this peer: nobody attached is older, so it is the root."""
        return [p for p, _ in self.peers] == [self.peer_id]


def create_auth(admin_key: str, access_key: str | None) -> homp.CreateAuth:
    """An overlay's auth at creation: closed when it has an access key, else open."""
    return homp.CreateAuth(
        type="closed" if access_key else "open", admin_key=admin_key, access_key=access_key
    )


@dataclass
class HomsClientStats:
    """Counters shown in the peer's status: how the R1 side is doing."""

    requests: int = 0
    retries: int = 0
    reports_sent: int = 0
    reports_coalesced: int = 0
    report_failures: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    forgotten: int = 0  # refresh or report answered "not a member": the HOMS lost this peer
    last_error: str | None = None


#: The smallest heartbeat interval a reference (Go) peer acts on: it sends HEARTBEAT every
#: ``int(0.9 * interval)`` seconds, so an interval of 1 means no heartbeat at all and its
#: parent times it out (conformance/go-peer-2023 README, R2 6).
REFERENCE_MIN_INTERVAL = 2


def homp_heartbeat(interval: float, timeout: float, reference: bool = False) -> tuple[int, int]:
    """Heartbeat seconds as the HOMP fields carry them: whole, at least 1, timeout > interval.

    ``reference``: the overlay admits reference peers (``reference-compat``), which read the
    values as Go ints and heartbeat every ``int(0.9 * interval)`` s. The interval is then at
    least :data:`REFERENCE_MIN_INTERVAL`, and the timeout outlasts two of their periods plus
    one second, so one late Go heartbeat never drops a path.
    """
    whole = max(1, round(interval))
    least = whole + 1
    if reference:
        whole = max(REFERENCE_MIN_INTERVAL, whole)
        least = max(whole + 1, 2 * int(0.9 * whole) + 1, 2 * whole + 1)
    return whole, max(least, round(timeout))


def member_key(path: str | None) -> SigningKey:
    """The key a peer's membership credential binds: the file's (made 0600 if missing), else
    a fresh one per run. :class:`hp2p.trust.keys.KeyFileError` if the file cannot be used."""
    if path is None:
        return SigningKey.generate()
    return SigningKey.load_or_create(Path(path))


def trust_membership(
    key: SigningKey,
    credential: str,
    homs_keys: Mapping[str, str] | None,
    profile: str | None,
    clock_offset: float,
) -> trust.Membership:
    """What the kernel needs of a join or refresh answer; ValueError for a malformed key."""
    keys = {kid: parse_public_key(text) for kid, text in (homs_keys or {}).items()}
    return trust.Membership(
        key=key,
        credential=credential,
        homs_keys=keys,
        clock_offset=clock_offset,
        profile=profile or trust.REFERENCE_COMPAT,
    )


def _loop_offset() -> float:
    """Wall clock minus the running loop's clock: what the shells' core ``now`` is."""
    return time.time() - asyncio.get_running_loop().time()


def _cr_policy(policy: homp.CrPolicy | None) -> CrPolicy:
    if policy is None:
        return CrPolicy()
    return CrPolicy(policy.mN_Cache, policy.mD_Cache, policy.recovery_by)


def _error_field(response: httpx.Response) -> str | None:
    """The JSON path hp2p's HOMS names in a refusal (``{"error", "field"}``), if any."""
    try:
        body: Any = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    field = body.get("field") if isinstance(body, dict) else None
    return field if isinstance(field, str) else None


def _error_text(response: httpx.Response) -> str:
    """The HOMS's own words for a refusal: hp2p's ``{"error", "field"}`` or the reference's."""
    reason: str | None = response.headers.get("x-homs-error")
    if reason:
        return reason
    try:
        body: Any = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, UnicodeDecodeError):
        text = response.text.strip()
        return text[:200] if text else response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        where = body.get("field")
        return f"{body['error']} ({where})" if isinstance(where, str) else body["error"]
    return str(body)[:200]


class HomsClient:
    """One peer's HOMP session with one HOMS.

    ``transport`` lets tests run against an in-process HOMS app (``httpx.ASGITransport``).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 4,
        backoff_initial: float = 0.2,
        backoff_max: float = 3.0,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        key: SigningKey | None = None,
        security: homp.Security | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise HomsError(
                f"HOMS URL must start with http:// or https://, got {url!r} "
                "(e.g. http://127.0.0.1:8081)"
            )
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.url = url.rstrip("/")
        self.attempts = attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.stats = HomsClientStats()
        # Plain http never uses TLS; not loading the CA bundle saves ~3 MB per peer process.
        verify: ssl.SSLContext | bool = True
        if self.url.startswith("http://"):
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, transport=transport, verify=verify
        )
        self.membership: Membership | None = None
        #: The peer's key: joins send its public half and get a credential for it.
        self.key = key
        #: ``security`` of the overlays this client creates (None: the HOMS's default).
        self.security = security
        #: Wall-clock seconds minus the core's ``now`` (the shells run the core on
        #: ``loop.time()``); credentials expire in wall-clock time.
        self.clock_offset: Callable[[], float] = _loop_offset
        #: Told the renewed credential after each refresh that brought one.
        self.on_renewed: Callable[[trust.Membership], None] | None = None
        self._pending_report: Costmap | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        #: Told when a refresh or report finds the HOMS no longer knows this peer.
        self.on_forgotten: Callable[[Membership, PeerForgottenError], None] | None = None

    # --- overlays --------------------------------------------------------------------------
    async def create_overlay(
        self,
        title: str,
        owner_id: str,
        admin_key: str,
        *,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        description: str = "",
        access_key: str | None = None,
    ) -> str:
        """HybridOverlayCreation (``POST /homs``) of a CoreTree; returns the new overlay-id.

        HOMP carries the heartbeat in whole seconds: the values are rounded here, in the HOMP
        field only (:func:`homp_heartbeat`); the peer keeps its own precise values. An overlay
        created ``reference-compat`` gets values a reference peer heartbeats with (at least 2 s).
        """
        reference = self.security == "reference-compat"
        interval, timeout = homp_heartbeat(heartbeat_interval, heartbeat_timeout, reference)
        overlay = homp.CreateOverlay(
            title=title,
            type="core",
            sub_type="tree",
            owner_id=owner_id,
            description=description,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            auth=create_auth(admin_key, access_key),
        )
        return await self._create(overlay, "create the overlay")

    async def _create(self, overlay: homp.CreateOverlay, what: str) -> str:
        """``POST /homs``: the new overlay's id."""
        if overlay.security is None and self.security is not None:
            overlay = msgspec.structs.replace(overlay, security=self.security)
        request = homp.CreateRequest(overlay=overlay)
        answer = await self._call("POST", "/homs", request, homp.CreateResponse, what=what)
        overlay_id: str = answer.overlay.overlay_id
        return overlay_id

    async def find_overlay(self, key: str) -> homp.QueryOverlay:
        """The overlay whose id is ``key``, else the one whose title is ``key``.

        A title matches exactly first; a unique substring match is accepted too. Several
        overlays matching (even with the same title), or ``key`` being one overlay's id and
        another's title, is an error listing the candidates, never a guess: a guess would let
        whoever created a look-alike name capture the joins meant for another overlay.
        """
        by_id = await self._query({"overlay-id": key})
        by_title = await self._query({"title": key})
        exact = [o for o in by_title if o.title == key]
        if by_id:
            others = [o for o in exact if o.overlay_id != by_id[0].overlay_id]
            if not others:
                return by_id[0]
            listing = await self.describe_overlays([by_id[0], *others])
            raise OverlayNotFoundError(
                f"{key!r} is both an overlay-id and a title of another overlay; join by the "
                f"overlay-id of the one you mean:\n{listing}"
            )
        matches = exact or by_title
        if not matches:
            raise OverlayNotFoundError(
                f"no overlay with id or title {key!r} on {self.url} "
                "(create it with --create TITLE, or check the spelling)"
            )
        # Same title several times (a creator re-ran --create): the one overlay with members
        # is the one meant; the emptied ones are left-overs. Substring matches stay a refusal.
        live = [o for o in exact if o.status.num_peers > 0]
        if len(matches) > 1 and len(live) == 1:
            return live[0]
        if len(matches) > 1:
            listing = await self.describe_overlays(matches)
            which = "have members" if len(live) > 1 else "has members"
            raise OverlayNotFoundError(
                f"{key!r} matches {len(matches)} overlays and {len(live) or 'none'} of them "
                f"{which}; join by the overlay-id of the one you mean:\n{listing}"
            )
        return matches[0]

    async def overlays_titled(self, title: str) -> list[homp.QueryOverlay]:
        """The overlays whose title is exactly ``title`` (the HOMS matches substrings)."""
        return [o for o in await self._query({"title": title}) if o.title == title]

    async def describe_overlays(self, overlays: Sequence[homp.QueryOverlay]) -> str:
        """A table of ``overlays`` (id, created, peers, title) for a refusal message."""
        return await overlay_table(self._http, overlays)

    async def _query(self, params: Mapping[str, str]) -> list[homp.QueryOverlay]:
        items = await self._call(
            "GET", "/homs", None, list[homp.QueryItem], params=params, what="query overlays"
        )
        return [item.overlay for item in items]

    # --- membership ------------------------------------------------------------------------
    def join_password(self, password: str) -> str:
        """The password a join uses: the peer's own (a bridge group shares one, see subtree)."""
        return password

    async def join(
        self,
        overlay: homp.QueryOverlay,
        *,
        peer_id: str,
        address: str,
        password: str,
        expires: int,
        access_key: str | None = None,
    ) -> Membership:
        """HybridOverlayJoin (``POST /peer``): ticket, entry peers and the overlay's policy."""
        password = self.join_password(password)
        request = homp.JoinRequest(
            overlay=homp.JoinOverlay(
                overlay_id=overlay.overlay_id,
                type=overlay.type,
                sub_type=overlay.sub_type,
                auth=homp.OverlayAccessAuth(access_key=access_key) if access_key else None,
            ),
            peer=homp.JoinPeer(
                peer_id=peer_id,
                address=address,
                auth=homp.PeerAuth(password=password),
                expires=expires,
                public_key=self.key.public_text if self.key is not None else None,
            ),
        )
        answer = await self._call(
            "POST", "/peer", request, homp.JoinResponse, what="join the overlay", idempotent=False
        )
        ov = answer.overlay
        profile = trust.CREDENTIALS if overlay.security == trust.CREDENTIALS else None
        self.membership = Membership(
            overlay_id=ov.overlay_id,
            overlay_type=ov.type,
            sub_type=ov.sub_type,
            peer_id=peer_id,
            address=address,
            password=password,
            ticket=answer.peer.ticket_id,
            expires=answer.peer.expires or expires,
            peers=tuple((p.peer_id, p.address) for p in ov.status.peer_info_list),
            heartbeat_interval=float(ov.heartbeat_interval),
            heartbeat_timeout=float(ov.heartbeat_timeout),
            cr_policy=_cr_policy(ov.cr_policy),
            access_key=access_key,
            trust=self._trust(answer.peer.credential, ov.homs_keys, profile),
        )
        return self.membership

    def _trust(
        self, credential: str | None, homs_keys: Mapping[str, str] | None, profile: str | None
    ) -> trust.Membership | None:
        """The kernel's view of a credential in an answer; ``None`` when there is none."""
        if credential is None or self.key is None:
            return None
        try:
            return trust_membership(self.key, credential, homs_keys, profile, self.clock_offset())
        except ValueError as exc:
            raise self._fail(HomsError(f"the HOMS sent a malformed `homs-keys`: {exc}")) from None

    def _renewed(self, credential: str | None, homs_keys: Mapping[str, str] | None) -> None:
        """A refresh (or recovery join) brought a new credential: keep it, tell the owner."""
        m = self.membership
        if m is None or m.trust is None or credential is None:
            return
        renewed = self._trust(credential, homs_keys, m.trust.profile)
        if renewed is None:
            return
        self.membership = dataclasses.replace(m, trust=renewed)
        if self.on_renewed is not None:
            self.on_renewed(renewed)

    async def recovery_join(self) -> tuple[list[tuple[str, str]], bool]:
        """``POST /peer?recovery=true`` with the same ticket: older peers to HELLO.

        Returns the list without this peer, and whether this peer is now the oldest attached
        one (the HOMS listed only itself), i.e. the root.
        """
        m = self._member()
        request = homp.JoinRequest(
            overlay=homp.JoinOverlay(
                overlay_id=m.overlay_id,
                type=m.overlay_type,  # type: ignore[arg-type]
                sub_type=m.sub_type,  # type: ignore[arg-type]
                auth=self._access(),
            ),
            peer=homp.JoinPeer(
                peer_id=m.peer_id,
                address=m.address,
                auth=homp.PeerAuth(password=m.password),
                expires=m.expires,
                ticket_id=m.ticket,
                public_key=m.trust.key.public_text if m.trust is not None else None,
            ),
        )
        answer = await self._call(
            "POST",
            "/peer",
            request,
            homp.JoinResponse,
            params={"recovery": "true"},
            what="ask for a recovery peer list",
        )
        self._renewed(answer.peer.credential, answer.overlay.homs_keys)
        listed = [(p.peer_id, p.address) for p in answer.overlay.status.peer_info_list]
        root = [p for p, _ in listed] == [m.peer_id]
        return [p for p in listed if p[0] != m.peer_id], root

    async def refresh(self) -> int:
        """HybridOverlayRefresh (``PUT /peer``); returns the ``expires`` the HOMS granted."""
        m = self._member()
        request = homp.RefreshRequest(
            overlay=homp.OverlayAccess(overlay_id=m.overlay_id, auth=self._access()),
            peer=homp.RefreshPeer(
                peer_id=m.peer_id,
                address=m.address,
                auth=homp.PeerAuth(password=m.password),
                expires=m.expires,
            ),
        )
        answer = await self._call(
            "PUT", "/peer", request, homp.RefreshResponse, what="refresh", membership=True
        )
        self.stats.refreshes += 1
        self._renewed(answer.peer.credential, answer.overlay.homs_keys)
        return answer.peer.expires

    def report(self, costmap: Costmap) -> None:
        """Queue a HybridOverlayReport; a burst collapses into the latest cost map."""
        if self.membership is None:
            return
        if self._pending_report is not None:
            self.stats.reports_coalesced += 1
        self._pending_report = costmap
        if self._report_task is None or self._report_task.done():
            self._report_task = asyncio.create_task(self._send_reports(), name="hp2p-report")

    async def _send_reports(self) -> None:
        while self._pending_report is not None and self.membership is not None:
            costmap = self._pending_report
            self._pending_report = None
            m = self.membership
            request = homp.ReportRequest(
                overlay=homp.OverlayRef(overlay_id=m.overlay_id),
                peer=homp.LeavePeer(peer_id=m.peer_id, auth=homp.PeerAuth(password=m.password)),
                status=homp.ReportStatus(
                    num_primary=len(costmap.primary),
                    num_out_candidate=len(costmap.outgoing_candidate),
                    num_in_candidate=len(costmap.incoming_candidate),
                    costmap=homp.ReportCostmap(
                        primary=list(costmap.primary),
                        outgoing_candidate=list(costmap.outgoing_candidate),
                        incoming_candidate=list(costmap.incoming_candidate),
                    ),
                ),
            )
            try:
                await self._call(
                    "POST",
                    "/peer/report",
                    request,
                    homp.OverlayRefResponse,
                    what="report",
                    membership=True,
                )
                self.stats.reports_sent += 1
            except PeerForgottenError as exc:
                self.stats.report_failures += 1
                self._forgotten(exc)
                return
            except HomsError as exc:
                self.stats.report_failures += 1
                log.warning("HOMS report failed: %s", exc)

    async def flush_reports(self, limit: float) -> None:
        """Wait (at most ``limit`` s) until the queued report has been sent or has failed."""
        task = self._report_task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=limit)

    def start_refresh(self) -> None:
        """Refresh every 0.8 × expires until :meth:`leave` or :meth:`aclose`."""
        if self._refresh_task is None and self.membership is not None:
            self._refresh_task = asyncio.create_task(self._refresh_loop(), name="hp2p-refresh")

    def refresh_period(self) -> float:
        """Seconds between refreshes: 0.8 × ``expires``, and at most half the credential's
        lifetime, so that a peer whose ``expires`` is longer than the HOMS's credential TTL
        still renews its credential before it expires (docs/security.md)."""
        m = self._member()
        period = 0.8 * max(1, m.expires)
        if m.trust is not None:
            body = decode_credential(m.trust.credential).body
            period = min(period, max(1.0, 0.5 * (body.expires_at - body.issued_at)))
        return period

    async def _refresh_loop(self) -> None:
        while self.membership is not None:
            await asyncio.sleep(self.refresh_period())
            try:
                await self.refresh()
            except PeerForgottenError as exc:
                self.stats.refresh_failures += 1
                self._forgotten(exc)
                return
            except HomsError as exc:
                self.stats.refresh_failures += 1
                log.warning("HOMS refresh failed (will retry at the next period): %s", exc)

    async def leave(self) -> None:
        """HybridOverlayLeave (``DELETE /peer``); the membership ends even if it fails."""
        m = self.membership
        if m is None:
            return
        self._stop_refresh()
        self._pending_report = None
        request = homp.LeaveRequest(
            overlay=homp.OverlayAccess(overlay_id=m.overlay_id, auth=self._access()),
            peer=homp.LeavePeer(peer_id=m.peer_id, auth=homp.PeerAuth(password=m.password)),
        )
        try:
            await self._call("DELETE", "/peer", request, homp.OverlayRefResponse, what="leave")
        finally:
            self.membership = None

    async def aclose(self) -> None:
        self._stop_refresh()
        task = self._report_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()

    # --- plumbing --------------------------------------------------------------------------
    def _stop_refresh(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None

    def _forgotten(self, exc: PeerForgottenError) -> None:
        """Stop refreshing and reporting a membership the HOMS no longer has; tell the owner.

        Called once per membership: refresh and report stop here, and only a new join
        (a new :attr:`membership`) starts them again.
        """
        if self._refresh_task is not None and self._refresh_task is not asyncio.current_task():
            self._refresh_task.cancel()
        self._refresh_task = None
        self._pending_report = None
        lost, self.membership = self.membership, None
        if lost is None:
            return  # a refresh and a report both found out: the owner was told once
        log.warning("the HOMS forgot this peer: %s", exc)
        if self.on_forgotten is not None:
            self.on_forgotten(lost, exc)

    def _member(self) -> Membership:
        if self.membership is None:
            raise HomsError("not a member of an overlay: join first")
        return self.membership

    def _access(self) -> homp.OverlayAccessAuth | None:
        key = self.membership.access_key if self.membership else None
        return homp.OverlayAccessAuth(access_key=key) if key else None

    def _delay(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * 2.0 ** (attempt - 1))
        return float(base * (0.5 + 0.5 * self.rng.random()))

    async def _call(
        self,
        method: str,
        path: str,
        body: msgspec.Struct | None,
        answer_type: type[T],
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
        membership: bool = False,
    ) -> T:
        """One HOMP exchange with bounded retries; returns the decoded answer or raises.

        ``membership``: a refresh or report, which only a member may make. Any refusal of one
        (a 4xx other than 407) means the HOMS no longer counts this peer: the reference HOMS
        answers an expired peer ``400 "BAD REQUEST"`` with no field, hp2p's names
        ``$.peer.peer-id``. Either way the peer joins afresh (:class:`PeerForgottenError`).
        """
        content = homp.encode(body) if body is not None else None
        last: str = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                self.stats.retries += 1
                await asyncio.sleep(self._delay(attempt - 1))
            self.stats.requests += 1
            try:
                response = await self._http.request(
                    method, path, content=content, params=params, headers=_JSON_HEADERS
                )
            except httpx.ConnectError as exc:
                last = f"cannot connect to the HOMS at {self.url} ({exc or type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                last = f"no answer from the HOMS at {self.url} ({type(exc).__name__}: {exc})"
                if not idempotent:
                    break  # it may have been applied: repeating a join would be refused
                continue
            status = response.status_code
            if status in (200, 202):
                try:
                    return homp.decode(response.content, answer_type)
                except WireError as exc:
                    raise self._fail(
                        HomsError(f"the HOMS answer to {what} is not valid HOMP: {exc}", status)
                    ) from None
            if status == 407:
                raise self._fail(
                    AdmissionRefusedError(
                        f"the overlay refused this peer (407): {_error_text(response)}; "
                        "give the overlay's access key with --access-key",
                        status,
                    )
                )
            if status >= 500 or status == 429:
                last = f"HOMS error {status} on {what}: {_error_text(response)}"
                if not idempotent and status != 503:
                    break
                continue
            text = f"the HOMS refused to {what} ({status}): {_error_text(response)}"
            if membership or (status == 400 and _error_field(response) == "$.peer.peer-id"):
                self.stats.forgotten += 1
                raise self._fail(PeerForgottenError(text, status))
            raise self._fail(HomsError(text, status))
        raise self._fail(
            HomsUnreachableError(
                f"{last}; gave up after {self.attempts} attempt(s). "
                "Is `hp2p homs` running there? Check --homs."
            )
        )

    def _fail(self, exc: HomsError) -> HomsError:
        self.stats.last_error = str(exc)
        return exc


async def overlay_table(
    http: httpx.AsyncClient, overlays: Sequence[homp.QueryOverlay], limit: int = 10
) -> str:
    """One line per candidate overlay: id, created (when the HOMS tells), peers, owner, title.

    The owner is what tells a user's own overlay from one someone else named alike.
    """
    lines = [f"  {'OVERLAY-ID':<36}  {'CREATED':<23}  {'PEERS':>5}  {'OWNER':<16}  TITLE"]
    for o in overlays[:limit]:
        created = "unknown"  # a reference HOMS has no status endpoint
        with contextlib.suppress(Exception):
            answer = await http.get("/api/OverlayStatus", params={"overlay_id": o.overlay_id})
            stamp = msgspec.json.decode(answer.content)["overlay"]["created"]
            if isinstance(stamp, int | float):
                created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
        peers, owner = o.status.num_peers, o.owner_id[:16]
        lines.append(f"  {o.overlay_id:<36}  {created:<23}  {peers:>5}  {owner:<16}  {o.title!r}")
    if len(overlays) > limit:
        lines.append(f"  … and {len(overlays) - limit} more")
    return "\n".join(lines)
