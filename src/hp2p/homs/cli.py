"""``hp2p homs``: run a HOMS (hybrid overlay management server) on uvicorn."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from hp2p.homs.app import build_store, create_app
from hp2p.homs.connections import ConnectionLimits, guarded_protocol
from hp2p.homs.credentials import KeyDirError, KeyRing
from hp2p.homs.db import DatabaseUrlError, parse_database_url
from hp2p.homs.settings import DEFAULT_DATABASE, HomsSettings, SettingsError
from hp2p.transport.listen import listening_socket
from hp2p.trust.keys import KeyFileError
from hp2p.wire.signalling import MAX_MESSAGE_BYTES

#: Where ``hp2p homs`` keeps its operator token by default: beside the default SQLite file,
#: in the working directory (the HOMS's state directory unless told otherwise).
DEFAULT_OPERATOR_TOKEN_FILE = "hp2p-operator-token"

EPILOG = """
Examples:

  hp2p homs                  # 127.0.0.1:8081, SQLite file ./hp2p.db

  hp2p homs --port 9000 --database sqlite:////var/lib/hp2p/homs.db

  hp2p homs --database postgresql://postgres@127.0.0.1:5432/postgres

  hp2p homs --delete-empty-overlays --expiry-sweep 30     # like the ETRI HOMS

  hp2p homs --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem

  hp2p homs --ws-port 8082 --signalling-profile etri-2023   # for reference peers/web UI

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
        int | None,
        typer.Option(
            "--ws-port",
            help=(
                "Also serve the signalling/monitoring WebSocket on this port (the reference "
                "peer and web UI use ws://HOST:8082). It is always served on --port too, at "
                "/ws and at the bare path."
            ),
        ),
    ] = None,
    signalling_profile: Annotated[
        str,
        typer.Option(
            "--signalling-profile",
            help=(
                "secure: a socket registers a peer-id only with that peer's password, relays "
                "only within its overlays, errors are answered as JSON. etri-2023: the "
                "reference's open, silent relay (reference peers send no password)."
            ),
        ),
    ] = "secure",
    ws_rate: Annotated[
        float,
        typer.Option(
            "--ws-rate",
            help="WebSocket messages per second allowed per socket (beyond: closed with 1008).",
        ),
    ] = 50.0,
    ws_burst: Annotated[
        int, typer.Option("--ws-burst", help="Burst of WebSocket messages allowed per socket.")
    ] = 200,
    admin_key_rate: Annotated[
        float,
        typer.Option(
            "--admin-key-rate",
            help="Wrong admin keys allowed per second per client address (each overlay: 4x); "
            "beyond, 429 with Retry-After.",
        ),
    ] = 0.1,
    admin_key_burst: Annotated[
        int,
        typer.Option(
            "--admin-key-burst", help="Burst of wrong admin keys per client address (overlay: 4x)."
        ),
    ] = 10,
    create_rate: Annotated[
        float,
        typer.Option("--create-rate", help="Overlay creations per second per client address."),
    ] = 1.0,
    create_burst: Annotated[
        int, typer.Option("--create-burst", help="Burst of overlay creations per client address.")
    ] = 60,
    limit_table_size: Annotated[
        int,
        typer.Option(
            "--limit-table-size",
            help="Entries per rate-limit table (least recently used forgotten first).",
        ),
    ] = 10_000,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            help="Seconds a client has to send a request's line and headers (then: closed).",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            help="Seconds a client has to send a request's body after its headers.",
        ),
    ] = 30.0,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout", help="Seconds a keep-alive connection may stay idle between requests."
        ),
    ] = 5.0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            help="Concurrent HTTP connections; at the cap the longest-idle one is closed for a "
            "newcomer, and a newcomer is refused only when all are busy.",
        ),
    ] = 1000,
    operator_token_file: Annotated[
        Path,
        typer.Option(
            "--operator-token-file",
            help="File of the operator token that WebSocket monitors present (secure profile); "
            "created 0600 with a random token if missing, read if present.",
        ),
    ] = Path(DEFAULT_OPERATOR_TOKEN_FILE),
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
    key_dir: Annotated[
        Path | None,
        typer.Option(
            "--key-dir",
            help=(
                "Directory of the Ed25519 keys that sign membership credentials (files 0600). "
                "Default: DATABASE.keys beside a SQLite file, else ~/.local/state/hp2p/homs-keys."
            ),
        ),
    ] = None,
    credential_ttl: Annotated[
        int,
        typer.Option(
            "--credential-ttl",
            help="Seconds a membership credential is valid; members renew it on refresh.",
        ),
    ] = 120,
    default_security: Annotated[
        str,
        typer.Option(
            "--default-security",
            help=(
                "Security of an overlay created without `security`: credentials (members need "
                "a HOMS-signed credential) or reference-compat (insecure; reference peers)."
            ),
        ),
    ] = "credentials",
    rotate_key: Annotated[
        bool,
        typer.Option(
            "--rotate-key",
            help=(
                "Make a new credential signing key in --key-dir and exit; the old key stays "
                "published until every credential it signed has expired."
            ),
        ),
    ] = False,
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
        signalling_profile=signalling_profile,
        ws_rate=ws_rate,
        ws_burst=ws_burst,
        admin_key_rate=admin_key_rate,
        admin_key_burst=admin_key_burst,
        create_rate=create_rate,
        create_burst=create_burst,
        limit_table_size=limit_table_size,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        tls_cert=tls_cert,
        tls_key=tls_key,
        log_level=level,
        key_dir=key_dir,
        credential_ttl=credential_ttl,
        default_security=default_security,
    )
    try:
        settings.check()
        target = parse_database_url(database)
    except (SettingsError, DatabaseUrlError) as exc:
        _fail(str(exc))
    if rotate_key:
        try:
            ring = KeyRing(settings.keys_path(), ttl=settings.credential_ttl)
            new = ring.rotate()
        except (KeyDirError, KeyFileError, OSError) as exc:
            _fail(f"cannot rotate the credential key: {exc}")
        typer.echo(f"new credential signing key {new} in {settings.keys_path()}")
        raise typer.Exit(0)
    if settings.signalling_profile == "secure":
        try:
            token = operator_token(operator_token_file)
        except OSError as exc:
            _fail(f"cannot read or create --operator-token-file {operator_token_file}: {exc}")
        settings = dataclasses.replace(
            settings, operator_token=token, operator_token_file=operator_token_file
        )
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level != "debug":
        # Alembic announces every plugin at INFO on each start; only problems matter here.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        code = runner.run(_serve(settings, target.describe()))
    raise typer.Exit(code)


