"""Honest placeholders for sub-commands whose issue has not landed yet."""

from __future__ import annotations

from typing import NoReturn

import typer


def not_yet(command: str, issue: int) -> NoReturn:
    """Say plainly that a command does not exist yet, and exit with status 2.

    A stub that printed plausible output would be worse than none: a user could mistake it
    for a result.
    """
    typer.echo(
        f"{command}: not implemented yet (tracked as issue #{issue}). "
        "Nothing was run. See README.md for what works today.",
        err=True,
    )
    raise typer.Exit(code=2)
