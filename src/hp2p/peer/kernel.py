"""The plumbing every sans-IO peer core shares: connection ids, timers, effects, errors.

The tree core (CoreTree, SubTree: :class:`hp2p.peer.core.PeerCore`) and the mesh core
(SubMesh: :class:`hp2p.peer.mesh.MeshCore`) decide very different things, but they are driven
the same way (``(input, now)`` in, effects out) and the shell (:mod:`hp2p.peer.shell`), the
simulator and the tests drive both through this one contract. Written once here:

* **connection ids** — the core allocates an id for every connection it opens (``Connect``)
  and every connection the shell accepts, so a connection is known before any byte arrives;
* **the effect queue** — one list, drained in order by :meth:`Kernel.take_effects`. Its
  identity never changes, so the hot path may hold it in a local;
* **named timers** — :class:`hp2p.peer.timers.Timers`, one live deadline per name;
* **protocol errors** — a peer that misbehaves becomes a counted ``ProtocolError`` effect,
  never an exception out of the core;
* **peers addressed by peer-id** — ``Connect`` names the peer and its advertised addresses;
  which transport reaches it is the shell's business (its registry keyed by address scheme);
* **admission** — :class:`hp2p.peer.admission.Admission`: on an overlay that requires
  credentials, a link carries nothing but AUTH until the peer behind it proved membership.

Nothing here imports asyncio, sockets or a clock: ``tests/test_core_rules.py`` enforces it
for every core module.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from hp2p.peer.admission import Admission
from hp2p.peer.effects import Close, Connect, ProtocolError, Send
from hp2p.peer.timers import Timers
from hp2p.wire.r2.messages import Message


class ErrorCounter(Protocol):
    """Whatever counters object a core keeps: the kernel counts protocol errors into it."""

    protocol_errors: int


class Kernel:
    """Base of both cores: see the module docstring."""

    def __init__(
        self, peer_id: str, address: str, rng: random.Random, counters: ErrorCounter
    ) -> None:
        self.peer_id = peer_id
        self.address = address
        self.rng = rng
        self.effects: list[Any] = []
        self.timers = Timers()
        self._error_counter = counters
        self._next_conn = 0
        self.admission = Admission(self)

    def take_effects(self) -> list[Any]:
        """Everything decided since the last call, in order."""
        effects = self.effects[:]
        self.effects.clear()
        return effects

    def new_conn(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def connect(self, conn: int, peer_id: str, addresses: Sequence[str]) -> None:
        """Ask the shell to reach ``peer_id`` at one of ``addresses`` as connection ``conn``."""
        self.effects.append(Connect(conn, peer_id, tuple(addresses)))

    def send(self, conns: tuple[int, ...], message: Message) -> None:
        self.effects.append(Send(conns, message))

    def close(self, conn: int) -> None:
        self.effects.append(Close(conn))

    def error(self, conn: int | None, reason: str) -> None:
        """A peer sent something it should not have: counted and reported, never raised."""
        self._error_counter.protocol_errors += 1
        self.effects.append(ProtocolError(conn, reason))
