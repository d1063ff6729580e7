"""The HOMS store on a real SQLite file (and PostgreSQL when HP2P_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from homp_bodies import create
from hp2p.homs import peerlist
from hp2p.homs.db import DatabaseUrlError, metadata, parse_database_url, scratch_database
from hp2p.homs.errors import AdmissionRefusedError, HompError
from hp2p.homs.monitor import Event, MonitorHub, SubscriberLagged, Subscription
from hp2p.homs.store import HomsStore
from hp2p.wire import homp

PG_URL = os.environ.get("HP2P_TEST_POSTGRES_URL")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def create_spec(overlay_id: str, **extra: Any) -> homp.CreateOverlay:
    body = create(overlay_id, **extra)
    return homp.decode(msgspec.json.encode(body), homp.CreateRequest).overlay


def join_req(
    overlay_id: str,
    peer_id: str,
    *,
    expires: int = 60,
    sub_type: str = "tree",
    type_: str = "core",
    access_key: str | None = None,
    ticket: int | None = None,
    password: str | None = None,
) -> homp.JoinRequest:
    return homp.JoinRequest(
        overlay=homp.JoinOverlay(
            overlay_id=overlay_id,
            type=type_,  # type: ignore[arg-type]
            sub_type=sub_type,  # type: ignore[arg-type]
            auth=homp.OverlayAccessAuth(access_key=access_key) if access_key else None,
        ),
        peer=homp.JoinPeer(
            peer_id=peer_id,
            address=f"tcp://127.0.0.1/{peer_id}",
            auth=homp.PeerAuth(password=password or f"pw-{peer_id}"),
            expires=expires,
            ticket_id=ticket,
        ),
    )


def report_req(overlay_id: str, peer_id: str, primary: list[str], **kw: list[str]) -> Any:
    return homp.ReportRequest(
        overlay=homp.OverlayRef(overlay_id=overlay_id),
        peer=homp.LeavePeer(peer_id=peer_id, auth=homp.PeerAuth(password=f"pw-{peer_id}")),
        status=homp.ReportStatus(
            num_primary=len(primary),
            num_out_candidate=len(kw.get("out", [])),
            num_in_candidate=0,
            costmap=homp.ReportCostmap(
                primary=primary, outgoing_candidate=kw.get("out", []), incoming_candidate=[]
            ),
        ),
    )


def refresh_req(peer_id: str, overlay_id: str = "ov", expires: int = 100) -> Any:
    return homp.RefreshRequest(
        overlay=homp.OverlayAccess(overlay_id=overlay_id),
        peer=homp.RefreshPeer(
            peer_id=peer_id,
            address=f"tcp://127.0.0.1/{peer_id}",
            auth=homp.PeerAuth(password=f"pw-{peer_id}"),
            expires=expires,
        ),
    )


@contextlib.asynccontextmanager
async def open_store(url: str, clock: Clock, **kw: Any) -> AsyncIterator[HomsStore]:
    store = HomsStore(parse_database_url(url), clock=clock, admin_key_cost=2**4, **kw)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ---------------------------------------------------------------------------- schema


async def test_migrations_produce_exactly_the_declared_schema(db_url: str, clock: Clock) -> None:
    async with open_store(db_url, clock) as store:
        await store.start()  # a second upgrade is a no-op
        diffs = await store.run_write(
            lambda conn: compare_metadata(MigrationContext.configure(conn), metadata)
        )
    assert diffs == []


async def test_longest_accepted_values_fit_the_columns(db_url: str, clock: Clock) -> None:
    long_id = "o" * homp.MAX_ID_LEN
    async with open_store(db_url, clock) as store:
        spec = create_spec(long_id, title="t" * homp.MAX_TITLE_LEN)
        spec = homp.CreateOverlay(
            **{
                **{f: getattr(spec, f) for f in spec.__struct_fields__},
                "description": "d" * homp.MAX_DESCRIPTION_LEN,
                "owner_id": "w" * homp.MAX_ID_LEN,
            }
        )
        await store.create_overlay(spec)
        req = join_req(long_id, "p" * homp.MAX_ID_LEN)
        req.peer.address = "a" * homp.MAX_ADDRESS_LEN
        assert (await store.join(req)).ticket == 1


def test_database_urls_are_converted_to_async_drivers() -> None:
    assert str(parse_database_url("sqlite:///hp2p.db").url) == "sqlite+aiosqlite:///hp2p.db"
    pg = parse_database_url("postgresql://u:secret@h:5432/d")
    assert pg.url.drivername == "postgresql+asyncpg"
    assert "secret" not in pg.describe()
    assert parse_database_url("postgres://u@h/d").url.drivername == "postgresql+asyncpg"
    for bad in ("mysql://x/y", "sqlite://", "not a url"):
        with pytest.raises(DatabaseUrlError):
            parse_database_url(bad)


# ---------------------------------------------------------------------------- tickets


async def test_concurrent_joins_get_unique_increasing_tickets(db_url: str, clock: Clock) -> None:
    async with open_store(db_url, clock) as a, open_store(db_url, clock) as b:
        # Two stores with their own pools stand for two HOMS instances on one database.
        await a.create_overlay(create_spec("ov"))
        results = await asyncio.gather(
            *((a if i % 2 else b).join(join_req("ov", f"p{i}")) for i in range(40))
        )
    tickets = sorted(r.ticket for r in results)
    assert tickets == list(range(1, 41))


async def test_failed_joins_burn_no_ticket_and_leave_no_peer(db_url: str, clock: Clock) -> None:
    async with open_store(db_url, clock) as store:
        await store.create_overlay(
            create_spec("closed", auth={"type": "closed", "admin_key": "a", "access_key": "ak"})
        )
        assert (await store.join(join_req("closed", "x", access_key="ak"))).ticket == 1
        with pytest.raises(HompError) as dup:
            await store.join(join_req("closed", "x", access_key="ak"))
        assert dup.value.status == 409
        with pytest.raises(AdmissionRefusedError):
            await store.join(join_req("closed", "y", access_key="wrong"))
        with pytest.raises(AdmissionRefusedError):
            await store.join(join_req("closed", "z"))
        with pytest.raises(HompError) as kind:
            await store.join(join_req("closed", "m", sub_type="mesh", access_key="ak"))
        assert kind.value.status == 400
        assert (await store.join(join_req("closed", "w", access_key="ak"))).ticket == 2
        members = [m.peer_id for m in await store.peers("closed")]
    assert members == ["x", "w"]


async def test_concurrent_failures_fail_alone_in_a_group_commit(db_url: str, clock: Clock) -> None:
    """Joins that arrive together share a transaction on SQLite (group commit); a refused
    one (duplicate peer-id, closed overlay, unknown overlay) must not take the others with it
    nor burn a ticket."""
    async with open_store(db_url, clock) as store:
        await store.create_overlay(create_spec("ov"))
        await store.join(join_req("ov", "taken"))
        requests = []
        for i in range(30):
            if i % 10 == 3:
                requests.append(join_req("ov", "taken"))  # duplicate: 409
            elif i % 10 == 7:
                requests.append(join_req("no-such-overlay", f"q{i}"))  # 400
            else:
                requests.append(join_req("ov", f"p{i}"))
        results = await asyncio.gather(*(store.join(r) for r in requests), return_exceptions=True)
        members = await store.peers("ov")
    refused = [r for r in results if isinstance(r, HompError)]
    assert sorted(e.status for e in refused) == [400] * 3 + [409] * 3
    tickets = sorted(r.ticket for r in results if not isinstance(r, BaseException))
    assert tickets == list(range(2, 26))
    assert len(members) == 25


async def test_tickets_survive_reopening_the_database(tmp_path: Path, clock: Clock) -> None:
    url = f"sqlite:///{tmp_path / 'reopen.db'}"
    async with open_store(url, clock) as store:
        await store.create_overlay(create_spec("ov"))
        for i in range(3):
            await store.join(join_req("ov", f"p{i}"))
    async with open_store(url, clock) as store:
        assert (await store.join(join_req("ov", "again"))).ticket == 4


# ---------------------------------------------------------------------------- peer lists


async def test_store_peer_lists_follow_the_pure_rules(db_url: str, clock: Clock) -> None:
    rng = random.Random(5)
    async with open_store(db_url, clock) as store:
        await store.create_overlay(create_spec("ov"))
        entries: list[peerlist.PeerEntry] = []
        for i in range(1, 41):
            result = await store.join(join_req("ov", f"p{i:02d}"))
            mine = peerlist.PeerEntry(f"p{i:02d}", f"tcp://127.0.0.1/p{i:02d}", i, 0)
            expected = peerlist.tree_entry_points([*entries, mine])
            assert [e.peer_id for e in result.peer_list] == [e.peer_id for e in expected]
            n = rng.choice([0, 1, 1, 2])
            await store.report(report_req("ov", mine.peer_id, [f"x{k}" for k in range(n)]))
            entries.append(peerlist.PeerEntry(mine.peer_id, mine.address, i, n))
        for ticket in (1, 7, 25, 40):
            rec = await store.recovery_join(join_req("ov", f"p{ticket:02d}", ticket=ticket))
            want = peerlist.tree_recovery_points(entries, ticket)
            assert [e.peer_id for e in rec.peer_list] == [e.peer_id for e in want]


async def test_recovery_join_checks_membership_password_and_ticket(
    db_url: str, clock: Clock
) -> None:
    async with open_store(db_url, clock) as store:
        await store.create_overlay(create_spec("ov"))
        await store.join(join_req("ov", "a"))
        await store.join(join_req("ov", "b", expires=30))
        clock.now += 20
        rec = await store.recovery_join(join_req("ov", "b", ticket=2, expires=30))
        assert (rec.ticket, [e.peer_id for e in rec.peer_list]) == (2, ["a"])
        # a recovery join proves the peer is alive: its deadline moved
        b = next(m for m in await store.peers("ov") if m.peer_id == "b")
        assert b.expires_at == clock.now + 30
        cases = [
            (join_req("ov", "b", ticket=1), 403),  # forged ticket
            (join_req("ov", "b", ticket=2, password="wrong"), 400),
            (join_req("ov", "stranger", ticket=2), 400),
            (join_req("nope", "b", ticket=2), 400),
        ]
        for req, status in cases:
            with pytest.raises(HompError) as err:
                await store.recovery_join(req)
            assert err.value.status == status


async def test_sub_overlays_record_parent_and_source(db_url: str, clock: Clock) -> None:
    async with open_store(db_url, clock, rng=random.Random(3), mesh_list_size=4) as store:
        await store.create_overlay(create_spec("core"))
        spec = create_spec(
            "mesh", type="sub", **{"sub-type": "mesh"}, **{"parent-overlay-id": "core"}
        )
        spec = homp.CreateOverlay(
            **{**{f: getattr(spec, f) for f in spec.__struct_fields__}, "source_peer_id": "src"}
        )
        rec = await store.create_overlay(spec)
        assert (rec.type, rec.sub_type, rec.parent_overlay_id, rec.source_peer_id) == (
            "sub",
            "mesh",
            "core",
            "src",
        )
        orphan = homp.CreateOverlay(
            **{
                **{f: getattr(spec, f) for f in spec.__struct_fields__},
                "overlay_id": "orphan",
                "parent_overlay_id": "missing",
            }
        )
        with pytest.raises(HompError) as err:
            await store.create_overlay(orphan)
        assert (err.value.status, err.value.field) == (400, "$.overlay.parent-overlay-id")
        lists = []
        for i in range(8):
            r = await store.join(join_req("mesh", f"m{i}", type_="sub", sub_type="mesh"))
            lists.append([e.peer_id for e in r.peer_list])
        assert lists[0] == ["m0"]
        assert all(
            f"m{i}" not in lst and len(lst) == min(i, 4) for i, lst in enumerate(lists[1:], 1)
        )


# ---------------------------------------------------------------------------- liveness


async def collect(sub: Subscription, into: list[Event]) -> None:
    async for event in sub:
        into.append(event)


async def test_expiry_removes_silent_peers_and_keeps_empty_overlays_by_default(
    db_url: str, clock: Clock
) -> None:
    async with open_store(db_url, clock) as store:
        await store.create_overlay(create_spec("keep"))
        await store.create_overlay(create_spec("drop", **{"delete-when-empty": True}))
        for ov in ("keep", "drop"):
            await store.join(join_req(ov, "quiet", expires=10))
            await store.join(join_req(ov, "talker", expires=10))
        clock.now += 8
        await store.report(report_req("keep", "talker", []))  # any report refreshes
        await store.refresh(
            homp.RefreshRequest(
                overlay=homp.OverlayAccess(overlay_id="drop"),
                peer=homp.RefreshPeer(
                    peer_id="talker", address="tcp://x", auth=homp.PeerAuth(password="pw-talker")
                ),
            )
        )
        clock.now += 5
        swept = await store.expire()
        assert sorted(swept.peers) == [("drop", "quiet"), ("keep", "quiet")]
        assert swept.overlays == []
        clock.now += 20
        swept = await store.expire()
        assert sorted(swept.peers) == [("drop", "talker"), ("keep", "talker")]
        assert swept.overlays == ["drop"]  # created with delete-when-empty
        remaining = [o.overlay_id for o in await store.query_overlays()]
    assert remaining == ["keep"]


async def test_reported_lost_neighbour_is_removed_only_if_it_stopped_refreshing(
    db_url: str, clock: Clock
) -> None:
    async with open_store(db_url, clock) as store:
        await store.create_overlay(create_spec("ov"))
        for pid in ("a", "b", "c"):
            await store.join(join_req("ov", pid, expires=100))
        await store.report(report_req("ov", "a", ["b", "c"]))
        clock.now += 50  # b and c are still within their refresh period (0.8 × 100 s)
        assert await store.report(report_req("ov", "a", ["c"])) == []
        await store.report(report_req("ov", "a", ["b", "c"]))
        await store.report(report_req("ov", "c", ["a"]))  # c keeps talking
        clock.now += 40  # 90 s: b missed its refresh, c reported 40 s ago
        assert await store.report(report_req("ov", "a", [])) == ["b"]
        assert [m.peer_id for m in await store.peers("ov")] == ["a", "c"]


async def test_a_neighbour_reported_gone_and_silent_is_no_longer_offered_until_it_talks(
    db_url: str, clock: Clock
) -> None:
    """Suspects (heartbeat timeout 15 s here) stay members but leave the peer lists.

    One reporter's word is only an accusation: a second distinct reporter makes a suspect
    (issue #11: a single liar must not eclipse anyone).
    """
    async with open_store(db_url, clock) as store:
        await store.create_overlay(create_spec("ov"))
        for pid in ("a", "b", "c", "d", "e"):
            await store.join(join_req("ov", pid, expires=100))
        for pid in ("b", "c", "e"):
            await store.report(report_req("ov", pid, ["a"]))
        clock.now += 1
        await store.report(report_req("ov", "d", ["a", "c", "e"]))
        await store.report(report_req("ov", "a", ["b", "c", "e"]))
        clock.now += 19  # past the heartbeat timeout, well inside the refresh period
        await store.refresh(refresh_req("e"))  # e refreshed just before it died
        await store.report(report_req("ov", "b", ["d"]))  # b moved and says so: alive
        assert await store.report(report_req("ov", "a", [])) == []  # nobody evicted
        members = {m.peer_id: m for m in await store.peers("ov")}
        assert all(m.suspect_since is None for m in members.values())  # one accuser only
        assert await store.report(report_req("ov", "d", ["a"])) == []  # the second accuser

        def named(result: Any) -> list[str]:
            return [e.peer_id for e in result.peer_list]

        members = {m.peer_id: m for m in await store.peers("ov")}
        assert set(members) == {"a", "b", "c", "d", "e"}
        assert members["c"].suspect_since == clock.now  # silent for 20 s
        assert members["e"].suspect_since == clock.now  # alive 0 s ago, but no report of
        # its own about a path that changed: a dead end cannot report
        assert members["b"].suspect_since is None
        assert "c" not in named(await store.recovery_join(join_req("ov", "d", ticket=4)))
        assert "c" not in named(await store.join(join_req("ov", "f")))
        await store.refresh(refresh_req("c"))  # c was only slow: its refresh clears the mark
        assert "c" in named(await store.recovery_join(join_req("ov", "d", ticket=4)))
        assert {m.peer_id: m.suspect_since for m in await store.peers("ov")}["c"] is None


async def test_events_follow_commits(db_url: str, clock: Clock) -> None:
    async with open_store(db_url, clock) as store:
        events: list[Event] = []
        sub = store.hub.subscribe()
        task = asyncio.create_task(collect(sub, events))
        await store.create_overlay(create_spec("ov"))
        await store.join(join_req("ov", "a"))
        with pytest.raises(HompError):
            await store.join(join_req("ov", "a"))  # rolled back: no add_peer
        await store.report(report_req("ov", "a", ["z"]))
        await store.leave(
            homp.LeaveRequest(
                overlay=homp.OverlayAccess(overlay_id="ov"),
                peer=homp.LeavePeer(peer_id="a", auth=homp.PeerAuth(password="pw-a")),
            )
        )
        sub.close()  # the collector drains what was published, then ends
        await asyncio.wait_for(task, timeout=10)
    actions = [(e["type"], e.get("action")) for e in events]
    assert (
        actions
        == [
            ("overlay", "create"),
            ("log", None),
            ("peer", "add_peer"),
            ("log", None),
            ("peer", "update_connection"),
            ("log", None),
            ("log", None),
            ("peer", "delete_peer"),
        ][: len(actions)]
    )
    assert len(actions) == 8


async def test_slow_monitor_subscriber_is_told_it_lagged() -> None:
    hub = MonitorHub(queue_bound=2)
    sub = hub.subscribe()
    for i in range(4):
        hub.publish({"n": i})
    assert await anext(sub) == {"n": 0}
    assert await anext(sub) == {"n": 1}
    # events 2 and 3 did not fit: the subscriber is told, not silently skipped
    with pytest.raises(SubscriberLagged):
        await anext(sub)
    assert hub.subscriber_count == 0


async def test_closing_wakes_a_waiting_consumer() -> None:
    hub = MonitorHub()
    sub = hub.subscribe()
    received: list[Event] = []
    consumer = asyncio.create_task(collect(sub, received))
    hub.publish({"n": 1})
    for _ in range(100):  # bounded: yield until the consumer has taken the event and waits
        if received:
            break
        await asyncio.sleep(0)
    sub.close()
    await asyncio.wait_for(consumer, timeout=5)
    assert received == [{"n": 1}]


async def test_a_subscription_misses_nothing_published_before_iteration() -> None:
    hub = MonitorHub()
    async with hub.subscribe() as sub:
        hub.publish({"n": 1})
        assert hub.subscriber_count == 1
        assert await anext(sub) == {"n": 1}
    assert hub.subscriber_count == 0


# ---------------------------------------------------------------------------- secrets


def _database_bytes(directory: Path) -> bytes:
    return b"".join(f.read_bytes() for f in sorted(directory.glob("secrets.db*")))


async def test_secrets_are_stored_only_as_salted_hashes(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "secrets.db"
    async with open_store(f"sqlite:///{db}", clock) as store:
        await store.create_overlay(
            create_spec(
                "ov",
                auth={"type": "closed", "admin_key": "ADMIN-SECRET", "access_key": "ACCESS-SECRET"},
            )
        )
        await store.join(join_req("ov", "a", access_key="ACCESS-SECRET", password="PEER-SECRET"))
        await store.join(join_req("ov", "b", access_key="ACCESS-SECRET", password="PEER-SECRET"))
    # the WAL is checkpointed into the file when the last connection closes
    raw = _database_bytes(tmp_path)
    for secret in (b"ADMIN-SECRET", b"ACCESS-SECRET", b"PEER-SECRET"):
        assert secret not in raw
    with sqlite3.connect(db) as conn:
        a, b = [r[0] for r in conn.execute("SELECT password_hash FROM peer ORDER BY ticket")]
    assert a != b  # salted: equal passwords give different hashes
    assert a.startswith("sha256$")


async def test_every_postgresql_join_connection_commits_without_waiting_for_the_flush() -> None:
    """The join pool's session setting must outlive the pool's reset between acquires (a
    ``SET`` after connecting did not: every join after the first waited ~3 ms for a disk
    sync while holding its overlay's ticket row)."""
    if not PG_URL:
        pytest.skip("set HP2P_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres")
    from hp2p.homs.transactions import PostgresRunner

    async with scratch_database(PG_URL, "hp2p_test") as url:
        runner = PostgresRunner(parse_database_url(url), pool_size=1)
        try:

            async def setting(conn: Any) -> str:
                return str(await conn.fetchval("SHOW synchronous_commit"))

            seen = [await runner.write_raw(setting) for _ in range(3)]  # one connection, reused
        finally:
            await runner.close()
    assert seen == ["off", "off", "off"]


async def test_keyless_reference_joiners_are_never_offered_peers_known_dead(
    db_url: str, clock: Clock
) -> None:
    """A Go peer dials the first entry and waits for ever on a dead one (go-peer-2023 README,
    "Hang"; HOMP 12: the reference lists the dead until its sweep). Peers the HOMS has
    evidence against (suspects, or overdue for their refresh) are left out of keyless
    joiners' join and recovery lists; an orphan left with nobody gets only itself, and asks
    again later (Go's 15 s loop) instead of hanging."""

    def named(result: Any) -> list[str]:
        return [e.peer_id for e in result.peer_list]

    async with open_store(db_url, clock) as store:
        await store.create_overlay(create_spec("ov"))
        for pid in ("a", "b", "c"):
            await store.join(join_req("ov", pid, expires=30))
            await store.report(report_req("ov", pid, ["x"]))
        assert named(await store.join(join_req("ov", "d", expires=30))) == ["a", "b", "c"]
        await store.report(report_req("ov", "d", ["x"]))
        clock.now += 20
        for pid in ("b", "d"):  # a and c go silent; b and d refresh
            await store.refresh(refresh_req(pid, expires=30))
        clock.now += 7.5  # 27.5 s: a and c are 0.9 x expires past their last sign of life
        assert named(await store.join(join_req("ov", "e", expires=30))) == ["b", "d"]
        rec = await store.recovery_join(join_req("ov", "d", ticket=4, expires=30))
        assert named(rec) == ["b"]  # older, alive; the overdue root a is not offered
        rec = await store.recovery_join(join_req("ov", "b", ticket=2, expires=30))
        assert named(rec) == ["b"]  # only overdue older peers: itself, never the dead
        # suspects too: b and d both report e gone while e is silent
        await store.report(report_req("ov", "e", ["b"]))
        clock.now += 16  # past the heartbeat timeout (15 s)
        for pid in ("b", "d"):
            await store.report(report_req("ov", pid, ["e"]))
            await store.report(report_req("ov", pid, []))
        members = {m.peer_id: m for m in await store.peers("ov")}
        assert members["e"].suspect_since is not None
        assert "e" not in named(await store.join(join_req("ov", "f", expires=30)))
