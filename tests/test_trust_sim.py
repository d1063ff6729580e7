"""A CoreTree whose HOMS issues credentials, in the simulator: the real cores, every link
admitted by AUTH, every message signed by its source and checked at every hop."""

from __future__ import annotations

import random

from hp2p.sim.network import MemoryHoms, Network


def _tree(peers: int, seed: int) -> Network:
    net = Network(seed=seed, homs=MemoryHoms(credentials=True))
    for i in range(peers):
        net.at(i * 0.02, net.add_peer)
    net.run(peers * 0.02 + 5.0)
    return net


def test_every_member_gets_every_signed_message_once() -> None:
    net = _tree(40, seed=4)
    sources = ["p00001", "p00017", "p00040"]
    for k in range(30):
        net.at(net.now + 0.01 * (k + 1), lambda k=k: net.publish(sources[k % 3], b"m%d" % k))
    net.run(net.now + 5.0)
    for peer in net.peers.values():
        own = sum(1 for s in sources if s == peer.peer_id) * 10
        assert peer.deliveries == 30 - own, peer.peer_id
        assert all(n == 1 for n in peer.received.values()), peer.peer_id
        counters = peer.core.counters
        assert counters.bad_signatures == counters.unsigned == counters.bad_credentials == 0
        assert peer.core.admission.counters.refused == 0
    admitted = sum(p.core.admission.counters.admitted for p in net.peers.values())
    assert admitted >= 2 * 39  # every primary path, both ends


def test_repair_after_crashes_keeps_admitting_and_delivering() -> None:
    net = _tree(40, seed=5)
    victims = random.Random(1).sample(sorted(net.peers)[1:], 8)
    for name in victims:
        net.crash(name)
    net.run(net.now + 10.0)
    alive = [p for p in net.peers.values() if p.alive]
    before = {p.peer_id: p.deliveries for p in alive}
    for k in range(10):
        net.at(net.now + 0.05 * (k + 1), lambda k=k: net.publish("p00001", b"after %d" % k))
    net.run(net.now + 5.0)
    for peer in alive:
        if peer.peer_id != "p00001":
            assert peer.deliveries - before[peer.peer_id] == 10, peer.peer_id
    assert all(p.core.admission.counters.refused == 0 for p in alive)
