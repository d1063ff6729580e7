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


def test_a_fast_source_signs_in_batches_and_relays_verify_once_per_batch() -> None:
    net = _tree(30, seed=6)
    source = "p00003"
    burst = 200
    for k in range(burst):
        net.at(net.now + 0.0005 * (k + 1), lambda k=k: net.publish(source, b"b%d" % k))
    net.run(net.now + 5.0)
    for peer in net.peers.values():
        if peer.peer_id != source:
            assert peer.deliveries == burst, peer.peer_id
            assert all(n == 1 for n in peer.received.values())
            assert peer.core.counters.bad_signatures == 0
    verified = [p.core.db.origin.crypto.verified for p in net.peers.values() if p.peer_id != source]
    # a signature per message would be 200 verifications at every peer
    assert max(verified) <= burst // 4


def test_a_slow_source_signs_each_message_alone_without_delay() -> None:
    net = _tree(10, seed=7)
    core = net.peers["p00002"].core
    for k in range(5):
        net.at(net.now + 0.1 * (k + 1), lambda k=k: net.publish("p00002", b"s%d" % k))
    net.run(net.now + 1.0)
    assert not core.db.batch
    for sequence in range(1, 6):
        message = core.cache.message("p00002", sequence)
        assert message is not None
        assert message.hp2p.sig is not None
        assert message.hp2p.path == []  # a signature of its own: no batch, no wait
    assert all(p.deliveries == 5 for p in net.peers.values() if p.peer_id != "p00002")
