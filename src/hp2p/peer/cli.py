"""``hp2p peer``: parse and check the options, then run the peer (:mod:`hp2p.peer.daemon`).

This module is only the command line: options, their help, and the merge of TOML file,
environment and flags into the one settings object (:mod:`hp2p.peer.settings`). Once
everything is valid the process replaces itself with the lean runtime in
:mod:`hp2p.peer.daemon`, which never loads the CLI stack (typer runs pydantic; together ~10 MB
of RSS in every peer process, measured). That runtime runs every overlay type: it asks the
HOMS what ``--join`` names and runs a tree peer or a SubMesh peer in the same process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hp2p.peer.settings import SettingsError, merge, parse_assignments, settings_table

EXAMPLES = """
Examples:

  hp2p peer --homs http://127.0.0.1:8081 --create chat          # a new overlay, as its root

  hp2p peer --homs http://127.0.0.1:8081 --create chat --new    # a second overlay titled chat

  hp2p peer --homs http://127.0.0.1:8081 --join chat --api 127.0.0.1:8700

  hp2p peer --join 0b5f…-overlay-id --listen 127.0.0.1:7001 --id alice --json-events

  hp2p peer --join chat --print         # each message as one line: source #seq (size): text

  hp2p peer --join chat --json-events --events-payload     # deliver events with data_b64, text

  hp2p peer --join chat --set max_children=8 --set heartbeat_interval=0.5 --config peer.toml

  hp2p peer --join chat --faults delay=0.02,loss=0.01 --fault-seed 7 --stdin

  hp2p peer --join chat --tls --listen 0.0.0.0:7000     # confidential links (tls://)

  hp2p peer --join chat --webrtc --ice-server stun:stun.example.org:3478   # behind a NAT

  hp2p peer --join blocks       # a SubTree or SubMesh works too (docs/sub-overlays.md)

  hp2p peer --join blocks --store ./pieces --set target_neighbours=12    # a SubMesh peer

  hp2p peer --create blocks --parent 7f3c…-coretree-id --id src --set piece_size=65536 --stdin

  hp2p peer --join blocks --standby --set takeover_after=2 --signing-key ./block-source.ed25519.pem

  hp2p peer --join blocks --require-signatures --source-key ed25519:3b6a…   # pinned source

