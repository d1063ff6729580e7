"""Errors that the tree peer and the SubMesh peer both raise to their applications.

Kept apart from either implementation so that a CoreTree or SubTree peer process, which never
runs the SubMesh code, does not load it (and its signature library) to name an error.
"""

from __future__ import annotations

__all__ = ["NotSourceError", "SettingsError"]


class SettingsError(ValueError):
    """A setting is unknown, badly typed, impossible, or does not apply to this overlay.

    The one error of every settings section (shell, tree core, SubMesh core, SubMesh shell):
    the message names the key, says what is wrong and what to do.
    """


class NotSourceError(PermissionError):
    """Only the overlay's source peer may publish on a SubMesh/SubTree (Q.4100 §6)."""
