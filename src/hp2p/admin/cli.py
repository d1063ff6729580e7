"""``hp2p overlay list|show|remove|modify``: the administrator's view of a HOMS's overlays.

``remove`` and ``modify`` need the overlay's admin key: ``--admin-key``, ``$HP2P_ADMIN_KEY``,
or the one ``hp2p peer --create`` stored (:mod:`hp2p.peer.admin_keys`). ``show`` opens a
closed overlay with the operator token or the admin key. Errors are one line; exit status 2
for a usage error, 1 when the HOMS refuses or cannot be reached.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from hp2p.admin.homs_admin import AdminError, Credentials, HomsAdmin, created_text
from hp2p.peer.admin_keys import (
    AdminKeyFileError,
    admin_key_path,
    forget_admin_key,
    load_admin_key,
    store_admin_key,
)
from hp2p.peer.settings import SettingsError, check_homs_url

EPILOG = """
Examples:

  hp2p overlay list --homs http://127.0.0.1:8081

  hp2p overlay list --json | jq '.[] | select(.num_peers == 0)'

  hp2p overlay show chat --operator-token "$(cat hp2p-operator-token)"

  hp2p overlay remove 0b5f…-overlay-id     # with the key --create stored

  hp2p overlay remove 0b5f…-overlay-id --admin-key "$KEY"

  hp2p overlay modify chat --title chat-2 --description "the team chat"

  hp2p overlay modify chat --rotate-admin-key  # prints and stores the new key

--homs defaults to $HP2P_HOMS, else http://127.0.0.1:8081.

Exit status: 0 done, 1 the HOMS refused (or is unreachable), 2 usage error. See docs/operate.md.
"""

app = typer.Typer(
    name="overlay",
    help="List, show, remove and modify the overlays of a HOMS (needs the admin key to change).",
    no_args_is_help=True,
    epilog=EPILOG,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)

HomsOption = Annotated[
    str,
    typer.Option("--homs", envvar="HP2P_HOMS", help="HOMS URL, e.g. http://127.0.0.1:8081."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON on stdout instead of a table.")]
AdminKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="HP2P_ADMIN_KEY",
        help="The overlay's admin key (default: the one `hp2p peer --create` stored).",
        show_envvar=True,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--operator-token",
        envvar="HP2P_OPERATOR_TOKEN",
        help="The HOMS's operator token (opens closed overlays for `show`).",
        show_envvar=True,
    ),
]
OverlayArgument = Annotated[str, typer.Argument(help="OVERLAY-ID, or a title only one has.")]
DEFAULT_HOMS = "http://127.0.0.1:8081"


def _fail(message: str, status: int) -> NoReturn:
    print(f"hp2p overlay: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(status)


@contextmanager
def _homs(url: str) -> Iterator[HomsAdmin]:
    """The HOMS at ``url``; any :class:`AdminError` inside ends the command with its status."""
    try:
        check_homs_url(url)
    except SettingsError as exc:
        _fail(str(exc), 2)
    try:
        with HomsAdmin(url) as homs:
            yield homs
    except AdminError as exc:
        _fail(str(exc), exc.status)


def _admin_key(homs: str, overlay_id: str, given: str | None) -> str:
    if given:
        return given
    try:
        stored = load_admin_key(homs, overlay_id)
    except AdminKeyFileError as exc:
        _fail(str(exc), 1)
    if stored is None:
        _fail(
            f"no admin key for {overlay_id}: give --admin-key (or $HP2P_ADMIN_KEY); none is "
            f"stored in {admin_key_path(homs, overlay_id)}",
            2,
        )
    return stored


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _kind(o: dict[str, Any]) -> str:
    return f"{o.get('type', '?')}/{o.get('sub-type', '?')}"


@app.command("list", epilog=EPILOG)
def list_overlays(homs: HomsOption = DEFAULT_HOMS, as_json: JsonOption = False) -> None:
    """Every overlay of the HOMS: id, title, type/sub-type, parent, peers, created."""
    with _homs(homs) as client:
        overlays = client.overlays()
    if as_json:
        _print_json(overlays)
        return
    table = Table("OVERLAY-ID", "TITLE", "TYPE", "PARENT", "PEERS", "CREATED (UTC)")
    for o in overlays:
        table.add_row(
            str(o.get("overlay-id")),
            str(o.get("title")),
            _kind(o),
            str(o.get("parent-overlay-id") or "-"),
            str(o.get("num_peers", "-")),
            created_text(o.get("created")),
        )
    Console(width=200).print(table)
    typer.echo(f"{len(overlays)} overlay(s) on {homs}")


@app.command("show", epilog=EPILOG)
def show(
    overlay: OverlayArgument,
    homs: HomsOption = DEFAULT_HOMS,
    admin_key: AdminKeyOption = None,
    operator_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One overlay: its fields, members (with liveness) and sub-overlays."""
    with _homs(homs) as client:
        found = client.resolve(overlay)
        oid = str(found["overlay-id"])
        key = admin_key
        if key is None and not operator_token:
            try:
                key = load_admin_key(homs, oid)
            except AdminKeyFileError:
                key = None
        status = client.status(oid, Credentials(operator_token, key))
    if as_json:
        _print_json(status)
        return
    _print_status(status)


