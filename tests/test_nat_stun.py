"""The NAT types of ``tests/netns.py``, seen by coturn's STUN (what WebRTC's ICE relies on).

One UDP socket asks two server addresses for its mapped address (RFC 5389 Binding): behind
the cone NAT it gets one public endpoint whatever the destination (endpoint-independent
mapping, and Linux keeps the port), behind the symmetric NAT one per destination. TURN works
with the static long-term credential of the generated coturn config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netns import TURN_PASSWORD, TURN_USER, Coturn, Topology, TopologyError, why_no_coturn

pytestmark = [pytest.mark.slow, pytest.mark.nat]


@pytest.fixture
def coturn(nat_net: Topology, tmp_path: Path) -> Coturn:
    why = why_no_coturn()
    if why:
        pytest.skip(why)
    return nat_net.start_coturn(tmp_path)  # stopped with the topology


def test_the_cone_nat_maps_a_socket_to_one_public_endpoint(
    nat_net: Topology, coturn: Coturn
) -> None:
    cone = nat_net.nats["cone"]
    for home, port in ((cone.homes[0], 40000), (cone.homes[1], 40001)):
        seen = nat_net.stun(home.ns, coturn.servers, local_port=port)
        assert seen == [(cone.wan_ip, port), (cone.wan_ip, port)], (home.name, seen)


def test_the_symmetric_nat_maps_each_destination_apart(nat_net: Topology, coturn: Coturn) -> None:
    sym = nat_net.nats["sym"]
    first, second = nat_net.stun(sym.homes[0].ns, coturn.servers, local_port=40000)
    assert first[0] == second[0] == sym.wan_ip
    assert first[1] != second[1], "a symmetric NAT gives each destination its own mapping"


def test_a_public_host_is_seen_as_itself(nat_net: Topology, coturn: Coturn) -> None:
    seen = nat_net.stun(nat_net.public_ns, coturn.servers, local_port=40000)
    public = {nat_net.public_ip, nat_net.public_ip2}
    assert all(host in public and port == 40000 for host, port in seen), seen  # no NAT


def test_turn_allocates_a_relay_for_a_home_behind_the_symmetric_nat(
    nat_net: Topology, coturn: Coturn
) -> None:
    home = nat_net.nats["sym"].homes[0]
    host, port = nat_net.turn(home.ns, coturn.servers[0], TURN_USER, TURN_PASSWORD)
    assert host == nat_net.public_ip
    assert 49152 <= port <= 49999
    with pytest.raises(TopologyError, match="Allocate refused"):
        nat_net.turn(home.ns, coturn.servers[0], TURN_USER, "wrong")


def test_turn_relays_relay_to_relay_for_a_home_behind_the_symmetric_nat(
    nat_net: Topology, coturn: Coturn
) -> None:
    """Relay to relay (what ICE falls back to between two symmetric NATs), without aioice:
    two allocations made from behind the symmetric NAT exchange data both ways."""
    home = nat_net.nats["sym"].homes[0]
    result = nat_net.turn_relay(home.ns, coturn.servers[0])
    (ra, rb) = result["relays"]
    assert result["b_got"] == [ra, "a to b"]
    assert result["a_got"] == [rb, "b to a"]
    assert result["b_got_channel"] == [ra, "a to b on a channel"]


def test_turn_refuses_to_relay_to_a_private_address(nat_net: Topology, coturn: Coturn) -> None:
    """The generated config denies private peer ranges (``netns.DENIED_PEER_RANGES``, as
    docs/deploy.md recommends): a ChannelBind to another home's private address is refused, so
    coturn never sends there, and the allocation keeps working for public peers."""
    home, other = nat_net.nats["sym"].homes[0], nat_net.nats["cone"].homes[0]
    code = (
        "import json, netns\n"
        f"c = netns.TurnClient({coturn.servers[0]!r}, netns.TURN_USER, netns.TURN_PASSWORD)\n"
        "c.allocate()\n"
        "out = {}\n"
        "try:\n"
        f"    c.channel_bind(0x4000, ({other.ip!r}, 40000))\n"
        "    out['private'] = 'bound'\n"
        "except ValueError as exc:\n"
        "    out['private'] = str(exc)\n"
        f"c.channel_bind(0x4001, ({nat_net.public_ip2!r}, 40001))\n"
        "out['public'] = 'bound'\n"
        "print(json.dumps(out))\n"
    )
    result = json.loads(nat_net.python(home.ns, code))
    assert result["private"].startswith("ChannelBind refused: 403"), result
    assert result["public"] == "bound", result
