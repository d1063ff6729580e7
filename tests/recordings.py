"""The recorded exchanges with the ETRI reference HOMS that the conformance tests replay.

They are kept in ``shared/conformance/`` beside the repository, not in it; a test that needs
one is skipped where it is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
HOMP_RECORDING = CONFORMANCE / "homp-etri-2023.jsonl"
SIGNALLING_RECORDING = CONFORMANCE / "signalling-etri-2023.jsonl"


def load(path: Path) -> list[dict[str, Any]]:
    """The recorded exchanges, one JSON object a line; none where the file is missing."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def needs(path: Path) -> pytest.MarkDecorator:
    """Skip a test where the recording is missing (or empty)."""
    return pytest.mark.skipif(
        not load(path),
        reason=f"conformance recording not found at {path} (shared/ beside the repo)",
    )
