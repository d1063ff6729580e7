"""Start and drive one overlay of real processes: hp2p peers with a HOMS, or the relay baselines.

:class:`HpOverlay` runs a real ``hp2p homs`` and N ``hp2p peer --json-events --stdin``
processes on 127.0.0.1; :class:`RelayOverlay` runs N ``python -m hp2p.bench.relay`` processes
wired as a given tree (floor) or as a random mesh (flood). Both expose the same surface to the
benchmark: a source to publish from, the processes (for CPU and RSS), and the delivery lines.
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from hp2p.bench.procs import Fleet, Proc, ProcError
from hp2p.homs.launch import HomsProcess, HomsStartError, start_homs

JOIN_TIMEOUT = 90.0
START_BATCH = 8


class HpOverlay:
    """N real hp2p peers (peer 0 creates the overlay and is the root, the others join)."""

    def __init__(
        self,
        workdir: Path,
        peers: int,
        max_children: int,
        seed: int,
        security: str | None = None,
        transport: str = "tcp",
        kind: str | None = None,
    ) -> None:
        #: ``None``: the overlay's default (credentials: AUTH on every link, signed data);
        #: ``reference-compat``: neither, the same peers as before issue #11 (the baseline
        #: that shows what the signatures cost).
        self.security = security
        #: ``tcp``, or ``webrtc``: every peer runs ``--webrtc`` and advertises only the HOMS's
        #: signalling URL, so every link is a data channel (host candidates on 127.0.0.1).
        self.transport = transport
        self.kind = kind or ("hp2p" if security is None else "unsigned")
        self.workdir = workdir
        self.fleet = Fleet()
        self.homs: HomsProcess | None = None
        self.peers: list[Proc] = []
        self.depth: dict[str, int] = {}
        self.parent: dict[str, str | None] = {}
        self._n = peers
        self._max_children = max_children
        self._seed = seed

    def start(self, progress: Any = None) -> None:
        try:
            self.homs = start_homs(self.workdir)
        except HomsStartError as exc:
            raise ProcError(str(exc)) from None
        title = f"bench-{self._n}-{self._seed}"
        for start in range(0, self._n, START_BATCH):
            batch = []
            for i in range(start, min(self._n, start + START_BATCH)):
                name = f"peer-{i:04d}"
                how = ["--create", title] if i == 0 else ["--join", title]
                if i == 0 and self.security is not None:
                    how += ["--security", self.security]
                args = [sys.executable, "-m", "hp2p", "peer", "--homs", self.homs.url, "--id", name]
                args += [*how, "--json-events", "--stdin", "--log-level", "warning"]
                args += ["--set", f"max_children={self._max_children}"]
                args += ["--set", f"seed={self._seed + i}"]
                if self.transport == "webrtc":
                    args += ["--webrtc", "--ice-host", "127.0.0.1"]
                proc = self.fleet.start(name, args, self.workdir / f"{name}.err")
                batch.append(proc)
                if i == 0:  # the root must exist before anyone joins
                    proc.wait_event({"joined"}, JOIN_TIMEOUT)
                    batch = []
            for proc in batch:
                proc.wait_event({"joined"}, JOIN_TIMEOUT)
            self.peers.extend(self.fleet.procs[len(self.peers) :])
            if progress is not None:
                progress(len(self.peers))

    @property
    def source(self) -> Proc:
        return self.peers[0]

    def survey(self) -> None:
        """Ask every peer for its status: depth and parent (the tree shape)."""
        for proc in self.peers:
            proc.command("status")
        for proc in self.peers:
            status = proc.wait_event({"status"}, 30)
            depth = status.get("depth")
            self.depth[proc.name] = depth if isinstance(depth, int) else -1
            self.parent[proc.name] = status.get("parent")

    def connect_events(self) -> list[dict[str, Any]]:
        """The ``link_open`` events of every link the peers dialled (``ms``: dial to open;
        WebRTC adds ``phases``)."""
        opened_all: list[dict[str, Any]] = []
        for proc in self.peers:
            inbox = proc.inbox
            while (event := inbox.get(0.0)) is not None:
                if inbox.ended:
                    break
                inbox.kept.append(event)
            opened = [e for e in inbox.kept if e.kind == "link_open"]
            inbox.kept = [e for e in inbox.kept if e.kind != "link_open"]
            opened_all.extend(e for e in opened if isinstance(e.get("ms"), int | float))
        return opened_all

    def tree_children(self) -> dict[int, list[int]]:
        """The surveyed tree as index -> child indexes (for the floor baseline)."""
        index = {p.name: i for i, p in enumerate(self.peers)}
        children: dict[int, list[int]] = {i: [] for i in range(len(self.peers))}
        for name, parent in self.parent.items():
            if parent is not None and parent in index:
                children[index[parent]].append(index[name])
        return children

    def close(self) -> None:
        self.fleet.close()
        if self.homs is not None:
            self.homs.stop()


class RelayOverlay:
    """N baseline processes: relays as a tree (``children``) or a random mesh (flood), or
    gossipsub nodes (``mode="gossipsub"``, run by ``python``, which must have py-libp2p)."""

    def __init__(
        self,
        workdir: Path,
        peers: int,
        mode: str,
        children: dict[int, list[int]] | None = None,
        degree: int = 4,
        seed: int = 0,
        python: str | None = None,
    ) -> None:
        self.kind = {"tree": "floor", "flood": "flood"}.get(mode, mode)
        self.workdir = workdir
        self.mode = mode
        self.fleet = Fleet()
        self.peers: list[Proc] = []
        self.ports: list[str] = []
        self._python = python or sys.executable
        self.depth: dict[str, int] = {}
        self._n = peers
        self._children = children
        self._degree = degree
        self._seed = seed

    def start(self, progress: Any = None) -> None:
        for i in range(self._n):
            name = f"{self.kind}-{i:04d}"
            if self.mode == "gossipsub":
                args = [self._python, str(Path(__file__).with_name("gossipsub_node.py"))]
            else:
                args = [sys.executable, "-m", "hp2p.bench.relay", "--mode", self.mode]
            self.peers.append(self.fleet.start(name, args, self.workdir / f"{name}.err"))
        # py-libp2p takes seconds of CPU to import; N of them at once on 2 cores take minutes.
        timeout = 300.0 if self.mode == "gossipsub" else 60.0
        for proc in self.peers:
            ready = proc.wait_event({"ready"}, timeout)
            self.ports.append(str(ready.get("port", ready.get("addr"))))
        links = self._tree_links() if self.mode == "tree" else self._mesh_links()
        for i, targets in links.items():
            if targets:
                self.peers[i].command("links " + ",".join(self.ports[j] for j in targets))
                self.peers[i].wait_event({"linked"}, 30)
        self._depths(links)
        if progress is not None:
            progress(len(self.peers))

    def _tree_links(self) -> dict[int, list[int]]:
        if self._children is not None:
            return self._children
        # A complete tree of 4 children per node (max_children's default): hp2p's aim.
        return {i: [c for c in range(i * 4 + 1, i * 4 + 5) if c < self._n] for i in range(self._n)}

    def _mesh_links(self) -> dict[int, list[int]]:
        """A connected random graph, average degree about ``degree``: a ring plus random chords."""
        rng = random.Random(self._seed)
        edges: set[tuple[int, int]] = set()
        order = list(range(self._n))
        rng.shuffle(order)
        for a, b in zip(order, order[1:] + order[:1], strict=True):
            if a != b:
                edges.add((min(a, b), max(a, b)))
        target = self._n * self._degree // 2
        tries = 0
        while len(edges) < target and tries < 100 * self._n:
            tries += 1
            a, b = rng.randrange(self._n), rng.randrange(self._n)
            if a != b:
                edges.add((min(a, b), max(a, b)))
        links: dict[int, list[int]] = {i: [] for i in range(self._n)}
        for a, b in sorted(edges):
            links[a].append(b)  # the lower index connects; frames flow both ways
        return links

    def _depths(self, links: dict[int, list[int]]) -> None:
        """Hops from the source (node 0): tree depth, or shortest path in the mesh."""
        adjacency: dict[int, set[int]] = {i: set() for i in range(self._n)}
        for a, targets in links.items():
            for b in targets:
                adjacency[a].add(b)
                if self.mode != "tree":
                    adjacency[b].add(a)
        hops = {0: 0}
        todo = deque([0])
        while todo:
            node = todo.popleft()
            for other in adjacency[node]:
                if other not in hops:
                    hops[other] = hops[node] + 1
                    todo.append(other)
        self.depth = {p.name: hops.get(i, -1) for i, p in enumerate(self.peers)}

    @property
    def source(self) -> Proc:
        return self.peers[0]

    def counters(self) -> tuple[int, int]:
        """(copies received, deliveries) summed over the relays."""
        for proc in self.peers:
            proc.command("status")
        copies = deliveries = 0
        for proc in self.peers:
            status = proc.wait_event({"status"}, 30)
            copies += int(status["copies"])
            deliveries += int(status["deliveries"])
        return copies, deliveries

    def close(self) -> None:
        self.fleet.close()


def settle(seconds: float) -> None:
    """Let a freshly built overlay finish its background work (bounded, not a synchronisation)."""
    time.sleep(seconds)
