"""``hp2p peer``: parse and check the options, then run the peer (:mod:`hp2p.peer.daemon`).

This module is only the command line: options, their help, and the merge of TOML file,
environment and flags (:mod:`hp2p.peer.settings`). Once everything is valid the process replaces
itself with the lean runtime in :mod:`hp2p.peer.daemon`, which never loads the CLI stack
(typer runs pydantic; together ~10 MB of RSS in every peer process, measured).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hp2p.peer.settings import (
    SettingsError,
    SubMeshSigning,
    merge,
    parse_assignments,
    settings_table,
)

EXAMPLES = """
Examples:

  hp2p peer --homs http://127.0.0.1:8081 --create chat          # a new overlay, as its root

  hp2p peer --homs http://127.0.0.1:8081 --join chat --api 127.0.0.1:8700

  hp2p peer --join 0b5f…-overlay-id --listen 127.0.0.1:7001 --id alice --json-events

  hp2p peer --join chat --set max_children=8 --set heartbeat_interval=0.5 --config peer.toml

  hp2p peer --join chat --faults delay=0.02,loss=0.01 --fault-seed 7 --stdin

  hp2p peer --join blocks       # a SubTree or SubMesh works too (docs/sub-overlays.md)

  hp2p peer --join blocks --require-signatures --source-key ed25519:3b6a…   # pinned source

With --api: curl -X POST --data-binary hi http://127.0.0.1:8700/publish ; GET /status,
GET /tree, WebSocket /subscribe (docs/peer.md).
"""


def _epilog() -> str:
    lines = [EXAMPLES, "Settings (TOML key, env HP2P_<KEY>, or --set KEY=VALUE; default):", ""]
    for key, default, doc in settings_table():
        lines.append(f"  {key} = {default}: {doc}")
        lines.append("")
    return "\n".join(lines)


EPILOG = _epilog()


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"hp2p peer: {message}", err=True)
    raise typer.Exit(code)


def peer(
    homs: Annotated[
        str | None,
        typer.Option("--homs", help="HOMS URL, e.g. http://127.0.0.1:8081 (setting `homs`)."),
    ] = None,
    create: Annotated[
        str | None,
        typer.Option("--create", help="Create a CoreTree overlay with this TITLE and join it."),
    ] = None,
    join: Annotated[
        str | None, typer.Option("--join", help="Join the overlay with this OVERLAY-ID or TITLE.")
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="HOST:PORT for R2 over TCP (default 127.0.0.1:0, any port)."),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            "--api", help="Serve the local HTTP + WebSocket API on HOST:PORT (default: off)."
        ),
    ] = None,
    peer_id: Annotated[
        str | None, typer.Option("--id", help="Peer-id (default: peer-<random hex>).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file with settings (keys listed below)."),
    ] = None,
    access_key: Annotated[
        str | None,
        typer.Option("--access-key", help="Access key: closed overlay on --create; for --join."),
    ] = None,
    expires: Annotated[
        int | None, typer.Option("--expires", help="HOMP expires in seconds (default 30).")
    ] = None,
    faults: Annotated[
        str | None,
        typer.Option("--faults", help="Inject faults on every link: delay=0.02,loss=0.01,…"),
    ] = None,
    fault_seed: Annotated[
        int | None, typer.Option("--fault-seed", help="Seed of --faults (default 0).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any setting as KEY=VALUE (repeatable); see the list below."),
    ] = None,
    json_events: Annotated[
        bool,
        typer.Option(
            "--json-events",
            help="Print JSON lines to stdout (joined, deliver, published, path, scan …) "
            "instead of the one human 'joined' line.",
        ),
    ] = False,
    stdin: Annotated[
        bool,
        typer.Option(
            "--stdin",
            help="Read commands from stdin: 'publish TEXT', 'scan', 'status', 'leave'. "
            "End of input leaves.",
        ),
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Log level on stderr: error, warning, info, debug.")
    ] = "warning",
    source_key: Annotated[
        str | None,
        typer.Option(
            "--source-key",
            metavar="ed25519:HEX",
            help="SubMesh only: pin the source's public key (else the key the HOMS records).",
        ),
    ] = None,
    require_signatures: Annotated[
        bool,
        typer.Option(
            "--require-signatures",
            help="SubMesh only: accept only manifests signed by the source's key.",
        ),
    ] = False,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            metavar="PATH",
            help="SubMesh source only: the Ed25519 key file that signs its manifests.",
        ),
    ] = None,
) -> None:
    """Run a hybrid peer: join (or create) an overlay, attach to its tree, relay and deliver.

    Prints exactly one line once attached (peer-id, overlay-id, ticket, R2 and API addresses),
    then runs until Ctrl-C / SIGTERM, when it releases its paths and leaves the HOMS.
    """
    level = log_level.upper()
    if level not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        _fail(f"--log-level must be error, warning, info or debug, not {log_level!r}", 2)
    flags: dict[str, Any] = {
        "homs": homs,
        "create": create,
        "join": join,
        "listen": listen,
        "api": api,
        "peer_id": peer_id,
        "access_key": access_key,
        "expires": expires,
        "faults": faults,
        "fault_seed": fault_seed,
    }
    try:
        flags.update(parse_assignments(set_ or []))
        node_settings, core_config = merge(file=config, flags=flags)
        if node_settings.create is None and node_settings.join is None:
            raise SettingsError("give --create TITLE or --join OVERLAY-ID-OR-TITLE")
        if node_settings.faults:
            from hp2p.transport.faults import FaultPlan

            FaultPlan.parse(node_settings.faults)
    except (SettingsError, ValueError) as exc:
        _fail(str(exc), 2)
    signing = SubMeshSigning(
        source_key=source_key,
        require_signatures=require_signatures,
        signing_key=str(signing_key) if signing_key else None,
    )
    if node_settings.join is not None:  # a SubMesh peer runs its own runtime (issue #7)
        from hp2p.peer.mesh_daemon import exec_if_submesh

        exec_if_submesh(
            node_settings, json_events=json_events, stdin=stdin, log_level=level, signing=signing
        )
    if signing.given:
        _fail(
            "--source-key, --require-signatures and --signing-key apply to a SubMesh only; "
            f"{node_settings.join or node_settings.create!r} is not one (drop them, or "
            "check --join)",
            2,
        )
    from hp2p.peer.daemon import exec_daemon

    exec_daemon(node_settings, core_config, json_events=json_events, stdin=stdin, log_level=level)
