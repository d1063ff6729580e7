"""Attacks on membership credentials (issue #11) against a real peer on loopback TCP.

A peer of a ``credentials`` overlay listens on a port anyone can reach. The attacker here
speaks R2 on a raw socket: it has no credential, a forged one, a member's credential without
that member's key, or a credential of another overlay; each time the peer refuses the link
(AUTH 12401) before any other message is taken. At the HOMS, claimed tickets and addresses
never enter a credential and a live peer-id cannot be joined again with another key.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import msgspec
import pytest

from hp2p.peer.homs_client import HomsError
from hp2p.peer.node import PeerNode
from hp2p.trust.credential import CONTEXT, PREFIX, CredentialBody, decode, issue, key_id
from hp2p.trust.keys import SigningKey
from hp2p.wire.r2 import AUTH_OK, AUTH_REFUSED, Auth, AuthResponse, Hello, StreamDecoder, encode
from node_helpers import client_for, homs_app, start_node

DEADLINE_S = 10.0


async def _exchange(node: PeerNode, *messages: Auth | Hello) -> list[AuthResponse]:
    """Send ``messages`` on a fresh connection to ``node``; the AUTH answers until it closes."""
    host, port = node.address.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    answers: list[AuthResponse] = []
    decoder = StreamDecoder()
    try:
        for message in messages:
            writer.write(encode(message))
            await writer.drain()
            async with asyncio.timeout(DEADLINE_S):
                got: list[object] = []
                while not got:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return answers
                    got = list(decoder.feed(chunk))
            answers.extend(m for m in got if isinstance(m, AuthResponse))
            if answers and answers[-1].code == AUTH_REFUSED:
                # the peer closes a refused link: nothing more is read from it
                async with asyncio.timeout(DEADLINE_S):
                    assert await reader.read() == b""
                return answers
    finally:
        writer.close()
    return answers


def _token(body: CredentialBody, signer: SigningKey) -> str:
    """A token for ``body`` signed by ``signer`` whatever key id it names (a forgery)."""
    signed = msgspec.msgpack.encode(body)
    sig = signer.sign(CONTEXT + signed)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return PREFIX + b64(signed) + "." + b64(sig)


def _refused(answers: list[AuthResponse], *words: str) -> None:
    assert answers, "no answer"
    last = answers[-1]
    assert last.code == AUTH_REFUSED, last
    for word in words:
        assert word in (last.reason or ""), last


async def test_a_peer_refuses_links_without_a_valid_credential_and_proof(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        root = await start_node(app, create="guarded", peer_id="root")
        try:
            assert root.core is not None
            overlay_id = root.core.overlay_id
            # a member whose credential the attacker copied (but whose key it does not hold)
            victim = client_for(app)
            overlay = await victim.find_overlay(overlay_id)
            joined = await victim.join(
                overlay, peer_id="victim", address="tcp://127.0.0.1:9", password="p" * 8, expires=60
            )
            assert joined.trust is not None
            stolen = joined.trust.credential
            # a member of another overlay, with its own (valid) credential
            other = client_for(app)
            await other.create_overlay(
                "elsewhere", "o", "admin", heartbeat_interval=1, heartbeat_timeout=3
            )
            elsewhere = await other.find_overlay("elsewhere")
            theirs = await other.join(
                elsewhere,
                peer_id="other",
                address="tcp://127.0.0.1:9",
                password="p" * 8,
                expires=60,
            )
            assert theirs.trust is not None

            # 1. no AUTH at all: a HELLO is refused before it is looked at
            hello = Hello(
                overlay_id=overlay_id, peer_id="x", address="tcp://127.0.0.1:1", ticket_id=9
            )
            _refused(await _exchange(root, hello), "AUTH first")

            # 2. credentials the attacker made itself: signed by its own "HOMS" key, or
            #    naming the real HOMS key id over a signature that key never made
            fake_homs, me = SigningKey.generate(), SigningKey.generate()
            real = decode(stolen).body
            body = msgspec.structs.replace(
                real,
                homs_key=key_id(fake_homs.public),
                peer_id="mallory",
                public_key=me.public,
                role="source",
            )
            self_signed = issue(fake_homs, body)
            relabelled = _token(msgspec.structs.replace(body, homs_key=real.homs_key), fake_homs)
            nonce = b"n" * 16
            _refused(await _exchange(root, Auth(credential=self_signed, nonce=nonce)), "trust")
            _refused(await _exchange(root, Auth(credential=relabelled, nonce=nonce)), "signature")

            # 3. a member's credential without its key: the peer answers with its own proof,
            #    the attacker cannot sign the transcript, the link is refused
            answers = await _exchange(
                root, Auth(credential=stolen, nonce=nonce), Auth(proof=b"\0" * 64)
            )
            assert answers[0].code == AUTH_OK
            _refused(answers, "proof")

            # 4. a valid credential of another overlay
            _refused(
                await _exchange(root, Auth(credential=theirs.trust.credential, nonce=nonce)),
                "overlay",
            )
            await victim.aclose()
            await other.aclose()
        finally:
            await root.close()


async def test_the_homs_signs_its_own_ticket_and_address_and_refuses_a_second_key(
    tmp_path: Path,
) -> None:
    async with homs_app(tmp_path) as app:
        owner = client_for(app)
        await owner.create_overlay("ov", "o", "admin", heartbeat_interval=1, heartbeat_timeout=3)
        overlay = await owner.find_overlay("ov")
        first = await owner.join(
            overlay, peer_id="p", address="tcp://127.0.0.1:7", password="p" * 8, expires=60
        )
        assert first.trust is not None
        body = decode(first.trust.credential).body
        assert (body.ticket_id, body.address, body.role) == (1, "tcp://127.0.0.1:7", "peer")
        thief = client_for(app)

        with pytest.raises(HomsError, match="already joined"):
            await thief.join(
                overlay, peer_id="p", address="tcp://127.0.0.1:8", password="q" * 8, expires=60
            )
        members = await app.state.store.peers(overlay.overlay_id)
        assert [(m.peer_id, m.address) for m in members] == [("p", "tcp://127.0.0.1:7")]
        await owner.aclose()
        await thief.aclose()