def operator_token(path: Path) -> str:
    """The operator token in ``path``, created (0600, random) if the file is missing or empty.

    Kept in a file, not only printed, so that monitoring tools read it without scraping the
    log and a restart keeps it; 0600 because whoever reads it sees every overlay's members.
    Re-tightened to 0600 if someone loosened it.
    """
    if path.is_file():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            path.chmod(0o600)
            return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    os.replace(temporary, path)
    return token


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency on Linux): measured with
    ``hp2p bench homs``, uvloop with uvicorn's httptools parser cut the HOMS CPU per request
    by about a third (docs/homs.md). ``None``: the standard asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


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
    try:
        sockets = [_listen(settings.host, settings.port)]
        if settings.ws_port is not None:
            sockets.append(_listen(settings.host, settings.ws_port))
    except OSError as exc:
        typer.echo(
            f"hp2p homs: cannot listen on {settings.host} ({exc.strerror or exc}): is the port "
            "already in use? try another --port / --ws-port",
            err=True,
        )
        return 1
    protocol, guard = guarded_protocol(
        ConnectionLimits(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=settings.max_connections,
        )
    )
    app.state.connection_guard = guard
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,
        timeout_keep_alive=max(1, round(settings.idle_timeout)),
        log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        access_log=settings.log_level == "debug",
        server_header=False,
        # Signalling messages are bounded (hp2p.wire.signalling); no compression, so a small
        # frame cannot inflate into a large one.
        ws_max_size=MAX_MESSAGE_BYTES,
        ws_per_message_deflate=False,
    )
    server = _AnnouncingServer(config)
    server.announcement = database
    if settings.operator_token is not None:
        server.announcement += (
            f", operator token {settings.operator_token} in {settings.operator_token_file}"
        )
    server.scheme = "https" if settings.tls_cert else "http"
    server.ws_port = settings.ws_port
    await server.serve(sockets=sockets)
    if not server.started:
        typer.echo(
            f"hp2p homs: could not serve on {settings.host}:{settings.port} (see the log above; "
            "is the port already in use? try --port)",
            err=True,
        )
        return 1
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A bound listening socket, so that both --port and --ws-port are served by one server."""
    sock = listening_socket(host, port, backlog=2048)
    sock.setblocking(False)
    return sock


class _AnnouncingServer(uvicorn.Server):
    """uvicorn server that prints the one start-up line once its socket listens.

    Printing after ``startup`` (not before) gives the real port when ``--port 0`` was asked
    for, and never announces a server that failed to bind.
    """

    announcement: str = ""
    scheme: str = "http"
    ws_port: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        port = self.config.port
        # The first listener is --port (a --ws-port listener comes after it).
        if self.servers and self.servers[0].sockets:
            port = self.servers[0].sockets[0].getsockname()[1]
        extra = f", WebSocket also on port {self.ws_port}" if self.ws_port is not None else ""
        print(
            f"hp2p homs: serving {self.scheme}://{self.config.host}:{port} "
            f"(database {self.announcement}{extra})",
            flush=True,
            file=sys.stdout,
        )
