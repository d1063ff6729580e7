"""`hp2p chain …`: make a chain, run producers and full nodes, send, look (docs/chain.md).

The client commands (``send``, ``balance``, ``watch``) live in :mod:`hp2p.apps.chain.client`;
the node processes in :mod:`hp2p.apps.chain.run`.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from hp2p.apps.chain import client
from hp2p.apps.chain.model import address_of
from hp2p.apps.chain.state import Genesis, GenesisError
from hp2p.trust.keys import KeyFileError, SigningKey

app = typer.Typer(
    help=(
        "Blockchain service (Q.4100 §9.2): transactions on a CoreTree, blocks on a SubMesh "
        "(docs/chain.md).\n\nExamples:\n\n"
        "  hp2p chain init --dir mychain --producers 3\n\n"
        "  hp2p chain producer --genesis mychain/genesis.json --key mychain/producer-1.key "
        "--create chain --api 127.0.0.1:8601\n\n"
        "  hp2p chain send --api http://127.0.0.1:8601 --key mychain/account-1.key "
        "--to 0x… --amount 5 --wait"
    ),
    no_args_is_help=True,
)

INIT_EPILOG = """
Examples:

  hp2p chain init --dir mychain                       # 4 producers, 10 accounts

  hp2p chain init --dir mychain --producers 3 --accounts 2 --balance 500 --interval 1

  hp2p chain init --dir mychain --start-in 60     # first block in a minute

Writes DIR/genesis.json (the same file goes to every node), DIR/producer-K.key (one per
producer, give each to its operator) and DIR/account-K.key (funded accounts), keys 0600.
Existing key files are kept, so running it again rewrites only the genesis.
"""

PRODUCER_EPILOG = """
Examples:

  # the first producer creates the CoreTree (the admin key lets a bridge hang a SubMesh on it)
  hp2p chain producer --genesis mychain/genesis.json --key mychain/producer-1.key \\
      --create chain --admin-key s3cret --api 127.0.0.1:8601 --db p1.db

  # the others join it (--sync: pull from the blocks SubMesh what was made before)
  hp2p chain producer --genesis mychain/genesis.json --key mychain/producer-2.key \\
      --overlay chain --sync blocks --api 127.0.0.1:8602 --db p2.db

Transactions posted to --api are validated and broadcast on the CoreTree; every producer
validates them again. Blocks are made in turn every `interval` seconds of the genesis.
"""

NODE_EPILOG = """
Examples:

  # a bridge publishes every block broadcast on the CoreTree as one SubMesh object
  hp2p bridge --core chain --id b1 --submesh blocks:hp2p-chain-block --core-admin-key s3cret

  # a full node on that SubMesh validates every block with its own ledger
  hp2p chain node --genesis mychain/genesis.json --join blocks --api 127.0.0.1:8611 --db n1.db

