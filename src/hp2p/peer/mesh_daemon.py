"""``python -m hp2p.peer.mesh_daemon``: one SubMesh peer process (what ``hp2p peer`` runs for a
``sub``/``mesh`` overlay).

It is lean on purpose (argparse, no typer), like :mod:`hp2p.peer.daemon`: a peer process stays
small. Other programs follow it without guessing or sleeping:

* ``--json-events``: one JSON object per line on stdout: ``joined``, ``object`` (with the
  SHA-256 of the delivered object), ``published``, ``became_source``, ``status``, ``error``,
  ``left``;
* ``--stdin``: commands, one per line: ``publish TEXT``, ``publish-file PATH``,
  ``publish-random SIZE SEED`` (deterministic bytes, for tests and demos), ``status``,
  ``leave``; the end of input leaves too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from hp2p.peer.errors import NotSourceError
from hp2p.peer.mesh_config import MeshConfig, MeshConfigError
from hp2p.peer.mesh_node import MeshNode, MeshNodeError, MeshSettings
from hp2p.peer.settings import SubMeshSigning
from hp2p.peer.stdio import print_event, stdin_commands

EPILOG = """
Examples:

  # the source creates a SubMesh under CoreTree 7f3c… and joins it
  python -m hp2p.peer.mesh_daemon --homs http://127.0.0.1:8081 --create blocks \\
      --parent 7f3c… --id block-source --stdin --json-events

  # an ordinary SubMesh peer that keeps its pieces on disk
  python -m hp2p.peer.mesh_daemon --join blocks --store ./pieces --json-events

  # a standby for the source (publishes in its place when it is gone); give it a copy of
  # the source's key file so that what it publishes is signed as the source
  python -m hp2p.peer.mesh_daemon --join blocks --standby --set takeover_after=2 \
      --signing-key ./block-source.ed25519.pem

  # a peer that trusts only this source key and refuses unsigned manifests
  python -m hp2p.peer.mesh_daemon --join blocks --source-key ed25519:3b6a… --require-signatures

Manifest signatures: the source signs every manifest with its Ed25519 key file (created 0600
on first use: --signing-key PATH, default $HP2P_KEY_DIR or $XDG_STATE_HOME/hp2p/submesh-keys/
<source-id>.ed25519.pem) and records the public key at the HOMS with its create/join. Peers
verify with the HOMS's record or the pinned --source-key. A SubMesh without a recorded key
works unsigned, as before, unless --require-signatures.

Mesh settings (--set KEY=VALUE): see hp2p.peer.mesh_config.MeshConfig, e.g. piece_size,
target_neighbours, low_water, max_requests, request_timeout, store_bytes.
"""


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs typed like the :class:`MeshConfig` field they name."""
    defaults = MeshConfig()
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MeshConfigError(f"--set wants KEY=VALUE, got {item!r}")
        if not hasattr(defaults, key):
            raise MeshConfigError(f"unknown mesh setting {key!r}")
        kind = type(getattr(defaults, key))
        if kind is bool:
            # bool("false") is True: spell the two values out instead
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise MeshConfigError(f"{key} must be true or false, got {raw!r}")
            values[key] = raw.lower() in ("true", "1", "yes", "on")
            continue
        try:
            values[key] = kind(raw)
        except ValueError:
            raise MeshConfigError(f"{key} must be {kind.__name__}, got {raw!r}") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hp2p peer (SubMesh)",
        description="Run a SubMesh peer: join (or, as its source, create) a sub/mesh overlay, "
        "pull and serve pieces, deliver whole verified objects.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--homs", default="http://127.0.0.1:8081", help="HOMS URL")
    p.add_argument("--join", help="SubMesh overlay-id or title to join")
    p.add_argument("--create", help="create a SubMesh with this title (this peer is its source)")
    p.add_argument("--parent", help="parent overlay-id (the CoreTree) for --create")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT for R2 (default any port)")
    p.add_argument("--id", dest="peer_id", help="peer-id (default peer-<random hex>)")
    p.add_argument("--store", help="directory of a persistent piece store (default: memory)")
    p.add_argument("--standby", action="store_true", help="standby for the source")
    p.add_argument("--access-key", help="access key of a closed overlay")
    p.add_argument(
        "--signing-key",
        metavar="PATH",
        help="source (or standby): Ed25519 key file that signs manifests, created 0600 if absent",
    )
    p.add_argument(
        "--unsigned", action="store_true", help="source: publish unsigned manifests (old peers)"
    )
    p.add_argument(
        "--source-key",
        metavar="ed25519:HEX",
        help="pin the source's public key (else the key the HOMS records is trusted)",
    )
    p.add_argument(
        "--require-signatures",
        action="store_true",
        help="accept only manifests signed by the source key (none known: accept none)",
    )
    p.add_argument("--expires", type=int, default=30, help="HOMP expires in seconds")
    p.add_argument("--seed", type=int, help="seed of the core's random choices")
    p.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--json-events", action="store_true", help="JSON lines on stdout")
    p.add_argument("--stdin", action="store_true", help="read commands from stdin")
    p.add_argument("--log-level", default="warning", help="error, warning, info or debug")
    return p