def _print_status(status: dict[str, Any]) -> None:
    o = status.get("overlay") or {}
    console = Console(width=200)
    for name in ("overlay-id", "title", "owner-id", "auth-type", "parent-overlay-id"):
        console.print(f"{name:>18}: {o.get(name) if o.get(name) is not None else '-'}")
    console.print(f"{'type':>18}: {_kind(o)}")
    console.print(f"{'created (UTC)':>18}: {created_text(o.get('created'))}")
    console.print(f"{'peers':>18}: {o.get('num_peers')} ({o.get('num_active')} with a parent)")
    members = Table(
        "PEER-ID", "TICKET", "ADDRESS", "PRIMARY", "LAST SEEN", "SUSPECT", title="members"
    )
    now = time.time()
    for m in status.get("peers") or []:
        seen = m.get("last_seen")
        age = f"{now - seen:.0f} s ago" if isinstance(seen, int | float) else "-"
        members.add_row(
            str(m.get("peer-id")),
            str(m.get("ticket-id")),
            str(m.get("address")),
            str(m.get("num_primary")),
            age,
            "yes" if m.get("suspect_since") else "",
        )
    console.print(members)
    subs = Table("OVERLAY-ID", "TITLE", "TYPE", "SOURCE", "PEERS", title="sub-overlays")
    for s in o.get("sub-overlays") or []:
        subs.add_row(
            str(s.get("overlay-id")),
            str(s.get("title")),
            _kind(s),
            str(s.get("source-peer-id")),
            str(s.get("num_peers")),
        )
    console.print(subs)


@app.command("remove", epilog=EPILOG)
def remove(
    overlay: OverlayArgument,
    homs: HomsOption = DEFAULT_HOMS,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove an overlay with its members (HybridOverlayRemoval); needs its admin key."""
    with _homs(homs) as client:
        found = client.resolve(overlay)
        oid = str(found["overlay-id"])
        key = _admin_key(homs, oid, admin_key)
        client.remove(oid, str(found.get("owner-id")), key)
    forget_admin_key(homs, oid)
    if as_json:
        _print_json({"removed": oid, "title": found.get("title")})
    else:
        typer.echo(f"removed overlay {oid} ({found.get('title')!r})")


@app.command("modify", epilog=EPILOG)
def modify(
    overlay: OverlayArgument,
    homs: HomsOption = DEFAULT_HOMS,
    admin_key: AdminKeyOption = None,
    title: Annotated[str | None, typer.Option("--title", help="A new title.")] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="A new description.")
    ] = None,
    access_key: Annotated[
        str | None, typer.Option("--access-key", help="A new access key (closed overlays).")
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Transfer the overlay to this owner-id.")
    ] = None,
    rotate: Annotated[
        bool,
        typer.Option("--rotate-admin-key", help="Replace the admin key (printed and stored)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Change title, description, access key or owner, or rotate the admin key."""
    if not any((title, description, access_key, owner, rotate)):
        _fail(
            "nothing to change: give --title, --description, --access-key, --owner or "
            "--rotate-admin-key",
            2,
        )
    with _homs(homs) as client:
        found = client.resolve(overlay)
        oid = str(found["overlay-id"])
        key = _admin_key(homs, oid, admin_key)
        body, new_key = _modify_body(found, key, title, description, access_key, owner, rotate)
        answer = client.modify(body)
    if new_key is not None or admin_key is None:
        _store_after(homs, oid, new_key or key, str(title or found.get("title") or ""))
    if as_json:
        _print_json({**answer, "admin-key": new_key} if new_key else answer)
        return
    changed = ", ".join(
        name
        for name, value in (
            ("title", title),
            ("description", description),
            ("access key", access_key),
            ("owner", owner),
            ("admin key", rotate),
        )
        if value
    )
    typer.echo(f"modified overlay {oid}: {changed}")
    if new_key is not None:
        typer.echo(f"new admin key {new_key} (stored in {admin_key_path(homs, oid)})")


def _modify_body(
    found: dict[str, Any],
    key: str,
    title: str | None,
    description: str | None,
    access_key: str | None,
    owner: str | None,
    rotate: bool,
) -> tuple[dict[str, Any], str | None]:
    auth: dict[str, Any] = {"admin_key": key}
    if access_key is not None:
        auth["access_key"] = access_key
    target: dict[str, Any] = {
        "overlay-id": found["overlay-id"],
        "owner-id": found.get("owner-id"),
        "auth": auth,
    }
    if title is not None:
        target["title"] = title
    if description is not None:
        target["description"] = description
    body: dict[str, Any] = {"overlay": target}
    new_key = secrets.token_urlsafe(24) if rotate else None
    ownership: dict[str, Any] = {}
    if owner is not None:
        ownership["owner-id"] = owner
    if new_key is not None:
        ownership["admin-key"] = new_key
    if ownership:
        body["ownership"] = ownership
    return body, new_key


def _store_after(homs: str, overlay_id: str, key: str, title: str) -> None:
    """Keep the (new) key where `remove` finds it; a failure only warns: the key is printed."""
    try:
        store_admin_key(homs, overlay_id, key, title)
    except OSError as exc:
        print(f"hp2p overlay: the admin key was not stored ({exc})", file=sys.stderr)
