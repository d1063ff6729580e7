"""Attacks on the HOMS signalling channel of a ``credentials`` overlay (issue #11), against a
real ``hp2p homs`` process and real WebSocket clients.

On such an overlay a socket registers a peer-id only with that member's credential and a
signature of a fresh HOMS nonce by the credential's key. Refused here: a wrong proof, a proof
for another nonce, another overlay's credential, a password hello, a second hello for a live
peer-id, and relays to peers outside the sender's overlay. No step waits by sleeping: each
refusal is an error message on the attacker's own socket, and absence of a delivery is shown
by a sentinel relay that must be the very next message to arrive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from homp_bodies import create, join
from hp2p.homs.launch import HomsProcess
from hp2p.trust import hello as hello_proof
from hp2p.trust.credential import decode
from hp2p.trust.keys import SigningKey

DEADLINE_S = 10.0


class Sock:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, payload: Any) -> None:
        await self.conn.send(json.dumps(payload))

    async def next(self) -> Any:
        return json.loads(await asyncio.wait_for(self.conn.recv(), DEADLINE_S))


@asynccontextmanager
async def sock(url: str) -> AsyncIterator[Sock]:
    async with connect(url, open_timeout=DEADLINE_S) as conn:
        yield Sock(conn)


class Member:
    """A member of an overlay: its key and the credential the HOMS issued at join."""

    def __init__(self, overlay_id: str, peer_id: str, key: SigningKey, credential: str) -> None:
        self.overlay_id = overlay_id
        self.peer_id = peer_id
        self.key = key
        self.credential = credential

    def hello(self, credential: str | None = None, overlay_id: str | None = None) -> Any:
        return {
            "action": "hello",
            "peer-id": self.peer_id,
            "overlay-id": overlay_id or self.overlay_id,
            "credential": credential or self.credential,
        }

    def prove(self, nonce_hex: str, key: SigningKey | None = None) -> Any:
        proof = hello_proof.prove(
            key or self.key,
            self.overlay_id,
            self.peer_id,
            bytes.fromhex(nonce_hex),
            decode(self.credential).digest,
        )
        return {"action": "prove", "peer-id": self.peer_id, "proof": proof.hex()}


@pytest.fixture(scope="module")
def homs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HomsProcess, dict[str, Member]]]:
    proc = HomsProcess(tmp_path_factory.mktemp("sig"), "sqlite:///sig.db")
    members: dict[str, Member] = {}
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, timeout=10.0) as client:
            for overlay_id in ("ov-1", "ov-2"):
                made = client.post("/homs", json=create(overlay_id, security="credentials"))
                assert made.status_code == 200, made.text
            made = client.post("/homs", json=create("compat", security="reference-compat"))
            assert made.status_code == 200
            for overlay_id, peer_id in (("ov-1", "alice"), ("ov-1", "bob"), ("ov-2", "carol")):
                key = SigningKey.generate()
                body = join(overlay_id, peer_id, password=f"pw-{peer_id}", expires=600)
                body["peer"]["public-key"] = key.public_text
                answer = client.post("/peer", json=body)
                assert answer.status_code == 202, answer.text
                members[peer_id] = Member(
                    overlay_id, peer_id, key, answer.json()["peer"]["credential"]
                )
            answer = client.post(
                "/peer", json=join("compat", "dave", password="pw-dave", expires=600)
            )
            assert answer.status_code == 202
        yield proc, members
    finally:
        proc.stop()


async def _register(s: Sock, m: Member) -> None:
    await s.send(m.hello())
    challenge = await s.next()
    assert challenge["action"] == "challenge", challenge
    await s.send(m.prove(challenge["nonce"]))
    assert await s.next() == {
        "action": "registered",
        "peer-id": m.peer_id,
        "overlay-id": m.overlay_id,
    }


async def _error(s: Sock, field: str, *words: str) -> None:
    got = await s.next()
    assert got.get("action") == "error", got
    assert got.get("field") == field, got
    for word in words:
        assert word in got["reason"], got


def _url(proc: HomsProcess) -> str:
    return f"ws://127.0.0.1:{proc.port}/ws"


async def test_a_hello_must_prove_the_credential_of_that_overlay_and_peer(
    homs: tuple[HomsProcess, dict[str, Member]],
) -> None:
    proc, m = homs
    alice, bob, carol = m["alice"], m["bob"], m["carol"]
    async with sock(_url(proc)) as mallory:
        # the member's password does not register it on a credentials overlay
        await mallory.send({"action": "hello", "peer-id": "alice", "password": "pw-alice"})
        await _error(mallory, "$.password", "not a member")
        # alice's credential, but the proof is made with another key
        await mallory.send(alice.hello())
        challenge = await mallory.next()
        await mallory.send(alice.prove(challenge["nonce"], key=SigningKey.generate()))
        await _error(mallory, "$.proof", "does not verify")
        # a proof for another nonce (e.g. replayed from an earlier exchange)
        await mallory.send(alice.hello())
        await mallory.next()
        await mallory.send(alice.prove("00" * 16))
        await _error(mallory, "$.proof", "does not verify")
        # carol's (valid) credential presented for overlay ov-1, or as alice
        await mallory.send(carol.hello(overlay_id="ov-1"))
        await _error(mallory, "$.credential", "overlay")
        await mallory.send({**alice.hello(), "credential": carol.credential})
        await _error(mallory, "$.credential")
        # a proof with no challenge
        await mallory.send(alice.prove("00" * 16))
        await _error(mallory, "$.peer-id", "no challenge")
        # a tampered credential
        tampered = alice.credential[:-4] + (
            "AAAA" if not alice.credential.endswith("AAAA") else "BBBB"
        )
        await mallory.send(alice.hello(credential=tampered))
        await _error(mallory, "$.credential", "credential refused")
        # relaying without having registered
        await mallory.send({"toid": "bob", "type": "offer"})
        await _error(mallory, "$", "hello")

    # the members themselves register, and relays stay within the overlay
    async with sock(_url(proc)) as a, sock(_url(proc)) as b, sock(_url(proc)) as c:
        await _register(a, alice)
        await _register(b, bob)
        await _register(c, carol)
        await a.send({"toid": "carol", "type": "offer"})
        await _error(a, "$.toid", "carol")
        await a.send({"toid": "bob", "type": "candidate", "candidate": "x"})
        assert await b.next() == {
            "toid": "bob",
            "type": "candidate",
            "candidate": "x",
            "fromid": "alice",
        }
        # nothing from alice reached carol: the next message on carol's socket is the refusal
        # of her own relay to alice (another overlay's peer), not alice's offer
        await c.send({"toid": "alice", "type": "offer"})
        await _error(c, "$.toid", "alice")


async def test_a_second_hello_for_a_live_peer_id_is_refused(
    homs: tuple[HomsProcess, dict[str, Member]],
) -> None:
    proc, m = homs
    bob = m["bob"]
    async with sock(_url(proc)) as first, sock(_url(proc)) as second, sock(_url(proc)) as alice_s:
        await _register(first, bob)
        await _register(alice_s, m["alice"])
        # even with bob's credential and key (a copy of bob elsewhere): refused while live
        await second.send(bob.hello())
        await _error(second, "$.peer-id", "another live socket")
        # a reference-compat member's password hello cannot take a credential-held id either
        await second.send({"action": "hello", "peer-id": "bob", "password": "pw-bob"})
        await _error(second, "$.password")
        # relays still reach the first socket
        await alice_s.send({"toid": "bob", "type": "offer", "n": 1})
        assert (await first.next())["n"] == 1
        # once the first says bye, the id may be registered again
        await first.send({"action": "bye", "peer-id": "bob"})
        await _register(second, bob)
        await alice_s.send({"toid": "bob", "type": "offer", "n": 2})
        assert (await second.next())["n"] == 2


async def test_reference_compat_overlays_keep_the_password_hello(
    homs: tuple[HomsProcess, dict[str, Member]],
) -> None:
    proc, _ = homs
    async with sock(_url(proc)) as dave:
        await dave.send({"action": "hello", "peer-id": "dave", "password": "wrong"})
        await _error(dave, "$.password", "not a member")
        await dave.send({"action": "hello", "peer-id": "dave", "password": "pw-dave"})
        # registered (no answer in this profile): a relay to itself proves it
        await dave.send({"toid": "dave", "type": "ping"})
        assert (await dave.next())["type"] == "ping"
