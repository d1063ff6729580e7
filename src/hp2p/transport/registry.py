"""Which transport reaches an address: a registry keyed by address scheme.

The sans-IO cores address peers by peer-id; a ``Connect`` effect names the peer and the
addresses it advertised. The shell turns that into a link by asking this registry: each
scheme (``tcp``, ``tls``; ``ws``/``wss`` for WebRTC, dialled by peer-id through the HOMS
signalling relay whose URL the peer advertised) has one dialer, and the addresses are tried in
the order the peer gave them, skipping those whose scheme no transport here serves. A new
transport is one :meth:`TransportRegistry.register` call (or
:meth:`TransportRegistry.register_peer_dialer` when it needs the peer-id); neither the cores
nor the shells change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from hp2p.transport import tcp
from hp2p.transport.base import Link, LinkEvents
from hp2p.transport.limits import R2Budget

#: ``dial(address, events, max_queue_bytes)``: open a link or raise OSError / ValueError.
Dialer = Callable[[str, LinkEvents, int], Awaitable[Link]]
#: ``dial(peer_id, address, events, max_queue_bytes)``: the same for a transport that reaches
#: a peer by its peer-id (WebRTC: the address names the signalling relay, not the peer).
PeerDialer = Callable[[str, str, LinkEvents, int], Awaitable[Link]]


class NoTransportError(ValueError):
    """None of a peer's addresses has a scheme that a registered transport serves."""


def scheme_of(address: str) -> str:
    """``tcp`` for ``tcp://host:port``; an address without ``://`` has the scheme ``""``."""
    head, sep, _ = address.partition("://")
    return head.lower() if sep else ""


class TransportRegistry:
    """Dialers by address scheme; see the module docstring."""

    def __init__(self) -> None:
        self._dialers: dict[str, PeerDialer] = {}

    def register(self, scheme: str, dialer: Dialer) -> None:
        """``dialer`` opens links to addresses of ``scheme`` (the peer-id is not needed)."""

        async def by_address(_peer_id: str, address: str, events: LinkEvents, queue: int) -> Link:
            return await dialer(address, events, queue)

        self._dialers[scheme.lower()] = by_address

    def register_peer_dialer(self, scheme: str, dialer: PeerDialer) -> None:
        """``dialer`` reaches the peer named by the ``Connect`` effect (WebRTC)."""
        self._dialers[scheme.lower()] = dialer

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(self._dialers)

    def usable(self, addresses: Sequence[str]) -> list[str]:
        """The addresses some registered transport can dial, in the peer's order."""
        return [a for a in addresses if scheme_of(a) in self._dialers]

    async def dial(
        self, peer_id: str, addresses: Sequence[str], events: LinkEvents, max_queue_bytes: int
    ) -> tuple[Link, str]:
        """A link to ``peer_id`` through the first of its addresses that answers."""
        usable = self.usable(addresses)
        if not usable:
            raise NoTransportError(
                f"no transport for peer {peer_id!r} at {list(addresses)}: this peer dials "
                f"{', '.join(s + '://' for s in self._dialers) or 'nothing'}"
            )
        last: Exception | None = None
        for address in usable:
            try:
                dialer = self._dialers[scheme_of(address)]
                link = await dialer(peer_id, address, events, max_queue_bytes)
            except (OSError, TimeoutError, ValueError) as exc:
                last = exc
                continue
            return link, address
        assert last is not None
        raise last


def tcp_dialer(budget: R2Budget | None = None) -> Dialer:
    """The TCP dialer; with ``budget`` the links it opens share the process's R2 limits."""

    async def dial(address: str, events: LinkEvents, max_queue_bytes: int) -> Link:
        return await tcp.connect(address, events, max_queue_bytes=max_queue_bytes, budget=budget)

    return dial


def default_registry(budget: R2Budget | None = None) -> TransportRegistry:
    """The transports every hp2p peer has: plain TCP and TLS over TCP (``tls://``), both
    charged to ``budget`` when given."""
    registry = TransportRegistry()
    registry.register("tcp", tcp_dialer(budget))
    registry.register("tls", tcp_dialer(budget))  # TLS 1.3 over TCP: tcp.connect tells them apart
    return registry
