"""hp2p peer processes in the namespaces of ``tests/netns.py``, followed through their JSON
events (``--json-events --stdin``, as ``tests/peer_procs.py``): an overlay grown peer by peer
in chosen namespaces, and the exactly-once delivery check."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

from netns import Home, Topology
from peer_procs import EventProc

DEADLINE = 60.0
FAST = ["--set", "heartbeat_interval=1", "--set", "heartbeat_timeout=3"]


class NatPeer(EventProc):
    """``hp2p peer --json-events --stdin`` inside a namespace."""

    def __init__(
        self, topo: Topology, workdir: Path, ns: str, homs_url: str, name: str, *args: str
    ) -> None:
        cmd = [sys.executable, "-m", "hp2p", "peer", "--homs", homs_url, "--id", name]
        level = os.environ.get("HP2P_NAT_LOG_LEVEL", "warning")  # debug: aioice too
        cmd += ["--json-events", "--stdin", "--log-level", level, *args]
        super().__init__(workdir, name, [*topo.prefix(ns), *cmd])
        topo.procs.append(self.proc)  # killed by the topology's clean-up if still running

    def status(self) -> dict[str, Any]:
        self.command("status")
        return self.next_event("status", DEADLINE)


class Tree:
    """The peers of one overlay across the NATs, by name."""

    def __init__(self, topo: Topology, workdir: Path) -> None:
        self.topo, self.workdir = topo, workdir
        self.homs = topo.start_homs(workdir, "--peer-list-size", "8")
        self.peers: dict[str, NatPeer] = {}
        self.lan: dict[str, str] = {}  # peer → "public", "cone" or "sym"
        self.forwarded: set[str] = set()

    def start(self, name: str, ns: str, lan: str, *args: str) -> NatPeer:
        if self.peers:
            root = next(iter(self.peers.values()))
            args = ("--join", root.overlay_id, *args)
        else:
            args = ("--create", "across-nats", *FAST, *args)
        peer = NatPeer(self.topo, self.workdir, ns, self.homs.url, name, *args)
        self.peers[name] = peer
        self.lan[name] = lan
        peer.wait_joined(DEADLINE)
        return peer

    def public(self, name: str, *args: str) -> NatPeer:
        """A peer in the public namespace, listening on the public address (port 0)."""
        listen = ("--listen", f"{self.topo.public_ip}:0")
        return self.start(name, self.topo.public_ns, "public", *listen, *args)

    def home(self, home: Home, *args: str) -> NatPeer:
        """A peer in ``home`` with exactly ``args`` (WebRTC peers: ``--webrtc …``)."""
        return self.start(home.name, home.ns, home.nat.name, *args)

    def forwarded_home(self, home: Home, port: int) -> NatPeer:
        """Listens on the home's address; the NAT forwards its public PORT there."""
        public = self.topo.forward(home, port)
        self.forwarded.add(home.name)
        listen = ["--listen", f"{home.ip}:{port}", "--advertise", f"tcp://{public}"]
        return self.start(home.name, home.ns, home.nat.name, *listen)

    def private_home(self, home: Home, *args: str) -> NatPeer:
        """Listens on the home's address, advertised as is: reachable from its LAN only."""
        return self.start(home.name, home.ns, home.nat.name, "--listen", f"{home.ip}:0", *args)

    def stop(self, killed: Collection[str] = ()) -> dict[str, int | None]:
        alive = [p for n, p in self.peers.items() if n not in killed]
        for peer in alive:
            peer.leave()
        codes = {peer.name: peer.stop() for peer in alive}
        self.homs.stop()
        return codes


def publish_and_check(
    peers: list[NatPeer], sources: list[NatPeer], count: int, tag: str
) -> set[tuple[str, int]]:
    """``count`` messages from each source; every peer gets every other's exactly once."""
    for i in range(count):
        for src in sources:
            src.command(f"publish {tag} {src.name} {i}")
    published: set[tuple[str, int]] = set()
    for src in sources:
        for _ in range(count):
            event = src.next_event("published", DEADLINE)
            published.add((event["source"], event["sequence"]))
    assert len(published) == count * len(sources)
    for peer in peers:
        expected = {key for key in published if key[0] != peer.name}
        got: Counter[tuple[str, int]] = Counter()
        while not expected <= set(got):
            event = peer.next_event("deliver", DEADLINE)
            got[(event["source"], event["sequence"])] += 1
        assert set(got) == expected, f"{peer.name}: unexpected deliveries {set(got) - expected}"
        assert max(got.values()) == 1, f"{peer.name} got duplicates: {got}"
    return published


def parents(tree: Tree, names: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        status = tree.peers[name].status()
        assert status["state"] == "attached", (name, status["state"])
        out[name] = status["parent"]
    return out
