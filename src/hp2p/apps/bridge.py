"""The R3 bridge (Q.4100 §8.3, §9): CoreTree data forwarded, at the application level, to the
source peers of SubTree and SubMesh overlays.

Q.4100 says hybrid peers and sub-overlay peers "do not use the same protocol because interaction
at the application level is sufficient": a peer of the CoreTree (H-PEER B in figures 9-2, 9-4,
9-6) hands selected data to the source of each sub-overlay. Here one process does both: it is an
ordinary CoreTree peer (:class:`~hp2p.peer.node.PeerNode`) and, for each configured target, the
source peer of that sub-overlay (a ``PeerNode`` on a SubTree, a
:class:`~hp2p.peer.mesh_node.MeshNode` on a SubMesh). A target selects CoreTree messages by
app-id and/or a filter function; each selected message is published once on the target.

SubMesh objects carry ``meta = {"core-source", "core-sequence"}`` so that any SubMesh peer (and
a standby bridge) can tell which CoreTree message an object is.

**Standby.** A standby bridge (``standby=True``, SubMesh targets) is also a CoreTree peer, so it
receives every CoreTree message, and keeps the selected ones in a bounded buffer. It joins each
SubMesh as an ordinary peer in *standby* mode: its mesh core keeps a link to the source and, when
the source has been unreachable for ``takeover_after`` seconds, becomes the publisher under the
same source id, numbering after the last object it has heard of. The bridge then waits
``settle`` seconds for the objects already announced to be pulled, and re-publishes from its
buffer every selected CoreTree message that the SubMesh does not hold yet (known by ``meta``),
then forwards live. SubMesh peers catch up by pulling, as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import typer

from hp2p.peer.config import PeerConfig
from hp2p.peer.homs_client import HomsError, OverlayNotFoundError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_node import MeshNode, MeshNodeError, MeshSettings
from hp2p.peer.node import Delivery, NodeError, PeerNode
from hp2p.peer.settings import NodeSettings
from hp2p.peer.subtree import SubOverlayHomsClient

log = logging.getLogger("hp2p.apps.bridge")

EventSink = Callable[[str, dict[str, Any]], None]
Selector = Callable[[Delivery], bool]


class BridgeError(Exception):
    """The bridge could not start; ``str(err)`` says what failed and what to do."""


@dataclass(frozen=True)
class BridgeTarget:
    """One sub-overlay fed by the bridge: its kind, title, source peer-id and selection.

    ``app_ids`` empty and ``where`` None select every CoreTree message.
    """

    kind: str  # "tree" (SubTree) or "mesh" (SubMesh)
    title: str
    source_id: str
    app_ids: frozenset[str] = frozenset()
    where: Selector | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("tree", "mesh"):
            raise BridgeError(f"a target is 'tree' or 'mesh', not {self.kind!r}")
        if not self.title or not self.source_id:
            raise BridgeError("a target needs a title and a source peer-id")

    def selects(self, delivery: Delivery) -> bool:
        if self.app_ids and delivery.app_id not in self.app_ids:
            return False
        return self.where is None or self.where(delivery)

    @classmethod
    def parse(cls, kind: str, spec: str, bridge_id: str) -> BridgeTarget:
        """``TITLE[:APP-ID,APP-ID…]`` from the command line; the source id is derived."""
        title, _, ids = spec.partition(":")
        app_ids = frozenset(i for i in ids.split(",") if i)
        return cls(kind, title, f"{bridge_id}-{title}", app_ids)


@dataclass
class BridgeStats:
    received: int = 0
    selected: int = 0
    forwarded: int = 0
    refused: int = 0
    replayed: int = 0
    buffered_dropped: int = 0


@dataclass(eq=False)
class _Running:
    target: BridgeTarget
    overlay_id: str
    tree: PeerNode | None = None
    mesh: MeshNode | None = None
    active: bool = True
    buffer: deque[Delivery] = field(default_factory=deque)


class Bridge:
    """A CoreTree peer feeding sub-overlay sources. ``await start()``, then ``await close()``."""

    def __init__(
        self,
        homs: str,
        core_overlay: str,
        targets: Sequence[BridgeTarget],
        *,
        bridge_id: str | None = None,
        standby: bool = False,
        buffer: int = 10_000,
        settle: float = 1.0,
        mesh_config: MeshConfig | None = None,
        core_config: PeerConfig | None = None,
        on_event: EventSink | None = None,
        create_missing: bool = True,
    ) -> None:
        if not targets:
            raise BridgeError("give at least one target (--subtree TITLE or --submesh TITLE)")
        if standby and any(t.kind == "tree" for t in targets):
            raise BridgeError(
                "a standby bridge takes over SubMesh targets only: a SubTree source cannot be "
                "replaced under the same source id yet (docs/sub-overlays.md)"
            )
        if buffer < 1:
            raise BridgeError("buffer must be at least 1 message")
        self.homs_url = homs
        self.core_overlay = core_overlay
        self.targets = list(targets)
        self.bridge_id = bridge_id or f"bridge-{secrets.token_hex(3)}"
        self.standby = standby
        self.buffer = buffer
        self.settle = settle
        self.mesh_config = mesh_config or MeshConfig()
        self.core_config = core_config
        self.on_event = on_event
        self.create_missing = create_missing
        self.stats = BridgeStats()
        self.core: PeerNode | None = None
        self._running: list[_Running] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._homs = SubOverlayHomsClient(homs)

    # === life cycle ==============================================================================
    async def start(self) -> None:
        try:
            self.core = PeerNode(
                NodeSettings(homs=self.homs_url, join=self.core_overlay, peer_id=self.bridge_id),
                self.core_config,
                on_event=None,
            )
            await self.core.start()
            core_id = self.core.membership.overlay_id if self.core.membership else ""
            for target in self.targets:
                overlay_id = await self._sub_overlay(target, core_id)
                running = _Running(target, overlay_id, active=not self.standby)
                self._running.append(running)
                await self._start_target(running)
        except (NodeError, MeshNodeError, HomsError) as exc:
            await self.close()
            raise BridgeError(str(exc)) from None
        subscription = self.core.subscribe()
        self._spawn(self._pump(subscription.__aiter__()), "hp2p-bridge-pump")
        self._emit(
            "joined",
            {
                "bridge": self.bridge_id,
                "core_overlay": core_id,
                "standby": self.standby,
                "targets": [
                    {"kind": r.target.kind, "title": r.target.title, "overlay_id": r.overlay_id}
                    for r in self._running
                ],
            },
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for running in self._running:
            if running.mesh is not None:
                await running.mesh.close()
            if running.tree is not None:
                await running.tree.close()
        if self.core is not None:
            await self.core.close()
        await self._homs.aclose()

    def status(self) -> dict[str, Any]:
        return {
            "bridge": self.bridge_id,
            "standby": self.standby,
            "stats": vars(self.stats),
            "targets": [
                {
                    "title": r.target.title,
                    "kind": r.target.kind,
                    "overlay_id": r.overlay_id,
                    "active": r.active,
                    "buffered": len(r.buffer),
                }
                for r in self._running
            ],
        }

    # === set-up ==================================================================================
    async def _sub_overlay(self, target: BridgeTarget, parent: str) -> str:
        """The sub-overlay's id; the active bridge creates it (parent, source) if missing."""
        try:
            overlay = await self._homs.find_overlay(target.title)
        except OverlayNotFoundError:
            if self.standby or not self.create_missing:
                raise
            return await self._homs.create_sub_overlay(
                target.title,
                sub_type=target.kind,
                parent_overlay_id=parent,
                source_peer_id=target.source_id,
                owner_id=self.bridge_id,
                admin_key=secrets.token_urlsafe(16),
            )
        if overlay.type != "sub" or overlay.sub_type != target.kind:
            raise BridgeError(
                f"overlay {target.title!r} is {overlay.type}/{overlay.sub_type}, "
                f"not sub/{target.kind}"
            )
        if overlay.source_peer_id != target.source_id:
            raise BridgeError(
                f"overlay {target.title!r} has source {overlay.source_peer_id!r}; this bridge "
                f"would publish as {target.source_id!r} (use the same --id as its bridge)"
            )
        overlay_id: str = overlay.overlay_id
        return overlay_id

    async def _start_target(self, running: _Running) -> None:
        target = running.target
        if target.kind == "tree":
            running.tree = PeerNode(
                NodeSettings(homs=self.homs_url, join=running.overlay_id, peer_id=target.source_id)
            )
            await running.tree.start()
            return
        settings = MeshSettings(
            homs=self.homs_url,
            join=running.overlay_id,
            peer_id=target.source_id if not self.standby else f"{self.bridge_id}-{target.title}",
            standby=self.standby,
            config=self.mesh_config,
        )
        running.mesh = MeshNode(settings)
        await running.mesh.start()
        if self.standby:
            self._spawn(self._await_takeover(running), "hp2p-bridge-takeover")

    # === forwarding ==============================================================================
    async def _pump(self, deliveries: Any) -> None:
        async for delivery in deliveries:
            self.stats.received += 1
            for running in self._running:
                if running.target.selects(delivery):
                    self.stats.selected += 1
                    if running.active:
                        self._forward(running, delivery)
                    else:
                        running.buffer.append(delivery)
                        if len(running.buffer) > self.buffer:
                            running.buffer.popleft()
                            self.stats.buffered_dropped += 1

    def _forward(self, running: _Running, delivery: Delivery, replay: bool = False) -> None:
        try:
            if running.mesh is not None:
                meta: dict[str, Any] = {
                    "core-source": delivery.source,
                    "core-sequence": delivery.sequence,
                }
                number = running.mesh.publish(delivery.data, app_id=delivery.app_id, meta=meta)
                where: dict[str, Any] = {"object": number}
            elif running.tree is not None:
                sequence = running.tree.publish(
                    delivery.data, app_id=delivery.app_id or "etri_data"
                )
                where = {"sequence": sequence}
            else:
                return
        except (NodeError, MeshNodeError, PermissionError, ValueError) as exc:
            self.stats.refused += 1
            self._emit("error", {"target": running.target.title, "reason": str(exc)})
            return
        self.stats.forwarded += 1
        self.stats.replayed += replay
        self._emit(
            "forwarded",
            {
                "target": running.target.title,
                "core_source": delivery.source,
                "core_sequence": delivery.sequence,
                "replay": replay,
                **where,
            },
        )

    async def _await_takeover(self, running: _Running) -> None:
        mesh = running.mesh
        assert mesh is not None
        await mesh.became_source.wait()
        await asyncio.sleep(self.settle)  # let objects already announced be pulled (bounded)
        core = mesh.core
        held: set[tuple[str, int]] = set()
        if core is not None:
            for number in core.objects():
                manifest = core.manifest(number)
                meta = manifest.meta if manifest is not None else None
                if meta and isinstance(meta.get("core-source"), str):
                    sequence = meta.get("core-sequence")
                    if isinstance(sequence, int):
                        held.add((str(meta["core-source"]), sequence))
        running.active = True
        pending = list(running.buffer)
        running.buffer.clear()
        for delivery in pending:
            if (delivery.source, delivery.sequence) not in held:
                self._forward(running, delivery, replay=True)
        self._emit("active", {"target": running.target.title, "replayed": self.stats.replayed})

    # === helpers =================================================================================
    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:
                log.exception("bridge event callback failed on %s", kind)


