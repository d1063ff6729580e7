"""hp2p peers over TCP across real Linux NATs (issue #12): what connects and what does not.

Topology (``tests/netns.py``): a public namespace with the HOMS and a public peer, a cone-like
NAT and a symmetric NAT, three homes behind each. In the R2 TCP profile (etri §7.3) the
*volunteer* opens the connection to the joiner (HELLO goes joiner → entry peer; ESTAB comes
back on a new connection from the would-be parent to the joiner's advertised address). So a
peer behind a NAT can say HELLO to anyone it can reach, but it can only get a parent that can
dial *it*:

* a home peer with a port forward on its NAT and ``--advertise tcp://NAT_PUBLIC_IP:PORT`` can
  be the child (and the parent) of anyone, public or behind the other NAT;
* a home peer without one is reachable only from its own LAN: its parent must be a peer in
  the same home network; with none there it cannot attach at all, which a test shows.

Every test asserts delivery exactly once; one SIGKILLs a forwarded home peer and shows the
tree repairing across the NATs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from nat_peers import DEADLINE, NatPeer, Tree, parents, publish_and_check
from netns import Topology

pytestmark = [pytest.mark.slow, pytest.mark.nat]


def build(topo: Topology, workdir: Path) -> Tree:
    """p0 (public, root); per NAT: homes 0 (and cone-1) forwarded, the others private."""
    tree = Tree(topo, workdir)
    cone, sym = topo.nats["cone"].homes, topo.nats["sym"].homes
    tree.public("p0")
    tree.forwarded_home(cone[0], 7000)
    tree.forwarded_home(sym[0], 7000)
    tree.forwarded_home(cone[1], 7001)
    tree.private_home(cone[2])
    tree.private_home(sym[1])
    tree.private_home(sym[2])
    return tree


def test_what_crosses_the_nats(nat_net: Topology) -> None:
    """Socket level: out through either NAT works; in works only through a port forward."""
    topo = nat_net
    cone, sym = topo.nats["cone"], topo.nats["sym"]
    home = cone.homes[0]
    listener = topo.popen(
        home.ns,
        [sys.executable, "-u", "-c", _ECHO_LISTENER, home.ip, "7000"],
        stdout=subprocess.PIPE,
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "listening"
    other = sym.homes[0].ns
    assert topo.tcp_dial(topo.public_ns, home.ip, 7000) == "ENETUNREACH"  # a private address
    assert topo.tcp_dial(other, home.ip, 7000) == "ENETUNREACH"
    assert topo.tcp_dial(topo.public_ns, cone.wan_ip, 7000) == "ECONNREFUSED"  # no forward yet
    assert topo.tcp_dial(cone.homes[1].ns, home.ip, 7000) == "ok"  # same LAN
    public = topo.forward(home, 7000)
    host, port = public.split(":")
    assert topo.tcp_dial(topo.public_ns, host, int(port)) == "ok"
    assert topo.tcp_dial(other, host, int(port)) == "ok"  # out through sym, in through cone
    assert topo.tcp_dial(cone.homes[1].ns, host, int(port)) == "ok"  # hairpin
    listener.kill()


_ECHO_LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print("listening", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""


def test_a_home_peer_without_a_forwarded_port_cannot_attach_below_a_public_peer(
    nat_net: Topology, tmp_path: Path
) -> None:
    """Its HELLO gets out, but the public peer's ESTAB cannot get in: no parent, status 1."""
    topo = nat_net
    tree = Tree(topo, tmp_path)
    try:
        tree.public("p0")
        home = topo.nats["cone"].homes[2]
        args = ["--listen", f"{home.ip}:0", "--set", "join_attempts=1", "--set", "rejoins=0"]
        overlay = tree.peers["p0"].overlay_id
        peer = NatPeer(topo, tmp_path, home.ns, tree.homs.url, "lonely", "--join", overlay, *args)
        start = time.monotonic()
        assert peer.proc.wait(timeout=DEADLINE) == 1
        assert peer.inbox.kept == [] or all(e["event"] != "joined" for e in peer.inbox.kept)
        err = peer.err_path.read_text()
        assert "attach" in err or "join" in err, err
        failed_after = time.monotonic() - start
        assert failed_after < DEADLINE
    finally:
        codes = tree.stop()
    assert codes == {"p0": 0}


def test_peers_behind_both_nats_form_a_tree_and_deliver_exactly_once(
    nat_net: Topology, tmp_path: Path
) -> None:
    topo = nat_net
    tree = build(topo, tmp_path)
    try:
        names = list(tree.peers)
        # what the HOMS hands out: the forwarded public address, or the private one
        for name, peer in tree.peers.items():
            assert peer.joined is not None
            r2 = str(peer.joined["r2"])
            if name in tree.forwarded:
                assert r2.startswith(f"tcp://{topo.nats[tree.lan[name]].wan_ip}:"), r2
            elif tree.lan[name] != "public":
                assert r2.startswith("tcp://10."), r2
        # where each peer could attach: a private home peer only below its own LAN
        placed = parents(tree, names)
        assert placed["p0"] is None
        for name, parent in placed.items():
            if name == "p0":
                continue
            assert parent in tree.peers, (name, parent)
            if name not in tree.forwarded:
                assert tree.lan[str(parent)] == tree.lan[name], (name, parent)
        peers = list(tree.peers.values())
        sources = [tree.peers["p0"], tree.peers["cone-2"], tree.peers["sym-2"]]
        publish_and_check(peers, sources, 5, "m")
        for peer in peers:
            status = peer.status()
            assert status["node"]["frames_refused"] == 0
    finally:
        codes = tree.stop()
    assert all(code == 0 for code in codes.values()), codes


def test_a_sigkilled_home_peer_is_repaired_around_and_delivery_goes_on(
    nat_net: Topology, tmp_path: Path
) -> None:
    topo = nat_net
    tree = build(topo, tmp_path)
    # the victim: the forwarded peer that cone-2 (private) hangs below; cone-2 can re-attach
    # only below the other forwarded peer of its LAN
    before = parents(tree, list(tree.peers))
    victim = str(before["cone-2"])
    assert victim in ("cone-0", "cone-1"), before
    orphans = [name for name, parent in before.items() if parent == victim]
    try:
        peers = list(tree.peers.values())
        sources = [tree.peers["p0"], tree.peers["cone-2"], tree.peers["sym-2"]]
        publish_and_check(peers, sources, 3, "before")
        tree.peers[victim].proc.kill()  # SIGKILL: no RELEASE, no HOMP leave
        tree.peers[victim].proc.wait(timeout=10)
        survivors = [p for p in peers if p.name != victim]
        # the orphans re-attach (candidate paths first, then the HOMS): wait for their events
        for name in orphans:
            event = tree.peers[name].next_event("attached", DEADLINE)
            assert event["parent"] != victim, event
        placed = parents(tree, [p.name for p in survivors])
        assert victim not in placed.values(), placed
        for name, parent in placed.items():
            if name not in tree.forwarded and name != "p0":
                assert tree.lan[str(parent)] == tree.lan[name], (name, parent)
        publish_and_check(survivors, sources, 5, "after")
        for peer in survivors:  # nothing of the first batch came twice meanwhile
            again = [e for e in peer.seen if e["event"] == "deliver"]
            assert again == [], f"{peer.name}: deliveries beyond the expected: {again}"
    finally:
        codes = tree.stop(killed={victim})
    assert all(code == 0 for code in codes.values()), codes
