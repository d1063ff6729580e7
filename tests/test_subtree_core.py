"""The SubTree single-source rule (Q.4100 §6), enforced by the tree core itself.

Because the rule lives in the core, the simulator applies it exactly as a daemon does: only the
overlay's source peer may publish, and data of any other source is neither delivered nor
relayed, only counted.
"""

from __future__ import annotations

import pytest

from hp2p.peer.control import JoinInfo
from hp2p.peer.effects import Deliver, Send
from hp2p.peer.errors import NotSourceError
from hp2p.peer.paths import Link, Role
from hp2p.sim.network import MemoryHoms, Network
from hp2p.wire.r2.messages import BroadcastData
from test_peer_core import OV, core, of


def test_data_of_another_source_is_neither_delivered_nor_relayed_but_counted() -> None:
    c = core("member")
    c.start(JoinInfo(OV, 5, root=True, source_peer_id="src"), 0.0)
    c.take_effects()
    c.paths.add(Link(7, Role.PARENT, peer_id="up", ticket=1, last_rx=0.0))
    c.paths.add(Link(8, Role.CHILD, peer_id="down", ticket=9, last_rx=0.0))
    c.receive(7, BroadcastData(source="forger", sequence=1, data=b"x"), 1.0)
    assert of(c.take_effects(), Deliver) == []
    assert c.counters.foreign_dropped == 1
    c.receive(7, BroadcastData(source="src", sequence=1, data=b"y"), 1.1)
    out = c.take_effects()
    assert [d.data for d in of(out, Deliver)] == [b"y"]
    assert of(out, Send)[0].conns == (8,)


def test_only_the_source_may_publish() -> None:
    c = core("member")
    c.start(JoinInfo(OV, 5, root=True, source_peer_id="src"), 0.0)
    with pytest.raises(NotSourceError, match="only the source peer 'src'"):
        c.publish(b"nope", 1.0)
    assert c.counters.published == 0


def test_a_simulated_subtree_carries_only_its_source() -> None:
    net = Network(seed=3, homs=MemoryHoms(source_peer_id="src"))
    net.at(0.0, lambda: net.add_peer("src"))
    for i in range(12):
        net.at(0.1 + 0.1 * i, net.add_peer)
    net.run(6.0)
    assert len(net.roots()) == 1
    sent = [net.publish("src", f"m{k}".encode()) for k in range(5)]
    with pytest.raises(NotSourceError):
        net.publish("p00002", b"not the source")
    net.run(net.now + 2.0)
    for peer in net.alive():
        if peer.peer_id != "src":
            assert [peer.received.get(("src", s)) for s in sent] == [1] * 5
            assert not [k for k in peer.received if k[0] != "src"]