# === command line ================================================================================
EXAMPLES = """
Examples:

  # forward CoreTree blocks and transactions to a SubMesh, IoT readings to a SubTree
  hp2p bridge --homs http://127.0.0.1:8081 --core chain --id b1 \\
      --submesh blocks:blockchain --subtree live:iot --json-events

  # bridge b2 stands by for the SubMesh targets of bridge b1
  hp2p bridge --core chain --id b2 --standby-for b1 --submesh blocks:blockchain

A target is TITLE[:APP-ID,…]; without app-ids it takes every CoreTree message. The
sub-overlay is created under the CoreTree (source peer-id ID-TITLE) when it does not exist.
"""


def build_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="hp2p bridge",
        description="R3 bridge: a CoreTree peer that forwards selected messages to the source "
        "of SubTree/SubMesh overlays (Q.4100 §8.3).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--homs", default="http://127.0.0.1:8081", help="HOMS URL")
    p.add_argument("--core", required=True, help="CoreTree overlay-id or title to join")
    p.add_argument("--id", dest="bridge_id", required=True, help="bridge id (names the sources)")
    p.add_argument("--subtree", action="append", default=[], help="SubTree target TITLE[:APP-IDS]")
    p.add_argument("--submesh", action="append", default=[], help="SubMesh target TITLE[:APP-IDS]")
    p.add_argument(
        "--standby-for", metavar="ID", help="stand by for bridge ID (SubMesh targets only)"
    )
    p.add_argument("--takeover-after", type=float, default=3.0, help="seconds (standby)")
    p.add_argument("--buffer", type=int, default=10_000, help="messages kept by a standby")
    p.add_argument("--json-events", action="store_true", help="JSON lines on stdout")
    p.add_argument("--log-level", default="warning", help="error, warning, info or debug")
    return p


