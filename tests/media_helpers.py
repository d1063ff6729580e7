"""Shared pieces of the media tests: ffmpeg presence, a small test-pattern source, event
collection, bounded waits."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hp2p.apps.media.ffmpeg import SegmenterSettings

DEADLINE = 60.0

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed: run `make media-deps` (as root) or "
    "apt-get install ffmpeg",
)


def small_clip(seconds: float, segment: float = 1.0) -> SegmenterSettings:
    """A cheap test pattern: 320x180, 10 fps, 300 kbit/s (the machine is shared)."""
    return SegmenterSettings("testsrc", segment, "320x180", 10, "300k", seconds)


class Events:
    """Events of one component, kept in order; ``wait`` polls with a deadline."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []  # monotonic, one per item

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        self.items.append((kind, fields))
        self.times.append(time.monotonic())

    def times_of(self, kind: str) -> list[float]:
        return [t for t, (k, _f) in zip(self.times, self.items, strict=True) if k == kind]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f in self.items if k == kind]

    async def wait(self, test: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
        end = time.monotonic() + deadline
        while not test():  # bounded by the deadline
            assert time.monotonic() < end, f"timed out waiting for {what}: {self.items[-10:]}"
            await asyncio.sleep(0.05)


def ffprobe_streams(path: Path) -> str:
    """The codec names ffprobe reads in ``path`` (one per line); fails when it cannot."""
    cmd = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0"]
    done = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout
