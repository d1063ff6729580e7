"""Reproducible figures for the peer core: tree depth and hot-path event rate.

``python -m hp2p.sim.measure`` prints the figures quoted in docs/peer-core.md as JSON. They are
measurements, not tests: wall-clock rates depend on the machine and its load, so the
benchmark command (``hp2p bench``) is where targets are checked.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from hp2p.peer.config import PeerConfig
from hp2p.peer.control import JoinInfo
from hp2p.peer.core import PeerCore
from hp2p.peer.paths import Link, Role
from hp2p.sim.network import Network
from hp2p.wire.r2.messages import BroadcastData


@dataclass(frozen=True, slots=True)
class TreeShape:
    peers: int
    seed: int
    join_gap: float
    max_depth: int
    mean_depth: float
    roots: int
    unattached: int


def tree_shape(
    peers: int, seed: int = 1, join_gap: float = 0.5, config: PeerConfig | None = None
) -> TreeShape:
    """Join ``peers`` one after another (HOMS entry-point rule) and describe the tree."""
    net = Network(seed=seed, config=config, record=False)
    for i in range(peers):
        net.at(i * join_gap, net.add_peer)
    net.run(peers * join_gap + 30.0)
    depths = [d for d in net.depths().values() if d is not None]
    return TreeShape(
        peers=peers,
        seed=seed,
        join_gap=join_gap,
        max_depth=max(depths, default=-1),
        mean_depth=round(statistics.fmean(depths), 3) if depths else -1.0,
        roots=len(net.roots()),
        unattached=sum(1 for p in net.alive() if not p.core.attached),
    )


def hot_path_rate(messages: int = 100_000, children: int = 4, size: int = 1024) -> float:
    """Core events/s for receive BROADCAST_DATA → dedup → cache → forward → deliver."""
    core = PeerCore(PeerConfig(), "me", "mem://me", random.Random(0))
    core.start(JoinInfo("measure", 1, root=True), 0.0)
    for conn in range(1, children + 1):
        core.paths.add(Link(conn, Role.CHILD, peer_id=f"c{conn}", ticket=conn + 1))
    core.take_effects()
    payload = b"x" * size
    batch = [BroadcastData(source="src", sequence=n, data=payload) for n in range(1, messages + 1)]
    start = time.perf_counter()
    for n, message in enumerate(batch):
        core.receive(1, message, 1.0)
        if n % 1024 == 0:
            core.take_effects()
    elapsed = time.perf_counter() - start
    core.take_effects()
    return messages / elapsed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    peers = int(args[0]) if args else 100
    shapes = [tree_shape(peers, seed) for seed in (1, 2, 3)]
    result = {
        "tree": [asdict(s) for s in shapes],
        "core_events_per_s": round(hot_path_rate()),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
