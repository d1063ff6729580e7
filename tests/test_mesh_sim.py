"""SubMesh behaviour in the deterministic in-memory harness (``hp2p.sim.mesh``)."""

from __future__ import annotations

import hashlib
import random

import msgspec
import pytest

from hp2p.peer.effects import Close, Send
from hp2p.peer.mesh import MeshCore, MeshJoinInfo, NotSourceError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_objects import make_object, sequence_of, split_sequence
from hp2p.peer.mesh_store import DiskPieceStore
from hp2p.sim.mesh import MeshNetwork
from hp2p.wire.r2.messages import (
    BuffermapEntry,
    BuffermapResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    Hello,
    HelloExt,
    HelloResponse,
    Release,
)

MiB = 1 << 20
BANDWIDTH = 12.5e6  # 100 Mbit/s uplinks: a transfer takes long enough to fail in the middle


def _mesh(peers: int, seed: int = 1, **kwargs) -> MeshNetwork:
    net = MeshNetwork(seed=seed, bandwidth=BANDWIDTH, **kwargs)
    net.add_peer("source")
    for _ in range(peers):
        net.add_peer()
    net.run(1.0)
    return net


def _blob(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def test_one_mib_reaches_50_peers_verified_once_with_low_amplification():
    net = _mesh(50)
    data = _blob(MiB)
    wire_before = net.bytes_on_wire
    obj = net.publish(data, app_id="blockchain", meta={"height": 12})
    assert net.run_until(lambda: net.all_have(obj), deadline=net.now + 20)
    digest = hashlib.sha256(data).hexdigest()
    for peer in net.receivers():
        assert hashlib.sha256(peer.data[obj]).hexdigest() == digest
        assert peer.duplicates == 0
        assert peer.core.counters.forged == 0
    amplification = (net.bytes_on_wire - wire_before) / (50 * MiB)
    assert 1.0 < amplification < 1.3


def test_every_piece_is_pulled_from_several_neighbours_not_only_the_source():
    net = _mesh(30)
    obj = net.publish(_blob(MiB))
    assert net.run_until(lambda: net.all_have(obj), deadline=net.now + 20)
    source = net.peers["source"].core.counters.pieces_served
    served_by_others = sum(p.core.counters.pieces_served for p in net.receivers())
    assert served_by_others > 2 * source  # the mesh, not the source, does most of the work


def test_forged_pieces_are_detected_refetched_and_the_forger_banned():
    net = _mesh(20)
    forger = next(p for p in net.receivers() if "source" in p.core.neighbours)

    def corrupt(message):
        if (
            isinstance(message, GetDataResponse)
            and message.data
            and split_sequence(message.sequence)[1]
        ):
            return msgspec.structs.replace(message, data=b"\x00" + message.data[1:])
        return message

    net.tamper[forger.peer_id] = corrupt
    data = _blob(MiB)
    obj = net.publish(data)
    honest = [p for p in net.receivers() if p is not forger]
    assert net.run_until(lambda: net.all_have(obj, honest), deadline=net.now + 30)
    assert all(p.data[obj] == data for p in honest)
    victims = [p for p in honest if p.core.counters.forged > 0]
    assert victims, "the forger served nobody: the test proves nothing"
    assert all(forger.peer_id not in p.core.neighbours for p in victims if p.core.counters.banned)
    assert any(p.core.counters.banned for p in victims)


def test_a_forged_manifest_is_refused_and_fetched_elsewhere():
    net = _mesh(12)
    forger = next(p for p in net.receivers() if "source" in p.core.neighbours)

    def lie(message):
        if isinstance(message, GetDataResponse) and split_sequence(message.sequence)[1] == 0:
            return msgspec.structs.replace(message, data=b'{"object": 1}')
        return message

    net.tamper[forger.peer_id] = lie
    data = _blob(200_000)
    obj = net.publish(data)
    honest = [p for p in net.receivers() if p is not forger]
    assert net.run_until(lambda: net.all_have(obj, honest), deadline=net.now + 30)
    assert all(p.data[obj] == data for p in honest)


def test_twenty_percent_killed_mid_transfer_the_rest_complete():
    net = _mesh(50, seed=3)
    data = _blob(MiB)
    obj = net.publish(data)
    net.run(net.now + 0.15)  # in the middle: nobody has everything yet
    assert not any(obj in p.received for p in net.receivers())
    victims = random.Random(5).sample([p.peer_id for p in net.receivers()], 10)
    for name in victims:
        net.crash(name)
    survivors = net.receivers()
    assert len(survivors) == 40
    assert net.run_until(lambda: net.all_have(obj, survivors), deadline=net.now + 30)
    assert all(p.data[obj] == data for p in survivors)


def test_a_late_joiner_gets_the_history_from_the_store():
    net = _mesh(15)
    blobs = [_blob(300_000, seed=s) for s in range(3)]
    objects = [net.publish(b, meta={"n": i}) for i, b in enumerate(blobs)]
    assert net.run_until(lambda: all(net.all_have(o) for o in objects), deadline=net.now + 20)
    late = net.add_peer("late")
    assert net.run_until(lambda: all(o in late.received for o in objects), deadline=net.now + 20)
    assert [late.data[o] for o in objects] == blobs
    assert late.core.manifest(objects[1]).meta == {"n": 1}


def test_only_the_source_may_publish():
    net = _mesh(3)
    receiver = net.receivers()[0]
    with pytest.raises(NotSourceError, match="only the source peer 'source'"):
        receiver.core.publish(b"x", net.now)
    with pytest.raises(ValueError, match="max_object_size"):
        net.peers["source"].core.publish(b"x" * (MeshConfig().max_object_size + 1), net.now)


def test_requests_in_flight_stay_bounded():
    config = MeshConfig(max_requests=5, max_requests_per_neighbour=2)
    net = _mesh(20, config=config)
    obj = net.publish(_blob(MiB))
    worst_total = worst_link = 0

    def check() -> bool:
        nonlocal worst_total, worst_link
        for p in net.alive():
            worst_total = max(worst_total, p.core.status()["requests-in-flight"])
            worst_link = max([worst_link, *(x.inflight for x in p.core.links.neighbours.values())])
        return net.all_have(obj)

    assert net.run_until(check, deadline=net.now + 30, step=0.005)
    assert 0 < worst_total <= 5
    assert 0 < worst_link <= 2


def test_the_store_is_bounded_and_evicted_objects_are_not_fetched_again():
    config = MeshConfig(store_objects=2, piece_size=16_384)
    net = _mesh(8, config=config)
    objects = []
    for i in range(4):
        objects.append(net.publish(_blob(50_000, seed=i)))
        assert net.run_until(lambda: net.all_have(objects[-1]), deadline=net.now + 10)
    for peer in net.alive():
        assert peer.core.objects() == objects[-2:]
    late = net.add_peer("late")
    assert net.run_until(lambda: set(objects[-2:]) <= set(late.received), deadline=net.now + 10)
    net.run(net.now + 2)
    assert set(late.received) == set(objects[-2:])
    assert late.core.counters.misses == 0


def test_a_disk_store_survives_a_restart_and_drops_damaged_pieces(tmp_path):
    net = _mesh(4)
    store = DiskPieceStore(tmp_path / "p")
    keeper = net.add_peer("keeper", store=store)
    data = _blob(100_000)
    obj = net.publish(data)
    assert net.run_until(lambda: obj in keeper.received, deadline=net.now + 10)
    restarted = MeshCore(MeshConfig(), "keeper2", "mem://k2", random.Random(1), store=store)
    restarted.start(MeshJoinInfo("sim-mesh", "source", 99, ()), 0.0)
    assert restarted.read_object(obj) == data
    (tmp_path / "p" / str(obj) / "2").write_bytes(b"rot")
    again = MeshCore(MeshConfig(), "keeper3", "mem://k3", random.Random(1), store=store)
    again.start(MeshJoinInfo("sim-mesh", "source", 99, ()), 0.0)
    assert not again.holds(obj)
    assert sequence_of(obj, 2) not in again.holdings.have
    assert sequence_of(obj, 1) in again.holdings.have


def test_a_standby_takes_over_when_the_source_dies_and_numbering_continues():
    config = MeshConfig(takeover_after=1.0)
    net = MeshNetwork(seed=2, bandwidth=BANDWIDTH, config=config)
    net.add_peer("source")
    standby = net.add_peer("standby", standby=True)
    for _ in range(10):
        net.add_peer()
    net.run(1.0)
    first = net.publish(_blob(100_000))
    assert net.run_until(lambda: net.all_have(first), deadline=net.now + 10)
    net.crash("source")
    assert net.run_until(lambda: standby.became_source is not None, deadline=net.now + 10)
    assert standby.became_source == first + 1
    second = net.publish(_blob(100_000, seed=9), peer_id="standby")
    assert second == first + 1
    others = [p for p in net.receivers() if p is not standby]
    assert net.run_until(lambda: net.all_have(second, others), deadline=net.now + 10)


def test_peers_ask_the_homs_again_below_the_low_water_mark():
    net = _mesh(30, seed=4, homs_expiry=0.5)
    obj = net.publish(_blob(200_000))
    assert net.run_until(lambda: net.all_have(obj), deadline=net.now + 10)
    victims = random.Random(1).sample([p.peer_id for p in net.receivers()], 18)
    survivors = [p for p in net.alive() if p.peer_id not in victims]
    before = sum(p.core.counters.peer_list_requests for p in survivors)
    for name in victims:
        net.crash(name)
    net.run(net.now + 8)
    after = sum(p.core.counters.peer_list_requests for p in survivors)
    assert after > before
    assert all(len(p.core.neighbours) >= MeshConfig().low_water for p in net.alive())


def test_same_seed_same_trace():
    def trace() -> list[float]:
        net = _mesh(20, seed=11)
        obj = net.publish(_blob(MiB))
        net.run_until(lambda: net.all_have(obj), deadline=net.now + 20)
        return [p.received[obj] for p in net.receivers()]

    assert trace() == trace()


def test_bad_input_is_refused_with_a_reason_and_never_raises():
    core = MeshCore(MeshConfig(), "me", "mem://me", random.Random(0))
    core.start(MeshJoinInfo("ov", "src", 1, ()), 0.0)
    conn = core.accept(0.0)
    core.receive(conn, GetData("ov", "src", 65536), 0.1)  # before HELLO
    effects = core.take_effects()
    assert any(isinstance(e, Close) and e.conn == conn for e in effects)
    assert core.counters.protocol_errors == 1
    conn = core.accept(0.2)
    core.receive(conn, Hello("other", "x", "mem://x", 1, hp2p=HelloExt(mesh=1)), 0.3)
    sent = [e.message for e in core.take_effects() if isinstance(e, Send)]
    assert isinstance(sent[0], Release)
    assert "overlay" in (sent[0].hp2p.reason or "")
    conn = core.accept(0.4)
    core.receive(conn, Hello("ov", "x", "mem://x", 1, hp2p=HelloExt(mesh=1)), 0.5)
    assert any(
        isinstance(e, Send) and isinstance(e.message, HelloResponse) for e in core.take_effects()
    )
    # an unsolicited piece and a piece of another source change nothing
    core.receive(conn, GetDataResponse("src", 65537, b"junk"), 0.6)
    assert core.counters.unsolicited == 1
    assert core.objects() == []


def test_a_long_history_is_pulled_through_a_bounded_window_without_starving_live_data():
    config = MeshConfig(fetch_window=3, piece_size=4096)
    net = _mesh(6, config=config)
    history = [net.publish(_blob(10_000, seed=s)) for s in range(40)]
    assert net.run_until(lambda: net.all_have(history[-1]), deadline=net.now + 30)
    late = net.add_peer("late")
    net.run(net.now + 0.02)
    live = net.publish(_blob(10_000, seed=99))
    assert net.run_until(lambda: live in late.received, deadline=net.now + 10)
    assert len(late.received) < len(history)  # live data did not wait for the whole history
    assert net.run_until(lambda: set(history) <= set(late.received), deadline=net.now + 60)
    assert late.duplicates == 0


def _linked_core(config: MeshConfig) -> tuple[MeshCore, int]:
    core = MeshCore(config, "me", "mem://me", random.Random(0))
    core.start(MeshJoinInfo("ov", "src", 1, ()), 0.0)
    conn = core.accept(0.0)
    core.receive(conn, Hello("ov", "liar", "mem://liar", 2, hp2p=HelloExt(mesh=1)), 0.1)
    core.take_effects()
    return core, conn


def test_a_flood_of_announcements_is_bounded_and_reported():
    core, conn = _linked_core(MeshConfig(max_announced=5))
    flood = [sequence_of(1, i) for i in range(50)]
    core.receive(conn, BuffermapResponse("ov", [BuffermapEntry("src", flood)]), 0.2)
    assert len(core.links.neighbours["liar"].have) == 5
    assert core.counters.protocol_errors == 1
    assert any(
        "announced more than 5" in e.reason for e in core.take_effects() if hasattr(e, "reason")
    )


def test_pieces_an_object_does_not_have_are_never_requested():
    core, conn = _linked_core(MeshConfig())
    manifest, _ = make_object(1, b"x" * 100, 64)  # two pieces
    announced = [sequence_of(1, 0), sequence_of(1, 1), sequence_of(1, 2), sequence_of(1, 9)]
    core.receive(conn, BuffermapResponse("ov", [BuffermapEntry("src", announced)]), 0.2)
    core.receive(conn, GetDataResponse("src", sequence_of(1, 0), manifest.encode()), 0.3)
    asked = [
        e.message.sequence
        for e in core.take_effects()
        if isinstance(e, Send) and isinstance(e.message, GetData)
    ]
    # the manifest first, then only the two pieces it lists; never the announced piece 9
    assert asked[0] == sequence_of(1, 0)
    assert sorted(asked[1:]) == [sequence_of(1, 1), sequence_of(1, 2)]


def test_a_neighbour_that_never_answers_costs_a_time_out_then_pieces_come_from_others():
    net = _mesh(12)
    silent = next(p for p in net.receivers() if "source" in p.core.neighbours)
    # it keeps its links alive but swallows every piece it was asked for
    net.tamper[silent.peer_id] = lambda m: Heartbeat() if isinstance(m, GetDataResponse) else m
    data = _blob(MiB)
    obj = net.publish(data)
    others = [p for p in net.receivers() if p is not silent]
    assert net.run_until(lambda: net.all_have(obj, others), deadline=net.now + 30)
    assert all(p.data[obj] == data for p in others)
    assert sum(p.core.counters.timeouts for p in others) > 0


def test_objects_asked_for_first_are_pulled_before_a_long_backfill():
    config = MeshConfig(fetch_window=3, piece_size=4096)
    net = _mesh(6, config=config)
    history = [net.publish(_blob(10_000, seed=s)) for s in range(40)]
    assert net.run_until(lambda: net.all_have(history[-1]), deadline=net.now + 30)
    late = net.add_peer("late")
    wanted = history[25:27]
    late.core.prioritise(wanted, net.now)
    assert net.run_until(lambda: set(wanted) <= set(late.received), deadline=net.now + 30)
    assert len(late.received) < len(history) // 2  # not after the backfill
    late.core.prioritise([], net.now)
    assert net.run_until(lambda: set(history) <= set(late.received), deadline=net.now + 60)
    assert late.duplicates == 0


def test_objects_forgotten_below_a_floor_are_dropped_and_never_fetched_again():
    net = _mesh(4, config=MeshConfig(piece_size=4096))
    history = [net.publish(_blob(10_000, seed=s)) for s in range(6)]
    assert net.run_until(lambda: net.all_have(history[-1]), deadline=net.now + 30)
    keeper = net.receivers()[0]
    assert keeper.core.forget_below(history[3], net.now) == 3
    assert keeper.core.objects() == history[3:]
    net.run(net.now + 25)  # full buffermap refreshes from every neighbour meanwhile
    assert keeper.core.objects() == history[3:]
    assert all(split_sequence(r)[0] >= history[3] for r in keeper.core.pull.requests)
