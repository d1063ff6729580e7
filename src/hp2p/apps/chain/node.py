"""The chain's two node roles on hp2p overlays (asyncio shells around the sans-IO ledger).

**Producer** (:class:`ProducerNode`): a CoreTree member (:class:`~hp2p.peer.node.PeerNode`).
A transaction posted to its API is validated and broadcast at once on the CoreTree (app-id
``hp2p-chain-tx``); every producer validates each broadcast transaction again before it enters
its mempool (the tree relays every message whatever a member thinks of it, so validation
happens at every producer, never once for all). A timer wakes at each slot start of this
producer (or when the head moves) and calls :meth:`Ledger.produce`; a block is broadcast on
the CoreTree (app-id ``hp2p-chain-block``) and every producer validates it fully.

**Full node** (:class:`FullNode`): a SubMesh member (:class:`~hp2p.peer.mesh_node.MeshNode`)
fed by the R3 bridge, which publishes every CoreTree block broadcast as one SubMesh object.
Each object is a block, validated by the node's own ledger. A late or restarted node catches
up because the mesh pulls every object its neighbours hold; blocks that arrive before their
parent wait as orphans in the ledger (bounded).

Both replay their SQLite store first (:mod:`hp2p.apps.chain.store`) and serve the API of
:mod:`hp2p.apps.chain.api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from hp2p.apps.chain.ledger import Ledger
from hp2p.apps.chain.model import ChainFormatError, decode_tx, encode_block, encode_tx
from hp2p.apps.chain.service import BLOCK_APP_ID, TX_APP_ID, ChainService, NotBroadcastError
from hp2p.peer.mesh_node import MeshNode, MeshNodeError, MeshSettings
from hp2p.peer.node import NodeError, PeerNode
from hp2p.peer.settings import NodeSettings
from hp2p.peer.subscription import Delivery
from hp2p.trust.keys import SigningKey

log = logging.getLogger("hp2p.apps.chain.node")

__all__ = ["FullNode", "ProducerNode", "next_slot"]

EventSink = Callable[[str, dict[str, Any]], None]


def next_slot(ledger: Ledger, key: SigningKey, now: float) -> float | None:
    """The start (unix time) of ``key``'s next round on the current head after ``now``.

    Call it when :meth:`Ledger.due` says no: a round of ``key`` that has started already
    would have made it due. None when ``key`` has no later round (it is not a producer, or it
    signed this height already): the head must move first.
    """
    genesis = ledger.genesis
    head = ledger.head_block.block.header
    height = head.height + 1
    if (key.public, height) in ledger.signed_at:
        return None
    start = max(head.timestamp, genesis.timestamp) + genesis.interval
    for round_ in range(len(genesis.producers)):
        at = start + round_ * genesis.interval
        if genesis.producer_for(height, round_) == key.public and at > now:
            return at
    return None


class _Shell:
    """What both roles share: the service, tasks and the JSON events."""

    def __init__(self, service: ChainService, on_event: EventSink | None) -> None:
        self.service = service
        self.on_event = on_event
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announced = ""

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("chain task %s failed", task.get_name(), exc_info=task.exception())
            self._emit("error", {"task": task.get_name(), "reason": str(task.exception())})

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields)

    async def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _pump_mesh(self, deliveries: Any) -> None:
        """Blocks from the SubMesh: each object is one block broadcast on the CoreTree."""
        async for delivery in deliveries:
            if delivery.app_id == BLOCK_APP_ID:
                await self.service.block_bytes(delivery.data)
                self._announce()
            else:
                self.service.counters["foreign_objects"] += 1

    def _announce(self) -> None:
        """A ``head`` event when the head moved since the last one."""
        head = self.service.ledger.head_block.block
        if head.hash != self._announced:
            self._announced = head.hash
            self._emit(
                "head",
                {
                    "height": head.height,
                    "hash": head.hash,
                    "txs": len(head.txs),
                    "final_height": self.service.ledger.final_height,
                },
            )


class ProducerNode(_Shell):
    """A block producer on the CoreTree; ``await start()``, then ``await close()``."""

    def __init__(
        self,
        service: ChainService,
        key: SigningKey,
        settings: NodeSettings,
        *,
        sync: MeshSettings | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        super().__init__(service, on_event)
        if key.public not in service.genesis.producers:
            raise NodeError(
                f"the key {key.public_text} is not a producer of this genesis; give one of "
                "the producer-K.key files made by `hp2p chain init`"
            )
        self.key = key
        #: Emit a ``tx`` event (hash, taken or not) for each transaction broadcast received:
        #: what ``hp2p bench chain`` times propagation and counts duplicates with.
        self.trace_txs = False
        self.peer = PeerNode(settings)
        #: The blocks SubMesh, joined as an ordinary member to pull the blocks this producer
        #: missed (it started late, or restarted): the CoreTree only pushes what is new.
        self.mesh = MeshNode(sync) if sync is not None else None

    async def start(self) -> None:
        await self.service.start()
        try:
            await self.peer.start()
        except NodeError:
            await self.service.close()
            raise
        # a block cannot be larger than the largest message the CoreTree carries
        self.service.ledger.max_block_bytes = min(
            self.service.ledger.max_block_bytes, self.peer.max_message
        )
        deliveries = self.peer.subscribe()
        self._spawn(self._pump(deliveries), "chain-pump")
        if self.mesh is not None:
            objects = self.mesh.subscribe()
            try:
                await self.mesh.start()
            except MeshNodeError:
                await self.peer.close()
                await self.service.close()
                raise
            self._spawn(self._pump_mesh(objects), "chain-sync")
        self._spawn(self._produce_loop(), "chain-producer")

    async def close(self) -> None:
        await self._stop_tasks()
        if self.mesh is not None:
            await self.mesh.close()
        await self.peer.close()
        await self.service.close()

    def submit(self, tx: Any) -> None:
        """Validate ``tx`` and broadcast it on the CoreTree (raises TxRejectedError)."""
        self.service.submit(tx)
        try:
            self.peer.publish(encode_tx(tx), app_id=TX_APP_ID, payload_type="application/msgpack")
        except NodeError as exc:
            raise NotBroadcastError(f"the CoreTree did not take it ({exc}); retry") from None

    async def _pump(self, deliveries: Any) -> None:
        async for delivery in deliveries:
            await self._received(delivery)

    async def _received(self, delivery: Delivery) -> None:
        if delivery.app_id == TX_APP_ID:
            tx = self.service.tx_bytes(delivery.data)
            if self.trace_txs:
                self._trace(delivery.data, tx is not None)
        elif delivery.app_id == BLOCK_APP_ID:
            await self.service.block_bytes(delivery.data)
            self._announce()
        else:
            self.service.counters["foreign_messages"] += 1

    def _trace(self, data: bytes, taken: bool) -> None:
        try:
            tx_hash = decode_tx(data).hash
        except ChainFormatError:
            tx_hash = None
        self._emit("tx", {"hash": tx_hash, "taken": taken})

    async def _produce_loop(self) -> None:
        """Wake at this producer's next slot start, or when the head moves; produce."""
        service = self.service
        while True:
            block = await service.produce(self.key)
            if block is not None:
                try:
                    self.peer.publish(
                        encode_block(block),
                        app_id=BLOCK_APP_ID,
                        payload_type="application/msgpack",
                    )
                except NodeError as exc:
                    service.counters["blocks_not_broadcast"] += 1
                    log.warning("block %d not broadcast: %s", block.height, exc)
                self._announce()
                continue
            now = service.clock()
            at = next_slot(service.ledger, self.key, now)
            wait = service.genesis.interval if at is None else max(0.0, at - now)
            service.head_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.head_changed.wait(), max(wait, 0.005))

    def status(self) -> dict[str, Any]:
        peer = self.peer.status()
        return {
            "peer_id": peer.get("peer_id"),
            "overlay_id": peer.get("overlay_id"),
            "state": peer.get("state"),
            "links": peer.get("links"),
            "producer": self.key.public_text,
        }


class FullNode(_Shell):
    """A full node on the blocks SubMesh; ``await start()``, then ``await close()``."""

    def __init__(
        self,
        service: ChainService,
        settings: MeshSettings,
        *,
        on_event: EventSink | None = None,
    ) -> None:
        super().__init__(service, on_event)
        self.mesh = MeshNode(settings)

    async def start(self) -> None:
        await self.service.start()
        deliveries = self.mesh.subscribe()
        try:
            await self.mesh.start()
        except Exception:
            await self.service.close()
            raise
        self._spawn(self._pump_mesh(deliveries), "chain-pump")

    async def close(self) -> None:
        await self._stop_tasks()
        await self.mesh.close()
        await self.service.close()

    def status(self) -> dict[str, Any]:
        mesh = self.mesh.status()
        return {
            "peer_id": mesh.get("peer_id"),
            "overlay_id": mesh.get("overlay_id"),
            "state": mesh.get("state"),
            "source_id": mesh.get("source_id"),
            "deliveries": mesh.get("node", {}).get("deliveries"),
        }
