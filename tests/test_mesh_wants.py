"""The SubMesh want-predicate (``MeshCore.set_wants``) in the deterministic harness.

An application that keeps only some objects' data (an IoT history with ``--replicas``) still
pulls every manifest, never requests the data of objects it does not want, is not held up by
them (the pull window skips them), fetches them on demand when it prioritises them, lets them
go again with ``release``, and pulls what it comes to want when its wishes change (repair).
"""

from __future__ import annotations

import random

from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_objects import Manifest, split_sequence
from hp2p.sim.mesh import MeshNetwork, MeshPeer

CONFIG = MeshConfig(piece_size=4096, fetch_window=4)


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _net(peers: int) -> MeshNetwork:
    net = MeshNetwork(seed=3, config=CONFIG)
    net.add_peer("source")
    for _ in range(peers):
        net.add_peer()
    net.run(1.0)
    return net


def _even(obj: int, manifest: Manifest) -> bool:
    return obj % 2 == 0


def _data_requested(peer: MeshPeer, objects: set[int]) -> bool:
    return any(split_sequence(s)[0] in objects for s in peer.core.pull.requests)


def test_only_wanted_data_is_pulled_every_manifest_is_and_the_rest_waits_parked() -> None:
    net = _net(3)
    picky = net.receivers()[0]
    picky.core.set_wants(_even, net.now)
    history = [net.publish(_blob(10_000, s)) for s in range(20)]  # more than fetch_window
    evens = [o for o in history if o % 2 == 0]
    odds = {o for o in history if o % 2 == 1}
    others = net.receivers()[1:]
    assert net.run_until(lambda: all(net.all_have(o, others) for o in history), net.now + 60)
    assert net.run_until(lambda: set(evens) <= set(picky.received), net.now + 60)
    net.run(net.now + 5)
    core = picky.core
    assert set(picky.received) == set(evens)
    assert all(core.manifest(o) is not None for o in history)  # every manifest
    assert core.pull.parked == odds  # held elsewhere, counted, not requested
    assert all(core.pull.availability[o] for o in odds)
    assert not _data_requested(picky, odds)
    assert core.status()["parked"] == len(odds)


def test_a_parked_object_is_fetched_on_demand_and_released_again() -> None:
    net = _net(2)
    picky = net.receivers()[0]
    picky.core.set_wants(lambda obj, manifest: False, net.now)
    history = [net.publish(_blob(9_000, s)) for s in range(6)]
    assert net.run_until(lambda: all(picky.core.manifest(o) for o in history), net.now + 30)
    assert picky.received == {}
    wanted = history[2]
    picky.core.prioritise([wanted], net.now)
    assert net.run_until(lambda: wanted in picky.received, net.now + 30)
    assert set(picky.received) == {wanted}
    before = picky.core.holdings.bytes
    received = picky.core.counters.pieces_received
    assert picky.core.release(wanted, net.now)  # while still asked for: the wish is fulfilled
    assert not picky.core.holds(wanted)
    assert picky.core.manifest(wanted) is not None  # the manifest stays
    assert picky.core.holdings.bytes < before
    assert wanted in picky.core.pull.parked  # its holders are counted again
    assert not picky.core.release(wanted, net.now)  # nothing left to let go
    net.run(net.now + 5)
    assert not picky.core.holds(wanted)  # not fetched again behind the application's back
    assert picky.core.counters.pieces_received == received
    del picky.received[wanted]
    picky.core.prioritise([wanted], net.now)  # asked again: fetched again, delivered again
    assert net.run_until(lambda: wanted in picky.received, net.now + 30)


def test_objects_come_to_be_wanted_when_the_wishes_change_repair() -> None:
    net = _net(2)
    picky = net.receivers()[0]
    owned: set[int] = set()
    picky.core.set_wants(lambda obj, manifest: obj in owned, net.now)
    history = [net.publish(_blob(9_000, s)) for s in range(8)]
    assert net.run_until(lambda: all(picky.core.manifest(o) for o in history), net.now + 30)
    assert picky.received == {}
    owned.update(history[5:])  # a member died: these are ours now
    picky.core.rewant(net.now)
    assert net.run_until(lambda: set(history[5:]) <= set(picky.received), net.now + 30)
    net.run(net.now + 3)
    assert set(picky.received) == set(history[5:])
    picky.core.set_wants(None, net.now)  # no predicate: the SubMesh default, everything
    assert net.run_until(lambda: set(history) <= set(picky.received), net.now + 30)
    assert picky.duplicates == 0