def main(argv: list[str] | None = None) -> int:
    import json
    import logging as _logging
    import signal
    import sys

    args = build_parser().parse_args(argv)
    level = str(args.log_level).upper()
    if level not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        print("hp2p bridge: --log-level must be error, warning, info or debug", file=sys.stderr)
        return 2
    _logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if args.json_events:
            with contextlib.suppress(BrokenPipeError, ValueError):
                print(json.dumps({"event": kind, **fields}), flush=True)
        elif kind == "joined":
            print(f"hp2p bridge: running {fields}", flush=True)

    try:
        group = args.standby_for or args.bridge_id  # whose sources the targets are
        targets = [BridgeTarget.parse("tree", s, group) for s in args.subtree]
        targets += [BridgeTarget.parse("mesh", s, group) for s in args.submesh]
        bridge = Bridge(
            args.homs,
            args.core,
            targets,
            bridge_id=args.bridge_id,
            standby=args.standby_for is not None,
            buffer=args.buffer,
            mesh_config=MeshConfig(takeover_after=args.takeover_after),
            on_event=on_event,
        )
    except (BridgeError, ValueError) as exc:
        print(f"hp2p bridge: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await bridge.start()
        except BridgeError as exc:
            print(f"hp2p bridge: {exc}", file=sys.stderr, flush=True)
            return 1
        try:
            await stop.wait()
            return 0
        finally:
            await bridge.close()

    return asyncio.run(run())


#: How ``hp2p`` mounts :func:`command`: the options and ``--help`` are argparse's (``main``).
COMMAND_SETTINGS: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def command(ctx: typer.Context) -> None:
    """R3 bridge: forward selected CoreTree messages to SubTree/SubMesh sources (--help)."""
    raise typer.Exit(main(list(ctx.args)))


if __name__ == "__main__":
    raise SystemExit(main())
