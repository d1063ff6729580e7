"""R2 over TLS 1.3 on real loopback sockets: certificates from membership keys, no CA."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter
from pathlib import Path

from hp2p.peer.node import PeerNode
from hp2p.transport import tls
from hp2p.trust.keys import SigningKey
from node_helpers import collect, homs_app, start_node


async def _close_all(nodes: list[PeerNode]) -> None:
    await asyncio.gather(*(n.close() for n in reversed(nodes)), return_exceptions=True)


async def test_tls_and_plain_peers_share_a_tree_and_deliver_once(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        nodes = [await start_node(app, create="secret", peer_id="p0", tls=True)]
        try:
            nodes.append(await start_node(app, join="secret", peer_id="p1", tls=True))
            nodes.append(await start_node(app, join="secret", peer_id="p2"))  # plain TCP
            assert nodes[0].address.startswith("tls://")
            assert nodes[2].address.startswith("tcp://")
            subs = [n.subscribe() for n in nodes]
            for node in nodes:
                node.publish(f"from {node.peer_id}".encode())
            for node, sub in zip(nodes, subs, strict=True):
                got = await collect(sub, 2, within=10)
                keys = Counter((d.source, d.sequence) for d in got)
                assert set(keys) == {(n.peer_id, 1) for n in nodes if n is not node}
            for node in nodes:
                assert node.core is not None
                assert node.core.admission.counters.refused == 0
            assert sum(n.core.admission.counters.admitted for n in nodes if n.core) >= 2
            # the links dialled to the TLS peers checked the certificate against the credential
            assert sum(n.core.admission.counters.tls_checked for n in nodes if n.core) >= 1
        finally:
            await _close_all(nodes)


async def test_a_tls_port_speaks_no_plaintext(tmp_path: Path) -> None:
    """A client that sends a plain R2 HELLO to a TLS port gets no R2 answer at all."""
    async with homs_app(tmp_path) as app:
        node = await start_node(app, create="secret", peer_id="p0", tls=True)
        try:
            host, port = node.address.removeprefix("tls://").rsplit(":", 1)

            def probe() -> bytes:
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(b'\x01\x01\x00\x0d{"req-code":1}')
                    sock.settimeout(10)
                    try:
                        return sock.recv(4096)
                    except (ConnectionResetError, TimeoutError):
                        return b""

            answer = await asyncio.to_thread(probe)
            assert b"rsp-code" not in answer
        finally:
            await node.close()


def test_the_certificate_carries_the_membership_key() -> None:
    key = SigningKey.generate()
    server = tls.server_context(key)
    client = tls.client_context()
    assert server.minimum_version is ssl.TLSVersion.TLSv1_3
    assert client.verify_mode is ssl.CERT_NONE  # no CA: link admission checks the key

    async def handshake() -> bytes | None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = srv.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname=""
            )
            seen = tls.peer_key(writer.get_extra_info("ssl_object"))
            writer.close()
            return seen
        finally:
            srv.close()
            await srv.wait_closed()

    assert asyncio.run(handshake()) == key.public
