"""Membership credentials issued by the HOMS (issue #11): join, refresh, leave, expiry,
rotation, security profiles and peer-id takeover, on SQLite and (when
HP2P_TEST_POSTGRES_URL is set) PostgreSQL. The HOMS runs in-process with a fake clock, so
expiry is reached by moving the clock, never by sleeping."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from homp_bodies import create, join
from hp2p.homs.app import create_app
from hp2p.homs.credentials import KeyRing
from hp2p.homs.launch import HomsProcess, running_homs
from hp2p.homs.liveness import sweep_once
from hp2p.homs.settings import HomsSettings
from hp2p.peer.homs_client import HomsClient
from hp2p.trust.credential import CLOCK_SKEW, CredentialError, CredentialVerifier, decode
from hp2p.trust.keys import SigningKey, parse_public_key
from hp2p.wire import homp
from hp2p.wire.errors import WireError
from hp2p.wire.signalling import PeerHello, PeerProve, decode_client_message
from peer_procs import PeerProc, Procs

PG_URL = os.environ.get("HP2P_TEST_POSTGRES_URL")
TTL = 120


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Homs:
    """An in-process HOMS app, its clock and an HTTP client of it."""

    def __init__(self, app: FastAPI, clock: Clock, client: httpx.AsyncClient) -> None:
        self.app = app
        self.clock = clock
        self.http = client

    async def keys(self) -> dict[str, bytes]:
        answer = (await self.http.get("/homs/keys")).json()
        return {kid: parse_public_key(k["public-key"]) for kid, k in answer["keys"].items()}

    async def verifier(self) -> CredentialVerifier:
        return CredentialVerifier(await self.keys())


@contextlib.asynccontextmanager
async def running(url: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Homs]:
    clock = Clock()
    settings.setdefault("key_dir", tmp_path / "keys")
    app = create_app(
        HomsSettings(database=url, admin_key_cost=2**4, credential_ttl=TTL, **settings),
        clock=clock,
        run_expiry_sweep=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://homs") as client:
            yield Homs(app, clock, client)


@pytest.fixture
async def homs(db_url: str, tmp_path: Path) -> AsyncIterator[Homs]:
    async with running(db_url, tmp_path) as h:
        yield h


def secure(overlay_id: str, **fields: Any) -> dict[str, Any]:
    """An overlay created as an hp2p client creates it: ``security: credentials``."""
    return create(overlay_id, security="credentials", **fields)


def keyed_join(overlay_id: str, peer_id: str, key: SigningKey, **peer: Any) -> dict[str, Any]:
    return join(overlay_id, peer_id, **{"public-key": key.public_text, **peer})


def refresh_body(overlay_id: str, peer_id: str, address: str = "tcp://127.0.0.1:9") -> Any:
    return {
        "overlay": {"overlay-id": overlay_id},
        "peer": {"peer-id": peer_id, "address": address, "auth": {"password": "pw"}},
    }


def leave_body(overlay_id: str, peer_id: str) -> Any:
    return {
        "overlay": {"overlay-id": overlay_id},
        "peer": {"peer-id": peer_id, "auth": {"password": "pw"}},
    }


# ---------------------------------------------------------------------------- issue and renew


async def test_join_issues_a_credential_with_the_ticket_and_address_the_homs_stored(
    homs: Homs,
) -> None:
    assert (await homs.http.post("/homs", json=secure("ov"))).status_code == 200
    alice, bob = SigningKey.generate(), SigningKey.generate()
    await homs.http.post("/peer", json=keyed_join("ov", "alice", alice))
    # bob claims ticket 99 on a normal join: the HOMS issues its own (2) and signs that one
    answer = await homs.http.post(
        "/peer",
        json=keyed_join("ov", "bob", bob, address="tcp://10.0.0.2:7000", **{"ticket-id": 99}),
    )
    assert answer.status_code == 202
    body = homp.decode(answer.content, homp.JoinResponse)
    assert body.peer.ticket_id == 2
    assert body.peer.credential is not None
    assert body.overlay.homs_keys
    cred = (await homs.verifier()).check(body.peer.credential, homs.clock.now, "ov", peer_id="bob")
    b = cred.body
    assert (b.ticket_id, b.address, b.public_key, b.role) == (
        2,
        "tcp://10.0.0.2:7000",
        bob.public,
        "peer",
    )
    assert b.expires_at - b.issued_at == TTL
    # the keys in the join answer are those GET /homs/keys publishes
    assert {k: parse_public_key(v) for k, v in body.overlay.homs_keys.items()} == await homs.keys()
    members = await homs.app.state.store.peers("ov")
    assert [m.ticket for m in members] == [1, 2]


async def test_refresh_renews_the_credential_and_leave_ends_it(homs: Homs) -> None:
    await homs.http.post("/homs", json=secure("ov"))
    key = SigningKey.generate()
    joined = homp.decode(
        (await homs.http.post("/peer", json=keyed_join("ov", "p", key))).content,
        homp.JoinResponse,
    )
    first = decode(joined.peer.credential or "")
    homs.clock.now += 50
    answer = await homs.http.put("/peer", json=refresh_body("ov", "p", "tcp://10.0.0.9:1"))
    assert answer.status_code == 200
    renewed = homp.decode(answer.content, homp.RefreshResponse)
    assert renewed.peer.credential is not None
    assert renewed.overlay.homs_keys
    cred = (await homs.verifier()).check(renewed.peer.credential, homs.clock.now, "ov")
    assert cred.body.expires_at == first.body.expires_at + 50
    assert cred.body.ticket_id == first.body.ticket_id == joined.peer.ticket_id
    assert cred.body.address == "tcp://10.0.0.9:1"  # the address this refresh stored
    assert cred.body.public_key == key.public  # the key given at join, not a new one

    assert (
        await homs.http.request("DELETE", "/peer", json=leave_body("ov", "p"))
    ).status_code == 200
    after = await homs.http.put("/peer", json=refresh_body("ov", "p"))
    assert after.status_code == 400
    assert "credential" not in after.text


async def test_a_credential_expires_ttl_after_its_issue_and_an_expired_member_gets_none(
    homs: Homs,
) -> None:
    await homs.http.post("/homs", json=secure("ov"))
    answer = await homs.http.post(
        "/peer", json=keyed_join("ov", "p", SigningKey.generate(), expires=60)
    )
    token = homp.decode(answer.content, homp.JoinResponse).peer.credential or ""
    verifier = await homs.verifier()
    verifier.check(token, homs.clock.now + TTL + CLOCK_SKEW, "ov")  # still (skew forgiven)
    with pytest.raises(CredentialError, match="expired"):
        verifier.check(token, homs.clock.now + TTL + CLOCK_SKEW + 1, "ov")
    homs.clock.now += 61
    await sweep_once(homs.app.state.store)
    refused = await homs.http.put("/peer", json=refresh_body("ov", "p"))
    assert refused.status_code == 400
    assert "credential" not in refused.text


async def test_the_source_of_a_sub_overlay_gets_the_source_role(homs: Homs) -> None:
    await homs.http.post("/homs", json=secure("core"))
    sub = secure(
        "sub",
        type="sub",
        **{"sub-type": "tree", "parent-overlay-id": "core", "source-peer-id": "src"},
    )
    assert (await homs.http.post("/homs", json=sub)).status_code == 200
    roles = {}
    for peer_id in ("src", "other"):
        answer = await homs.http.post(
            "/peer", json=keyed_join("sub", peer_id, SigningKey.generate(), type="sub")
        )
        token = homp.decode(answer.content, homp.JoinResponse).peer.credential or ""
        roles[peer_id] = decode(token).body.role
    assert roles == {"src": "source", "other": "peer"}


# ---------------------------------------------------------------------------- security profiles


async def test_a_keyless_join_to_a_credentials_overlay_is_refused_clearly(homs: Homs) -> None:
    await homs.http.post("/homs", json=secure("ov"))
    answer = await homs.http.post("/peer", json=join("ov", "ref-peer"))
    assert answer.status_code == 403
    error = answer.json()
    assert error["field"] == "$.peer.public-key"
    assert "requires hp2p membership credentials" in error["error"]
    assert "reference-compat" in error["error"]
    assert await homs.app.state.store.peers("ov") == []  # nothing left behind
    assert (await homs.app.state.store.get_overlay("ov")).last_ticket == 0  # no ticket burnt


async def test_a_reference_compat_overlay_admits_keyless_peers_without_credentials(
    homs: Homs,
) -> None:
    await homs.http.post("/homs", json=create("ov", security="reference-compat"))
    answer = await homs.http.post("/peer", json=join("ov", "ref-peer"))
    assert answer.status_code == 202
    body = answer.json()
    assert "credential" not in body["peer"]
    assert "homs-keys" not in body["overlay"]
    refreshed = await homs.http.put("/peer", json=refresh_body("ov", "ref-peer"))
    assert refreshed.status_code == 200
    assert "credential" not in refreshed.json()["peer"]
    # a keyed peer there still gets a credential (used when offered)
    keyed = await homs.http.post("/peer", json=keyed_join("ov", "hp2p", SigningKey.generate()))
    assert "credential" in keyed.json()["peer"]
    # a reference-compat overlay answers the query as the reference does (no `security`)
    listed = (await homs.http.get("/homs", params={"overlay-id": "ov"})).json()
    assert "security" not in listed[0]["overlay"]


async def test_default_security_applies_to_creates_that_do_not_say(
    db_url: str, tmp_path: Path
) -> None:
    unsaid = create("ov", security=None)
    async with running(db_url, tmp_path / "a") as homs:
        await homs.http.post("/homs", json=unsaid)
        listed = (await homs.http.get("/homs", params={"overlay-id": "ov"})).json()
        assert listed[0]["overlay"]["security"] == "credentials"
        assert (await homs.http.post("/peer", json=join("ov", "p"))).status_code == 403
    async with running(db_url, tmp_path / "b", default_security="reference-compat") as homs:
        await homs.http.post("/homs", json=create("ov2", security=None))
        assert (await homs.http.post("/peer", json=join("ov2", "p"))).status_code == 202


# ---------------------------------------------------------------------------- takeover


async def test_a_live_peer_id_is_not_taken_over_by_another_key(homs: Homs) -> None:
    await homs.http.post("/homs", json=secure("ov"))
    owner, thief = SigningKey.generate(), SigningKey.generate()
    assert (
        await homs.http.post("/peer", json=keyed_join("ov", "p", owner, expires=60))
    ).status_code == 202
    taken = await homs.http.post("/peer", json=keyed_join("ov", "p", thief))
    assert taken.status_code == 409
    assert taken.json()["field"] == "$.peer.peer-id"
    # a recovery join naming another key is refused too
    recovery = keyed_join("ov", "p", thief, **{"ticket-id": 1})
    refused = await homs.http.post("/peer", params={"recovery": "true"}, json=recovery)
    assert refused.status_code == 409
    assert refused.json()["field"] == "$.peer.public-key"
    # the recovery join with the member's own key renews its credential
    ok = await homs.http.post(
        "/peer", params={"recovery": "true"}, json=keyed_join("ov", "p", owner, **{"ticket-id": 1})
    )
    token = homp.decode(ok.content, homp.JoinResponse).peer.credential or ""
    assert decode(token).body.public_key == owner.public
    # once the membership expired (even before the sweep), the peer-id may join again
    homs.clock.now += 61
    again = await homs.http.post("/peer", json=keyed_join("ov", "p", thief))
    assert again.status_code == 202
    token = homp.decode(again.content, homp.JoinResponse).peer.credential or ""
    assert decode(token).body.public_key == thief.public


async def test_after_leave_the_peer_id_may_join_with_a_new_key(homs: Homs) -> None:
    await homs.http.post("/homs", json=secure("ov"))
    await homs.http.post("/peer", json=keyed_join("ov", "p", SigningKey.generate()))
    await homs.http.request("DELETE", "/peer", json=leave_body("ov", "p"))
    new = SigningKey.generate()
    answer = await homs.http.post("/peer", json=keyed_join("ov", "p", new))
    assert answer.status_code == 202
    assert decode(answer.json()["peer"]["credential"]).body.public_key == new.public


# ---------------------------------------------------------------------------- keys


async def test_rotation_keeps_old_credentials_valid_until_they_expire(
    db_url: str, tmp_path: Path
) -> None:
    async with running(db_url, tmp_path) as homs:
        await homs.http.post("/homs", json=secure("ov"))
        old = homp.decode(
            (
                await homs.http.post("/peer", json=keyed_join("ov", "a", SigningKey.generate()))
            ).content,
            homp.JoinResponse,
        )
        ring: KeyRing = homs.app.state.store.keyring
        old_id = ring.current_id
        new_id = ring.rotate()
        assert new_id != old_id
        listed = (await homs.http.get("/homs/keys")).json()
        assert listed["current"] == new_id
        assert set(listed["keys"]) == {old_id, new_id}
        assert listed["keys"][new_id]["not-after"] is None
        assert listed["keys"][old_id]["not-after"] == homs.clock.now + TTL + CLOCK_SKEW
        new = homp.decode(
            (
                await homs.http.post("/peer", json=keyed_join("ov", "b", SigningKey.generate()))
            ).content,
            homp.JoinResponse,
        )
        assert set(new.overlay.homs_keys or {}) == {old_id, new_id}
        assert decode(new.peer.credential or "").body.homs_key == new_id
        verifier = await homs.verifier()
        assert (
            verifier.check(old.peer.credential or "", homs.clock.now, "ov").body.homs_key == old_id
        )
        # past not-after the old key is no longer published, and nothing it signed is valid
        homs.clock.now += TTL + CLOCK_SKEW + 1
        assert set((await homs.http.get("/homs/keys")).json()["keys"]) == {new_id}
    # the key directory keeps the ring across a restart; key files are 0600
    async with running(db_url, tmp_path) as again:
        assert again.app.state.store.keyring.current_id == new_id
    for path in (tmp_path / "keys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_rotate_key_from_the_command_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = KeyRing(keys).current_id
    done = subprocess.run(
        [sys.executable, "-m", "hp2p", "homs", "--key-dir", str(keys), "--rotate-key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    ring = KeyRing(keys)
    assert ring.current_id != first
    assert ring.current_id in done.stdout
    assert {k.key_id for k in ring.published()} == {first, ring.current_id}


# ---------------------------------------------------------------------------- decoders


@given(st.one_of(st.text(max_size=90), st.binary(max_size=40).map(lambda b: "ed25519:" + b.hex())))
def test_join_public_key_decodes_only_as_a_well_formed_key(text: str) -> None:
    body = msgspec.json.encode(join("ov", "p", **{"public-key": text}))
    well_formed = re.fullmatch(r"ed25519:[0-9a-f]{64}", text) is not None
    if not well_formed:
        with pytest.raises(WireError) as refused:
            homp.decode_join_request(body)
        assert refused.value.field == "$.peer.public-key"
        return
    req = homp.decode_join_request(body)
    assert req.peer.public_key == text
    assert len(parse_public_key(text)) == 32


@given(st.dictionaries(st.text(max_size=70), st.text(max_size=80), max_size=20))
def test_homs_keys_in_a_join_answer_are_bounded(keys: dict[str, str]) -> None:
    answer = {
        "overlay": {
            "overlay-id": "ov",
            "type": "core",
            "sub-type": "tree",
            "status": {"peer_info_list": []},
            "heartbeat-interval": 1,
            "heartbeat-timeout": 2,
            "homs-keys": keys,
        },
        "peer": {"peer-id": "p", "ticket-id": 1, "expires": 1},
    }
    try:
        decoded = homp.decode(msgspec.json.encode(answer), homp.JoinResponse)
    except WireError:
        assert (
            len(keys) > 16
            or any(len(k) > 64 for k in keys)
            or any(len(v) > homp.MAX_KEY_LEN for v in keys.values())
            or any("\x00" in k or "\x00" in v for k, v in keys.items())  # NUL is refused
        )
        return
    assert decoded.overlay.homs_keys == keys


# ---------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_two_peer_processes_deliver_in_a_credentials_overlay(tmp_path: Path) -> None:
    """A real ``hp2p homs`` and two ``hp2p peer`` processes: the overlay requires credentials,
    both peers hold one for their own key, their link is admitted, a message is delivered."""
    with running_homs(tmp_path) as homs:
        _two_peers(tmp_path, homs)


def _two_peers(tmp_path: Path, homs: HomsProcess) -> None:
    key_file = tmp_path / "child.key"
    procs = Procs()
    try:
        root = PeerProc(tmp_path, homs.url, "root", "--create", "secured")
        procs.append(root)
        root.wait_joined()
        child = PeerProc(
            tmp_path, homs.url, "child", "--join", root.overlay_id, "--key", str(key_file)
        )
        procs.append(child)
        child.wait_joined()
        listed = httpx.get(f"{homs.url}/homs", params={"overlay-id": root.overlay_id}, timeout=10)
        assert listed.json()[0]["overlay"]["security"] == "credentials"
        child.command("publish over an admitted link")
        published = child.next_event({"published"}, 30)
        got = root.next_event({"deliver"}, 30)
        assert (got["source"], got["sequence"]) == ("child", published["sequence"])

        child.command("status")
        status = child.next_event({"status"}, 30)
        admission = status["admission"]
        assert admission["required"] is True
        assert admission["public_key"] == SigningKey.load(key_file).public_text
        assert admission["credential_expires_at"] > time.time()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        root.command("status")
        assert root.next_event({"status"}, 30)["admission"]["admitted"] >= 1
        # a reference peer (no key) cannot join this overlay
        keyless = httpx.post(f"{homs.url}/peer", json=join(root.overlay_id, "ref"), timeout=10)
        assert keyless.status_code == 403
    finally:
        codes = procs.stop_all()
        assert all(code == 0 for code in codes.values()), codes


async def test_a_peer_refreshes_before_its_credential_expires(db_url: str, tmp_path: Path) -> None:
    """A peer whose ``expires`` (600 s) outlives the credential TTL still renews in time, and
    the client hands each renewed credential to its owner (the kernel)."""
    async with running(db_url, tmp_path) as homs:
        client = HomsClient(
            "http://homs",
            transport=httpx.ASGITransport(app=homs.app),
            attempts=1,
            key=SigningKey.generate(),
            security="credentials",
        )
        renewed: list[str] = []
        client.on_renewed = lambda m: renewed.append(m.credential)
        try:
            await client.create_overlay(
                "t", "o", "admin", heartbeat_interval=1, heartbeat_timeout=3
            )
            overlay = await client.find_overlay("t")
            m = await client.join(
                overlay, peer_id="p", address="tcp://127.0.0.1:9", password="p" * 8, expires=600
            )
            assert m.trust is not None
            assert m.trust.required  # the overlay says `credentials`: links need AUTH
            assert client.refresh_period() == TTL / 2  # not 0.8 × 600
            homs.clock.now += TTL / 2
            await client.refresh()
            assert len(renewed) == 1
            assert client.membership is not None
            assert client.membership.trust is not None
            assert client.membership.trust.credential == renewed[0] != m.trust.credential
        finally:
            await client.aclose()


@given(st.text(max_size=140), st.text(min_size=1, max_size=20))
def test_a_prove_message_decodes_only_with_a_128_hex_digit_proof(proof: str, peer_id: str) -> None:
    raw = msgspec.json.encode({"action": "prove", "peer-id": peer_id, "proof": proof})
    if re.fullmatch(r"[0-9a-f]{128}", proof) is None:
        with pytest.raises(WireError):
            decode_client_message(raw)
        return
    msg = decode_client_message(raw)
    assert isinstance(msg, PeerProve)
    assert (msg.peer_id, msg.proof) == (peer_id, proof)


@given(st.one_of(st.none(), st.text(max_size=5000)))
def test_a_hello_credential_is_a_bounded_string(credential: str | None) -> None:
    hello: dict[str, Any] = {"action": "hello", "peer-id": "p", "overlay-id": "ov"}
    if credential is not None:
        hello["credential"] = credential
    raw = msgspec.json.encode(hello)
    if credential is not None and not 0 < len(credential) <= 4096:
        with pytest.raises(WireError):
            decode_client_message(raw)
        return
    msg = decode_client_message(raw)
    assert isinstance(msg, PeerHello)
    assert msg.credential == credential