async def run(settings: MeshSettings, json_events: bool, stdin: bool) -> int:
    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if json_events:
            print_event(kind, {**fields, "t": time.time()})

    node = MeshNode(settings, on_event=on_event)
    subscription = node.subscribe()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except MeshNodeError as exc:
        print(f"hp2p peer: {exc}", file=sys.stderr, flush=True)
        return 1
    info = {
        "peer_id": node.peer_id,
        "overlay_id": node.overlay_id,
        "source_id": node.source_id,
        "r2": node.address,
        "mesh": True,
        "source_key": node.source_key,
        "signing_key": node.signer.public_text if node.signer else None,
    }
    if json_events:
        print_event("joined", info)
    else:
        print(
            f"hp2p peer: joined SubMesh peer-id={node.peer_id} overlay-id={node.overlay_id} "
            f"source={node.source_id} r2={node.address}",
            flush=True,
        )

    async def report_objects() -> None:
        async for delivery in subscription:
            if json_events:
                print_event(
                    "delivered",
                    {
                        "object": delivery.object_number,
                        "sha256": hashlib.sha256(delivery.data).hexdigest(),
                        "lost": delivery.lost,
                        "t": time.time(),
                    },
                )

    try:
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(report_objects()),
        ]
        if stdin:
            waiters.append(asyncio.ensure_future(serve_commands(node)))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        return 0
    finally:
        await node.close()


async def serve_commands(node: MeshNode) -> None:
    async for command, argument, _line in stdin_commands():
        try:
            data: bytes | None = None
            if command == "publish":
                data = argument.encode("utf-8")
            elif command == "publish-file":
                data = await asyncio.to_thread(Path(argument).read_bytes)
            elif command == "publish-random":
                size, _, seed = argument.partition(" ")
                data = random.Random(int(seed or 0)).randbytes(int(size))
            elif command == "status":
                print_event("status", node.status())
            elif command == "leave":
                return
            elif command:
                print_event(
                    "error",
                    {
                        "reason": f"unknown command {command!r}; use publish TEXT, publish-file "
                        "PATH, publish-random SIZE SEED, status or leave",
                    },
                )
            if data is not None:
                node.publish(data)  # the node's 'published' event says which object
        except (NotSourceError, MeshNodeError, ValueError, OSError) as exc:
            print_event("error", {"reason": str(exc)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = str(args.log_level).upper()
    if level not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        print("hp2p peer: --log-level must be error, warning, info or debug", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sets = parse_sets(args.sets)
        if args.require_signatures:
            sets["require_signatures"] = True
        config = MeshConfig.from_dict(sets)
        settings = MeshSettings(
            homs=args.homs,
            join=args.join,
            create=args.create,
            parent=args.parent,
            listen=args.listen,
            peer_id=args.peer_id,
            store=args.store,
            standby=args.standby,
            access_key=args.access_key or os.environ.pop(ACCESS_KEY_ENV, None),
            expires=args.expires,
            seed=args.seed,
            config=config,
            signing_key=args.signing_key,
            sign=not args.unsigned,
            source_key=args.source_key,
        )
    except (MeshConfigError, MeshNodeError, ValueError) as exc:
        print(f"hp2p peer: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(settings, args.json_events, args.stdin))


ACCESS_KEY_ENV = "_HP2P_MESH_ACCESS_KEY"


def submesh_of(homs_url: str, key: str, timeout: float = 5.0) -> str | None:
    """The overlay-id if ``key`` (an overlay-id or exact title) names a SubMesh, else None.

    One synchronous HOMP query, made by ``hp2p peer --join`` before it picks its runtime. Any
    failure answers None: the tree runtime then reports the problem in its own words.
    """
    import httpx

    try:
        with httpx.Client(base_url=homs_url.rstrip("/"), timeout=timeout) as client:
            for params in ({"overlay-id": key}, {"title": key}):
                answer = client.get("/homs", params=params)
                if answer.status_code != 200:
                    continue
                items = msgspec.json.decode(answer.content)
                overlays = [i.get("overlay") for i in items if isinstance(i, dict)]
                exact = [
                    o
                    for o in overlays
                    if isinstance(o, dict) and key in (o.get("overlay-id"), o.get("title"))
                ]
                if len(exact) == 1:
                    o = exact[0]
                    if o.get("type") == "sub" and o.get("sub-type") == "mesh":
                        overlay_id = o.get("overlay-id")
                        return overlay_id if isinstance(overlay_id, str) else None
                    return None
    except (httpx.HTTPError, msgspec.DecodeError, OSError, AttributeError):
        return None
    return None


def exec_if_submesh(
    settings: Any,
    *,
    json_events: bool,
    stdin: bool,
    log_level: str,
    signing: SubMeshSigning | None = None,
) -> None:
    """``hp2p peer --join X``: when X is a SubMesh, become a SubMesh peer (does not return).

    ``settings`` is the tree peer's ``NodeSettings``; the fields a SubMesh peer shares with it
    (HOMS, listen, peer-id, expires, seed, access key) carry over. Tree-core settings do not
    apply to a SubMesh and are ignored. The access key travels in the environment, not argv.
    """
    join = getattr(settings, "join", None)
    if not join:
        return
    overlay_id = submesh_of(settings.homs, join, timeout=settings.homs_timeout)
    if overlay_id is None:
        return
    argv = [sys.executable, "-m", "hp2p.peer.mesh_daemon", "--homs", settings.homs]
    argv += ["--join", overlay_id, "--listen", settings.listen, "--expires", str(settings.expires)]
    argv += ["--log-level", log_level.lower()]
    if settings.peer_id:
        argv += ["--id", settings.peer_id]
    if settings.seed is not None:
        argv += ["--seed", str(settings.seed)]
    if json_events:
        argv.append("--json-events")
    if stdin:
        argv.append("--stdin")
    if signing is not None:
        argv += signing.argv()
    if settings.access_key:
        os.environ[ACCESS_KEY_ENV] = settings.access_key
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    sys.exit(main())