With --api: every request needs the token of the joined line (api-token=…, also in the 0600
file named by the JSON joined event's api_token_file):
  curl -H "Authorization: Bearer $TOKEN" --data-binary hi http://127.0.0.1:8700/publish
GET /status, GET /tree, WebSocket /subscribe (docs/peer.md). A non-loopback --api address
needs --api-public.

Which settings apply depends on the overlay: shell settings always, tree settings on a
CoreTree or SubTree, SubMesh settings on a SubMesh. A setting given that does not apply is
refused (status 2); SECTION.KEY (--set mesh.piece_size=65536, or a TOML table [tree], [mesh],
[submesh]) applies only when its section does.
"""

_HEADINGS = {
    "node": "Shell settings (every peer)",
    "tree": "Tree settings (CoreTree, SubTree)",
    "mesh": "SubMesh settings (core)",
    "submesh": "SubMesh settings (shell)",
}


def _epilog() -> str:
    lines = [EXAMPLES, "Settings (TOML key, env HP2P_<KEY>, or --set KEY=VALUE; default):"]
    section = ""
    for where, key, default, doc in settings_table():
        if where != section:
            section = where
            lines += ["", f"{_HEADINGS[where]}:", ""]
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
        typer.Option(
            "--create",
            help="Create a CoreTree overlay with this TITLE and join it; prints its admin key "
            "once and stores it 0600 for `hp2p overlay` (docs/operate.md).",
        ),
    ] = None,
    new: Annotated[
        bool,
        typer.Option(
            "--new", help="With --create: make it even if an overlay with this TITLE exists."
        ),
    ] = False,
    join: Annotated[
        str | None, typer.Option("--join", help="Join the overlay with this OVERLAY-ID or TITLE.")
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="HOST:PORT for R2 over TCP (default 127.0.0.1:0, any port)."),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            help="tcp://HOST:PORT other peers dial to reach this one (default: from --listen; "
            "never 0.0.0.0).",
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="R2 over TLS 1.3 (advertised as tls://HOST:PORT); the certificate comes from "
            "the membership key, no CA needed (docs/security.md).",
        ),
    ] = False,
    webrtc: Annotated[
        bool,
        typer.Option(
            "--webrtc",
            help="Also use WebRTC data channels, dialled by peer-id through the HOMS signalling "
            "WebSocket; advertises ws://HOMS/ws unless --advertise gives tcp:// (needs the "
            "webrtc extra, aiortc; docs/peer.md).",
        ),
    ] = False,
    ice_server: Annotated[
        list[str] | None,
        typer.Option(
            "--ice-server",
            help="ICE server for --webrtc (repeatable): stun:HOST:PORT or "
            "turn:USER:CREDENTIAL@HOST:PORT. None: host candidates only.",
        ),
    ] = None,
    ice_host: Annotated[
        list[str] | None,
        typer.Option(
            "--ice-host",
            help="Local address to gather WebRTC host candidates on (repeatable; default: "
            "every non-loopback interface).",
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            "--api", help="Serve the local HTTP + WebSocket API on HOST:PORT (default: off)."
        ),
    ] = None,
    api_public: Annotated[
        bool,
        typer.Option(
            "--api-public",
            help="Allow --api on a non-loopback address (other machines can reach it; only "
            "the token protects it).",
        ),
    ] = False,
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
    print_deliveries: Annotated[
        bool,
        typer.Option(
            "--print",
            help="Print each delivered message (SubMesh: object) as one line for a person: "
            "source, sequence, size, the text when it is printable UTF-8 else hex, cut to "
            "200 characters / 32 bytes. Not with --json-events (see --events-payload).",
        ),
    ] = False,
    events_payload: Annotated[
        bool,
        typer.Option(
            "--events-payload",
            help="With --json-events: deliver (SubMesh: delivered) events carry the payload: "
            "data_b64 (base64), and text when it is UTF-8, with app_id and payload_type.",
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
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the core's random choices (default: random)."),
    ] = None,
    parent: Annotated[
        str | None,
        typer.Option(
            "--parent",
            metavar="OVERLAY-ID",
            help="With --create: make a SubMesh under this CoreTree, this peer its source.",
        ),
    ] = None,
    parent_admin_key: Annotated[
        str | None,
        typer.Option(
            "--parent-admin-key",
            metavar="KEY",
            envvar="HP2P_PARENT_ADMIN_KEY",
            help="With --parent: the CoreTree's admin key (its owner's consent to the SubMesh).",
        ),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", help="SubMesh only: directory of a persistent piece store (default: memory)."
        ),
    ] = None,
    standby: Annotated[
        bool,
        typer.Option(
            "--standby", help="SubMesh only: standby for the source (publishes when it is gone)."
        ),
    ] = False,
    unsigned: Annotated[
        bool,
        typer.Option("--unsigned", help="SubMesh source only: publish unsigned manifests."),
    ] = False,
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
    security: Annotated[
        str | None,
        typer.Option(
            "--security",
            metavar="credentials|reference-compat",
            help="With --create: members need HOMS credentials (default), or reference-compat "
            "(insecure; admits the reference peers, which have no key).",
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            metavar="FILE",
            help="Ed25519 key file for the membership credential (made 0600 if missing; "
            "default: a fresh key per run).",
        ),
    ] = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            metavar="PATH",
            help="SubMesh source (or standby): the Ed25519 key file that signs its manifests.",
        ),
    ] = None,
) -> None:
    """Run a hybrid peer: join (or create) an overlay of any type and serve it.

    On a CoreTree or SubTree it attaches to the tree, relays and delivers messages; on a
    SubMesh it pulls and serves pieces and delivers whole verified objects. Prints exactly one
    line once joined (peer-id, overlay-id, addresses …), then runs until Ctrl-C / SIGTERM, when
    it leaves cleanly.
    """
    level = log_level.upper()
    if level not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        _fail(f"--log-level must be error, warning, info or debug, not {log_level!r}", 2)
    if print_deliveries and json_events:
        _fail(
            "--print writes lines for people and --json-events JSON lines for programs: give "
            "one (with --json-events, --events-payload puts the payload in deliver events)",
            2,
        )
    if events_payload and not json_events:
        _fail("--events-payload adds the payload to JSON events: give --json-events too", 2)
    flags: dict[str, Any] = {
        "homs": homs,
        "create": create,
        "new": True if new else None,
        "join": join,
        "listen": listen,
        "advertise": advertise,
        "tls": True if tls else None,
        "webrtc": True if webrtc else None,
        "ice_servers": ",".join(ice_server) if ice_server else None,
        "ice_hosts": ",".join(ice_host) if ice_host else None,
        "api": api,
        "api_public": True if api_public else None,
        "peer_id": peer_id,
        "access_key": access_key,
        "expires": expires,
        "faults": faults,
        "fault_seed": fault_seed,
        "seed": seed,
        "parent": parent,
        "parent_admin_key": parent_admin_key,
        "store": str(store) if store else None,
        "standby": True if standby else None,
        "unsigned": True if unsigned else None,
        "source_key": source_key,
        "require_signatures": True if require_signatures else None,
        "signing_key": str(signing_key) if signing_key else None,
        "security": security,
        "key_file": str(key) if key else None,
    }
    try:
        flags.update(parse_assignments(set_ or []))
        settings = merge(file=config, flags=flags)
        if settings.node.create is None and settings.node.join is None:
            raise SettingsError("give --create TITLE or --join OVERLAY-ID-OR-TITLE")
        if settings.node.faults:
            from hp2p.transport.faults import FaultPlan

            FaultPlan.parse(settings.node.faults)
        if settings.node.create is not None:  # known without asking the HOMS
            runtime = settings.created_runtime()
            kind = "a SubMesh (--parent)" if runtime == "mesh" else "a CoreTree (no --parent)"
            settings.check(runtime, f"--create makes {kind}")
    except (SettingsError, ValueError) as exc:
        _fail(str(exc), 2)
    from hp2p.peer.daemon import Output, exec_daemon

    output = Output(json_events, stdin, print_deliveries, events_payload)
    exec_daemon(settings, output, log_level=level)
