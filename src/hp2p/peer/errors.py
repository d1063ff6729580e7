"""Errors that the tree peer and the SubMesh peer both raise to their applications.

Kept apart from either implementation so that a CoreTree or SubTree peer process, which never
runs the SubMesh code, does not load it (and its signature library) to name an error.
"""

from __future__ import annotations

__all__ = ["NotSourceError"]


class NotSourceError(PermissionError):
    """Only the overlay's source peer may publish on a SubMesh/SubTree (Q.4100 §6)."""
