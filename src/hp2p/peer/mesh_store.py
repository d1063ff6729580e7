"""Where a SubMesh peer keeps the pieces it holds: in memory, or on disk to outlive the process.

Q.4100 §9.1: the SubMesh "will stack the received data for additional use, similar to a
database". The store is what makes that true: every verified piece (manifests included) is
kept, so late joiners can pull the history from any neighbour. The *bound* (bytes and objects)
and the choice of what to evict are the mesh core's; a store only keeps, returns and forgets
pieces, keyed by R2 sequence (see :mod:`hp2p.peer.mesh_objects` for the numbering).

``DiskPieceStore`` writes one file per piece (``<dir>/<object>/<index>``, written to a
temporary name then renamed, so a crash never leaves a half piece under the real name). On
start the core re-reads the directory and re-checks every piece against its manifest, so a
damaged file is dropped and pulled again instead of being served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from hp2p.peer.mesh_objects import sequence_of, split_sequence


class PieceStore(Protocol):
    """The few operations the mesh core needs; synchronous, small, bounded by the core."""

    def get(self, sequence: int) -> bytes | None: ...

    def put(self, sequence: int, data: bytes) -> None: ...

    def drop_object(self, object_number: int) -> None: ...

    def sequences(self) -> Iterator[int]:
        """Every stored sequence (any order); used once, at start."""
        ...


class MemoryPieceStore:
    """A dict of pieces: the default, and what the simulator uses."""

    def __init__(self) -> None:
        self._pieces: dict[int, bytes] = {}

    def get(self, sequence: int) -> bytes | None:
        return self._pieces.get(sequence)

    def put(self, sequence: int, data: bytes) -> None:
        self._pieces[sequence] = data

    def drop_object(self, object_number: int) -> None:
        for seq in [s for s in self._pieces if split_sequence(s)[0] == object_number]:
            del self._pieces[seq]

    def sequences(self) -> Iterator[int]:
        return iter(list(self._pieces))


class DiskPieceStore:
    """Pieces as files under ``root``; survives restarts (the "database" of Q.4100 §9.1)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                f"cannot use {self.root} as the piece store: {exc.strerror or exc} "
                "(choose a writable directory with --store DIR)"
            ) from None

    def _path(self, sequence: int) -> Path:
        obj, idx = split_sequence(sequence)
        return self.root / str(obj) / str(idx)

    def get(self, sequence: int) -> bytes | None:
        try:
            return self._path(sequence).read_bytes()
        except OSError:
            return None

    def put(self, sequence: int, data: bytes) -> None:
        path = self._path(sequence)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def drop_object(self, object_number: int) -> None:
        shutil.rmtree(self.root / str(object_number), ignore_errors=True)

    def sequences(self) -> Iterator[int]:
        found: list[int] = []
        for obj_dir in self.root.iterdir():
            if not obj_dir.is_dir() or not obj_dir.name.isdigit():
                continue
            for piece in obj_dir.iterdir():
                if piece.name.isdigit():
                    with contextlib.suppress(ValueError):
                        found.append(sequence_of(int(obj_dir.name), int(piece.name)))
        return iter(found)
