"""Many sans-IO cores on the deterministic in-memory network: trees, delivery, repair."""

from __future__ import annotations

from hp2p.peer.effects import Effect, HomsRecoveryJoin, Joined, ScanResult
from hp2p.sim.network import Network, SimPeer


def build(n: int, seed: int = 1, gap: float = 0.2, **kw: object) -> Network:
    net = Network(seed=seed, **kw)  # type: ignore[arg-type]
    for i in range(n):
        net.at(i * gap, net.add_peer)
    net.run(n * gap + 5.0)
    return net


def assert_one_tree(net: Network) -> dict[str, int]:
    assert net.loop_free()
    assert len(net.roots()) == 1
    depths = net.depths()
    assert all(p.core.attached for p in net.alive())
    assert None not in depths.values()
    return {k: v for k, v in depths.items() if v is not None}


def publish_and_check(net: Network, sources: list[str], count: int = 5) -> None:
    sent = {s: [net.publish(s, f"{s}-{k}".encode()) for k in range(count)] for s in sources}
    net.run(net.now + 2.0)
    for peer in net.alive():
        for source, seqs in sent.items():
            if source == peer.peer_id:
                continue
            for seq in seqs:
                assert peer.received.get((source, seq)) == 1, (peer.peer_id, source, seq)
    assert all(not p.errors for p in net.alive())


def test_thirty_peers_form_one_shallow_tree_and_deliver_exactly_once() -> None:
    net = build(30)
    depths = assert_one_tree(net)
    assert max(depths.values()) <= 3  # 1 + 4 + 16 + 64 ≥ 30
    assert all(p.core.paths.children <= 4 for p in net.alive())
    publish_and_check(net, ["p00001", "p00013", "p00030"])


def test_hundred_sequential_joins_stay_close_to_log4() -> None:
    net = build(100, seed=2, gap=0.5)
    depths = assert_one_tree(net)
    deepest = max(depths.values())
    print(f"N=100 max_children 4: max depth {deepest}, mean {sum(depths.values()) / 100:.2f}")
    assert deepest <= 5  # log4(100) ≈ 3.3; the minimum for 100 peers is 4
    publish_and_check(net, ["p00001", "p00050", "p00100"], count=3)


def test_fast_joins_all_attach() -> None:
    net = build(200, seed=3, gap=0.01)
    net.run(net.now + 20.0)  # stragglers rejoin with a fresh ticket after JoinFailed
    depths = assert_one_tree(net)
    assert max(depths.values()) <= 7
    publish_and_check(net, ["p00002", "p00150"], count=2)


def inner_peer(net: Network) -> SimPeer:
    depths = net.depths()
    best = max(
        (p for p in net.alive() if depths[p.peer_id] == 1), key=lambda p: p.core.paths.children
    )
    assert best.core.paths.children > 0
    return best


def test_children_of_a_crashed_parent_reattach_through_candidate_paths() -> None:
    asked_homs: list[str] = []

    def watch(peer: SimPeer, effect: Effect, now: float) -> None:
        if isinstance(effect, HomsRecoveryJoin):
            asked_homs.append(peer.peer_id)

    net = build(40, seed=4, on_effect=watch)
    victim = inner_peer(net)
    orphans = {p.peer_id for p in net.alive() if p.core.parent == victim.peer_id}
    asked_homs.clear()
    net.crash(victim.peer_id)
    net.run(net.now + 1.0)
    for name in orphans:
        core = net.peers[name].core
        assert core.attached
        assert core.parent != victim.peer_id
        assert core.counters.repairs == 1
    assert not set(asked_homs) & orphans  # candidate paths sufficed, no HOMS round trip
    assert_one_tree(net)
    publish_and_check(net, ["p00001", sorted(orphans)[0]])


def test_a_hung_parent_is_found_by_heartbeats() -> None:
    net = build(30, seed=5)
    victim = inner_peer(net)
    orphans = [p for p in net.alive() if p.core.parent == victim.peer_id]
    t0 = net.now
    net.crash(victim.peer_id, hang=True)  # no connection is reset: only silence
    cfg = net.config
    # the last frame came at most one heartbeat interval before the hang
    net.run(t0 + cfg.heartbeat_timeout - cfg.heartbeat_interval - 0.1)
    assert all(p.core.parent == victim.peer_id for p in orphans)
    net.run(t0 + cfg.heartbeat_timeout + 0.5)
    assert all(p.core.attached and p.core.parent != victim.peer_id for p in orphans)
    assert_one_tree(net)
    publish_and_check(net, [orphans[0].peer_id])


def test_graceful_leave_of_an_inner_peer_and_of_the_root() -> None:
    net = build(40, seed=6)
    net.leave(inner_peer(net).peer_id)
    net.run(net.now + 3.0)
    assert_one_tree(net)
    net.leave("p00001")
    net.run(net.now + 10.0)
    assert_one_tree(net)
    assert net.roots() != ["p00001"]
    publish_and_check(net, [net.alive()[0].peer_id, net.alive()[-1].peer_id])


def test_scan_tree_finds_every_peer() -> None:
    results: list[ScanResult] = []

    def watch(peer: SimPeer, effect: Effect, now: float) -> None:
        if isinstance(effect, ScanResult):
            results.append(effect)

    net = build(25, seed=7, on_effect=watch)
    leaf = next(p for p in net.alive() if p.core.paths.children == 0)
    cseq = net.scan_tree(leaf.peer_id)
    net.run(net.now + net.config.scan_timeout + 0.1)
    assert len(results) == 1
    assert results[0].cseq == cseq
    seen = {hop[0] for path in results[0].paths for hop in path.hops}
    assert seen | {leaf.peer_id} == {p.peer_id for p in net.alive()}
    leaves = {p.peer_id for p in net.alive() if len(p.core.paths.primary) == 1} - {leaf.peer_id}
    assert {path.hops[-1][0] for path in results[0].paths} == leaves


def trace(seed: int) -> list[tuple[float, str, str]]:
    events: list[tuple[float, str, str]] = []

    def watch(peer: SimPeer, effect: Effect, now: float) -> None:
        if isinstance(effect, Joined):
            events.append((now, peer.peer_id, str(effect.parent)))

    build(20, seed=seed, on_effect=watch)
    return events


def test_same_seed_same_trace() -> None:
    first = trace(11)
    assert first == trace(11)
    assert first != trace(12)


def test_messages_survive_a_codec_round_trip() -> None:
    net = build(15, seed=8, codec=True)
    assert_one_tree(net)
    publish_and_check(net, ["p00001", "p00015"])


def test_measure_reports_the_tree_shape() -> None:
    from hp2p.sim.measure import tree_shape

    shape = tree_shape(21, seed=9, join_gap=0.5)
    assert shape.roots == 1
    assert shape.unattached == 0
    assert shape.max_depth == 2  # 1 + 4 + 16 = 21 peers fit exactly in two levels below the root
