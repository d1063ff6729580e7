"""``hp2p homs``: run a HOMS (hybrid overlay management server) on uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from hp2p.homs.app import build_store, create_app
from hp2p.homs.db import DatabaseUrlError, parse_database_url
from hp2p.homs.settings import DEFAULT_DATABASE, HomsSettings, SettingsError

EPILOG = """
Examples:

  hp2p homs                  # 127.0.0.1:8081, SQLite file ./hp2p.db

  hp2p homs --port 9000 --database sqlite:////var/lib/hp2p/homs.db

  hp2p homs --database postgresql://postgres@127.0.0.1:5432/postgres

  hp2p homs --delete-empty-overlays --expiry-sweep 30     # like the ETRI HOMS

  hp2p homs --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem

The API is documented at http://HOST:PORT/docs once it runs; see docs/homs.md.
"""


def homs(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="TCP port for HOMP (the reference uses 8081).")
    ] = 8081,
    database: Annotated[
        str,
        typer.Option(
            "--database",
            help=(
                "sqlite:///FILE.db (relative to the working directory; sqlite:////abs/path.db) "
                "or postgresql://USER@HOST:PORT/DB. Several HOMS processes may share one "
                "PostgreSQL."
            ),
        ),
    ] = DEFAULT_DATABASE,
    expiry_sweep: Annotated[
        float,
        typer.Option(
            "--expiry-sweep",
            help="Seconds between sweeps that remove peers which stopped refreshing.",
        ),
    ] = 5.0,
    delete_empty_overlays: Annotated[
        bool,
        typer.Option(
            "--delete-empty-overlays",
            help=(
                "Delete an overlay when its last peer leaves or expires (the ETRI behaviour). "
                "Default: keep it until its owner removes it."
            ),
        ),
    ] = False,
    peer_list_size: Annotated[
        int,
        typer.Option(
            "--peer-list-size", help="Entry points returned to a tree (CoreTree/SubTree) join."
        ),
    ] = 3,
    mesh_peer_list_size: Annotated[
        int,
        typer.Option("--mesh-peer-list-size", help="Random neighbours returned to a SubMesh join."),
    ] = 8,
    ws_port: Annotated[
        int,
        typer.Option(
            "--ws-port",
            help="WebSocket port announced by GET /api/InitData to the reference web UI.",
        ),
    ] = 8082,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="PEM certificate: serve HTTPS (needs --tls-key)."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key for --tls-cert.")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info or debug.")
    ] = "info",
) -> None:
    """Run a HOMS: HOMP (Q.4103, ETRI-2023 dialect) over HTTP, with persistent storage."""
    level = log_level.lower()
    if level not in ("critical", "error", "warning", "info", "debug"):
        _fail(f"--log-level must be critical, error, warning, info or debug, not {log_level!r}")
    settings = HomsSettings(
        database=database,
        host=host,
        port=port,
        expiry_sweep=expiry_sweep,
        delete_empty_overlays=delete_empty_overlays,
        tree_peer_list_size=peer_list_size,
        mesh_peer_list_size=mesh_peer_list_size,
        ws_port=ws_port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        log_level=level,
    )
    try:
        settings.check()
        target = parse_database_url(database)
    except (SettingsError, DatabaseUrlError) as exc:
        _fail(str(exc))
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level != "debug":
        # Alembic announces every plugin at INFO on each start; only problems matter here.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    code = asyncio.run(_serve(settings, target.describe()))
    raise typer.Exit(code)


def _fail(message: str) -> None:
    typer.echo(f"hp2p homs: {message}", err=True)
    raise typer.Exit(2)


async def _preflight(settings: HomsSettings) -> str | None:
    """Open the database and migrate it before listening, so errors are clear and early."""
    store = build_store(settings)
    try:
        await store.start()
    except Exception as exc:
        return (
            f"cannot open or migrate the database ({type(exc).__name__}: {exc}). "
            "Check --database, that the server is running and reachable, and the permissions."
        )
    finally:
        await store.close()
    return None


async def _serve(settings: HomsSettings, database: str) -> int:
    problem = await _preflight(settings)
    if problem is not None:
        typer.echo(f"hp2p homs: {problem}", err=True)
        return 1
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        access_log=settings.log_level == "debug",
        server_header=False,
    )
    server = _AnnouncingServer(config)
    server.announcement = database
    server.scheme = "https" if settings.tls_cert else "http"
    await server.serve()
    if not server.started:
        typer.echo(
            f"hp2p homs: could not serve on {settings.host}:{settings.port} (see the log above; "
            "is the port already in use? try --port)",
            err=True,
        )
        return 1
    return 0


class _AnnouncingServer(uvicorn.Server):
    """uvicorn server that prints the one start-up line once its socket listens.

    Printing after ``startup`` (not before) gives the real port when ``--port 0`` was asked
    for, and never announces a server that failed to bind.
    """

    announcement: str = ""
    scheme: str = "http"

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        port = self.config.port
        for srv in self.servers:
            for sock in srv.sockets:
                port = sock.getsockname()[1]
                break
        print(
            f"hp2p homs: serving {self.scheme}://{self.config.host}:{port} "
            f"(database {self.announcement})",
            flush=True,
            file=sys.stdout,
        )
