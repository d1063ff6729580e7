"""Hypothesis stateful test: random joins, publishes, leaves, crashes and time steps.

Always: the tree is loop-free and no peer hands any message to its application twice.
After the network settles: one tree with every live peer attached, and every message published
from then on reaches every live peer exactly once.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hp2p.peer.config import PeerConfig
from hp2p.sim.network import Network

MAX_PEERS = 14
SETTLE = 25.0  # virtual seconds: bounded retries, then a rejoin with a fresh ticket


class TreeMachine(RuleBasedStateMachine):
    net: Network

    @initialize(seed=st.integers(min_value=0, max_value=10_000))
    def start(self, seed: int) -> None:
        config = PeerConfig(max_children=3, max_outgoing_candidates=2)
        self.net = Network(seed=seed, config=config, latency=(0.001, 0.02))
        self.net.add_peer()

    def names(self) -> list[str]:
        return sorted(p.peer_id for p in self.net.alive())

    @precondition(lambda self: len(self.net.alive()) < MAX_PEERS)
    @rule()
    def join(self) -> None:
        self.net.add_peer()

    @rule(pick=st.integers(min_value=0, max_value=MAX_PEERS), size=st.integers(0, 2000))
    def publish(self, pick: int, size: int) -> None:
        names = self.names()
        self.net.publish(names[pick % len(names)], b"d" * size)

    @precondition(lambda self: len(self.net.alive()) > 1)
    @rule(pick=st.integers(min_value=0, max_value=MAX_PEERS))
    def leave(self, pick: int) -> None:
        names = self.names()
        self.net.leave(names[pick % len(names)])

    @precondition(lambda self: len(self.net.alive()) > 1)
    @rule(pick=st.integers(min_value=0, max_value=MAX_PEERS), hang=st.booleans())
    def crash(self, pick: int, hang: bool) -> None:
        names = self.names()
        self.net.crash(names[pick % len(names)], hang=hang)

    @rule(dt=st.floats(min_value=0.001, max_value=4.0))
    def advance(self, dt: float) -> None:
        self.net.run(self.net.now + dt)

    @rule()
    def settle_and_broadcast(self) -> None:
        net = self.net
        net.run(net.now + SETTLE)
        alive = net.alive()
        assert all(p.core.attached for p in alive), [
            (p.peer_id, p.core.phase.value) for p in alive if not p.core.attached
        ]
        assert len(net.roots()) == 1
        assert None not in net.depths().values()
        sources = self.names()[:3]
        sent = [(s, net.publish(s, s.encode())) for s in sources]
        net.run(net.now + 3.0)
        for peer in net.alive():
            for source, seq in sent:
                if source != peer.peer_id:
                    assert peer.received.get((source, seq)) == 1, (peer.peer_id, source, seq)

    @invariant()
    def loop_free(self) -> None:
        assert self.net.loop_free()

    @invariant()
    def exactly_once(self) -> None:
        for peer in self.net.peers.values():
            assert all(count == 1 for count in peer.received.values()), peer.peer_id

    def teardown(self) -> None:
        if hasattr(self, "net") and self.net.alive():
            self.settle_and_broadcast()


TreeMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, print_blob=True
)
test_tree_machine = TreeMachine.TestCase