A full node cannot take transactions (POST /tx answers 409): send them to a producer.
"""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"hp2p chain: {message}", err=True)
    return typer.Exit(2)


def init(
    directory: Annotated[Path, typer.Option("--dir", help="Directory for the genesis and keys.")],
    producers: Annotated[int, typer.Option(help="Number of block producers.", min=1)] = 4,
    accounts: Annotated[int, typer.Option(help="Number of funded accounts.", min=0)] = 10,
    balance: Annotated[int, typer.Option(help="Starting balance of each account.", min=0)] = (
        1_000_000
    ),
    interval: Annotated[float, typer.Option(help="Seconds between blocks.")] = 2.0,
    finality: Annotated[int, typer.Option(help="Blocks on top that make one final.", min=1)] = 3,
    max_block_txs: Annotated[int, typer.Option(help="Most transactions in a block.")] = 2000,
    start_in: Annotated[
        float,
        typer.Option(
            "--start-in",
            help="Seconds from now before the first block may be made (time to start the "
            "producers and the bridge).",
            min=0,
        ),
    ] = 0.0,
    chain_id: Annotated[
        str | None, typer.Option("--chain-id", help="Chain id (default: chain-<random>).")
    ] = None,
) -> None:
    """Make a new chain: genesis.json, producer keys and funded account keys."""
    try:
        producer_keys = [
            SigningKey.load_or_create(directory / f"producer-{k}.key")
            for k in range(1, producers + 1)
        ]
        account_keys = [
            SigningKey.load_or_create(directory / f"account-{k}.key")
            for k in range(1, accounts + 1)
        ]
        genesis = Genesis(
            chain_id=chain_id or f"chain-{secrets.token_hex(3)}",
            producers=tuple(k.public for k in producer_keys),
            balances={address_of(k.public): balance for k in account_keys},
            timestamp=round(time.time() + start_in, 3),
            interval=interval,
            finality_depth=finality,
            max_block_txs=max_block_txs,
        )
        path = directory / "genesis.json"
        path.write_text(json.dumps(genesis.to_json(), indent=2) + "\n", encoding="utf-8")
    except (GenesisError, KeyFileError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"chain {genesis.chain_id}: {path} (genesis {genesis.hash[:16]})")
    for k, key in enumerate(producer_keys, 1):
        typer.echo(f"  producer-{k}.key  {address_of(key.public)}")
    for k, key in enumerate(account_keys, 1):
        typer.echo(f"  account-{k}.key   {address_of(key.public)}  balance {balance}")


def _load(genesis: Path, level: str) -> Genesis:
    if level.upper() not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        raise _fail("--log-level must be error, warning, info or debug")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return Genesis.load(genesis)
    except GenesisError as exc:
        raise _fail(str(exc)) from None


GenesisOpt = Annotated[Path, typer.Option("--genesis", help="The chain's genesis.json.")]
HomsOpt = Annotated[str, typer.Option("--homs", help="HOMS URL.")]
DbOpt = Annotated[
    str, typer.Option("--db", help="SQLite file of final blocks (default: none, memory only).")
]
ApiOpt = Annotated[
    str | None, typer.Option("--api", help="Serve the chain API on HOST:PORT (127.0.0.1).")
]
PublicOpt = Annotated[bool, typer.Option("--api-public", help="Allow a non-loopback --api.")]
IdOpt = Annotated[str | None, typer.Option("--id", help="Peer id (default: random).")]
JsonOpt = Annotated[bool, typer.Option("--json-events", help="JSON event lines on stdout.")]
LogOpt = Annotated[str, typer.Option("--log-level", help="error, warning, info or debug.")]


def producer(
    genesis: GenesisOpt,
    key: Annotated[Path, typer.Option("--key", help="This producer's key file.")],
    homs: HomsOpt = "http://127.0.0.1:8081",
    overlay: Annotated[
        str | None, typer.Option("--overlay", help="CoreTree to join (overlay-id or title).")
    ] = None,
    create: Annotated[
        str | None, typer.Option("--create", help="Create the CoreTree with this title.")
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option("--admin-key", help="Admin key of a created CoreTree (a bridge needs it)."),
    ] = None,
    sync: Annotated[
        str | None,
        typer.Option(
            "--sync", help="Also join this blocks SubMesh to pull the blocks missed (late start)."
        ),
    ] = None,
    db: DbOpt = ":memory:",
    api: ApiOpt = None,
    api_public: PublicOpt = False,
    peer_id: IdOpt = None,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT for R2.")] = "127.0.0.1:0",
    json_events: JsonOpt = False,
    trace_txs: Annotated[
        bool,
        typer.Option(
            "--trace-txs",
            help="With --json-events, a `tx` event for each transaction broadcast received "
            "(hash, taken): for benchmarks.",
        ),
    ] = False,
    log_level: LogOpt = "warning",
) -> None:
    """Run a block producer: a CoreTree member that validates, broadcasts and makes blocks."""
    from hp2p.apps.chain.node import ProducerNode
    from hp2p.apps.chain.run import EventPrinter, serve
    from hp2p.apps.chain.service import ChainService
    from hp2p.apps.chain.store import ChainStore
    from hp2p.peer.mesh_node import MeshNodeError, MeshSettings
    from hp2p.peer.node import NodeError
    from hp2p.peer.settings import NodeSettings, SettingsError

    if (overlay is None) == (create is None):
        raise _fail("give --overlay CORETREE to join one, or --create TITLE to make it")
    chain = _load(genesis, log_level)
    try:
        signing = SigningKey.load(key)
        settings = NodeSettings(
            homs=homs, join=overlay, create=create, admin_key=admin_key, peer_id=peer_id,
            listen=listen,
        )  # fmt: skip
        service = ChainService(chain, ChainStore(db), role="producer")
        mesh = None
        if sync is not None:
            mesh_id = f"{peer_id}-sync" if peer_id else None  # None: a random one
            mesh = MeshSettings(homs=homs, join=sync, peer_id=mesh_id)
        node = ProducerNode(service, signing, settings, sync=mesh)
        node.trace_txs = trace_txs and json_events
    except (KeyFileError, SettingsError, NodeError, MeshNodeError, ValueError) as exc:
        raise _fail(str(exc)) from None
    emit = EventPrinter(json_events, "hp2p chain producer")
    node.on_event = emit
    raise typer.Exit(serve(node, api, api_public, emit))


def node(
    genesis: GenesisOpt,
    join: Annotated[str, typer.Option("--join", help="The blocks SubMesh (overlay-id or title).")],
    homs: HomsOpt = "http://127.0.0.1:8081",
    db: DbOpt = ":memory:",
    api: ApiOpt = None,
    api_public: PublicOpt = False,
    peer_id: IdOpt = None,
    json_events: JsonOpt = False,
    log_level: LogOpt = "warning",
) -> None:
    """Run a full node: a SubMesh member that validates every block and keeps the state."""
    from hp2p.apps.chain.node import FullNode
    from hp2p.apps.chain.run import EventPrinter, serve
    from hp2p.apps.chain.service import ChainService
    from hp2p.apps.chain.store import ChainStore
    from hp2p.peer.mesh_node import MeshNodeError, MeshSettings

    chain = _load(genesis, log_level)
    try:
        settings = MeshSettings(homs=homs, join=join, peer_id=peer_id)
        service = ChainService(chain, ChainStore(db), role="full")
        full = FullNode(service, settings)
    except (MeshNodeError, ValueError) as exc:
        raise _fail(str(exc)) from None
    emit = EventPrinter(json_events, "hp2p chain node")
    full.on_event = emit
    raise typer.Exit(serve(full, api, api_public, emit))


app.command(name="init", epilog=INIT_EPILOG)(init)
app.command(name="producer", epilog=PRODUCER_EPILOG)(producer)
app.command(name="node", epilog=NODE_EPILOG)(node)
app.command(name="send", epilog=client.SEND_EPILOG)(client.send)
app.command(name="balance", epilog=client.BALANCE_EPILOG)(client.balance)
app.command(name="watch", epilog=client.WATCH_EPILOG)(client.watch)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
