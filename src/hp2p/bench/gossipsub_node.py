"""One gossipsub node for the ``hp2p bench tree --baseline gossipsub`` baseline (py-libp2p, trio).

py-libp2p is the pub/sub peer a Python user would otherwise pick (BENCHMARKS.md). It runs on
trio and pulls in a large dependency set, so it is an optional extra (``hp2p[bench]``) and each
node is its own process, started by path with an interpreter that has ``libp2p`` installed.
This file therefore imports nothing from hp2p.

The defaults that would cripple a benchmark are overridden: heartbeat 120 s → 1 s, the
per-topic rate limit (10 msg/s) and spam protection off, and eclipse protection off (every node
is on 127.0.0.1, so an IP-diversity rule would prune the mesh).

Same protocol as :mod:`hp2p.bench.relay`: first line ``{"event": "ready", "addr": MULTIADDR}``;
stdin commands ``links ADDR,ADDR``, ``publish TEXT``, ``status``; one JSON line per delivery.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

TOPIC = "hp2p-bench"


def _emit(fields: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _run() -> None:  # pragma: no cover - needs the optional py-libp2p extra
    import multiaddr  # type: ignore[import-not-found, unused-ignore]
    import trio  # type: ignore[import-not-found, unused-ignore]
    from libp2p import new_host  # type: ignore[import-not-found, unused-ignore]
    from libp2p.crypto.ed25519 import (  # type: ignore[import-not-found, unused-ignore]
        create_new_key_pair,
    )
    from libp2p.peer.peerinfo import (  # type: ignore[import-not-found, unused-ignore]
        info_from_p2p_addr,
    )
    from libp2p.pubsub.gossipsub import GossipSub  # type: ignore[import-not-found, unused-ignore]
    from libp2p.pubsub.pubsub import Pubsub  # type: ignore[import-not-found, unused-ignore]
    from libp2p.tools.anyio_service import (  # type: ignore[import-not-found, unused-ignore]
        background_trio_service,
    )

    host = new_host(key_pair=create_new_key_pair())
    router = GossipSub(
        protocols=["/meshsub/1.0.0"],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=1,
        spam_protection_enabled=False,
        max_messages_per_topic_per_second=1e9,
        eclipse_protection_enabled=False,
    )
    pubsub = Pubsub(host, router)
    counters = {"deliveries": 0, "sequence": 0}
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with (
        host.run(listen_addrs=[listen]),
        trio.open_nursery() as nursery,
        background_trio_service(pubsub),
        background_trio_service(router),
    ):
        await pubsub.wait_until_ready()
        subscription = await pubsub.subscribe(TOPIC)
        me = host.get_id()

        async def receive() -> None:
            while True:
                message = await subscription.get()
                if message.from_id == me.to_bytes():
                    continue
                sequence = int.from_bytes(message.data[:8], "big")
                counters["deliveries"] += 1
                _emit(
                    {
                        "event": "deliver",
                        "source": "relay",
                        "sequence": sequence,
                        "t": time.time(),
                    }
                )

        nursery.start_soon(receive)
        addr = str(host.get_addrs()[0])
        if "/p2p/" not in addr:
            addr = f"{addr}/p2p/{me.to_string()}"
        _emit({"event": "ready", "addr": addr})
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            chunk = await stdin.receive_some(1 << 16)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                command, _, argument = raw.decode("utf-8", "replace").partition(" ")
                if command == "links":
                    for text in filter(None, argument.split(",")):
                        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(text)))
                    _emit({"event": "linked", "links": len(pubsub.peers)})
                elif command == "publish":
                    counters["sequence"] += 1
                    sequence = counters["sequence"]
                    data = sequence.to_bytes(8, "big") + argument.encode()
                    _emit(
                        {
                            "event": "published",
                            "source": "relay",
                            "sequence": sequence,
                            "t": time.time(),
                        }
                    )
                    await pubsub.publish(TOPIC, data)
                elif command == "status":
                    _emit(
                        {
                            "event": "status",
                            "copies": counters["deliveries"],
                            "duplicates": 0,
                            "deliveries": counters["deliveries"],
                        }
                    )
        nursery.cancel_scope.cancel()


def main() -> int:  # pragma: no cover - needs the optional py-libp2p extra
    try:
        import trio  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("gossipsub node: this interpreter has no trio/libp2p (pip install 'hp2p[bench]')")
        return 2
    trio.run(_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
