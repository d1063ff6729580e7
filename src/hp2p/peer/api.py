"""The application interface (AI FE, Q.4100 §7.2.1.2): a Python API and a local HTTP/WS API.

Python, in the same process as the peer::

    async with Peer(homs="http://127.0.0.1:8081", create="chat") as p:
        await p.publish(b"hello")
        async for msg in p.messages():
            if isinstance(msg, Gap):  # lost for good: no peer could serve them
                print(f"lost {msg.first}..{msg.last} of {msg.source}")
                continue
            print(msg.source, msg.data)

Other processes reach a running ``hp2p peer --api 127.0.0.1:PORT`` over HTTP and WebSocket:
see :mod:`hp2p.peer.local_api`, imported only when that API is served.
"""

from __future__ import annotations

import base64
import logging
from types import TracebackType
from typing import Any, Literal, overload

from hp2p.peer.config import PeerConfig
from hp2p.peer.effects import ScanResult
from hp2p.peer.node import NodeError, PeerNode
from hp2p.peer.settings import NodeSettings
from hp2p.peer.subscription import Delivery, Gap, Subscription

log = logging.getLogger("hp2p.peer.api")

__all__ = ["Delivery", "Gap", "NodeError", "Peer", "delivery_json", "gap_json", "scan_json"]


class Peer:
    """A hybrid peer inside this asyncio program; see the module docstring for an example.

    Keyword arguments are :class:`~hp2p.peer.settings.NodeSettings` fields (``listen``,
    ``peer_id``, ``access_key``, ``expires`` …); ``config`` sets the core
    (:class:`~hp2p.peer.config.PeerConfig` or a dict of its fields).
    """

    def __init__(
        self,
        homs: str,
        *,
        create: str | None = None,
        join: str | None = None,
        config: PeerConfig | dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if (create is None) == (join is None):
            raise ValueError("give exactly one of create='title' or join='overlay-id or title'")
        if isinstance(config, dict):
            config = PeerConfig.from_dict(config)
        self.node = PeerNode(NodeSettings(homs=homs, create=create, join=join, **settings), config)

    async def __aenter__(self) -> Peer:
        await self.node.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.node.close()

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def overlay_id(self) -> str:
        return self.node.core.overlay_id if self.node.core else ""

    async def publish(
        self, data: bytes, *, app_id: str = "etri_data", payload_type: str = "text/plain"
    ) -> int:
        """Broadcast ``data`` to every peer of the overlay; returns its sequence number.

        It returns once the frames are queued on this peer's links (bounded queues).
        """
        return self.node.publish(bytes(data), app_id=app_id, payload_type=payload_type)

    @overload
    def messages(
        self, maxsize: int | None = None, *, gaps: Literal[True] = True
    ) -> Subscription[Delivery | Gap]: ...

    @overload
    def messages(
        self, maxsize: int | None = None, *, gaps: Literal[False]
    ) -> Subscription[Delivery]: ...

    def messages(
        self, maxsize: int | None = None, *, gaps: bool = True
    ) -> Subscription[Delivery | Gap] | Subscription[Delivery]:
        """Deliveries from the other peers, each once, and gaps; iterate with ``async for``.

        Subscribe before you expect messages: a subscription sees what arrives after it was
        made. A reader slower than the traffic loses the oldest queued messages and learns how
        many from ``Delivery.lost``.

        A :class:`Gap` (``source``, ``first``, ``last``) says that messages ``first..last`` of
        ``source`` are lost for good: data recovery asked every holder and none had them. It
        comes in its place in the stream, so an application never skips data without knowing;
        ``gaps=False`` gives deliveries only, for a reader that takes gaps from elsewhere.
        """
        if gaps:
            return self.node.subscribe_with_gaps(maxsize)
        return self.node.subscribe(maxsize)

    async def scan_tree(self) -> ScanResult:
        """SCAN_TREE: every leaf path below and above this peer (after ``scan_timeout``)."""
        return await self.node.scan_tree()

    def status(self) -> dict[str, Any]:
        return self.node.status()


def payload_json(data: bytes) -> dict[str, str]:
    """Bytes in JSON: ``text`` when they are UTF-8, else ``data_b64``."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data_b64": base64.b64encode(data).decode("ascii")}


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """A delivery as JSON: ``text`` when the bytes are UTF-8, else ``data_b64``."""
    out: dict[str, Any] = {
        "source": delivery.source,
        "sequence": delivery.sequence,
        "app_id": delivery.app_id,
        "payload_type": delivery.payload_type,
    }
    out |= payload_json(delivery.data)
    if delivery.lost:
        out["lost"] = delivery.lost
    if delivery.recovered:
        out["recovered"] = True
    return out


def gap_json(gap: Gap) -> dict[str, Any]:
    """A gap as JSON, told apart from a delivery by its ``gap`` key."""
    return {"gap": {"source": gap.source, "first": gap.first, "last": gap.last}}


def scan_json(result: ScanResult) -> dict[str, Any]:
    """SCAN_TREE paths as JSON: each a list of ``{peer_id, ticket, address}`` from my neighbour."""
    return {
        "cseq": result.cseq,
        "paths": [
            [{"peer_id": h[0], "ticket": h[1], "address": h[2]} for h in path.hops]
            for path in result.paths
        ],
    }
