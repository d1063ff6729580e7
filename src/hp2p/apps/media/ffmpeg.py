"""ffmpeg as a subprocess: an input (a file, a URL, or a generated test pattern) cut into
MPEG-TS segments of a fixed duration.

ffmpeg's ``segment`` muxer writes each segment to a temporary directory and, once a segment
is closed, prints its line of the segment list (CSV: ``file,start,end``) on stdout; the
:class:`Segmenter` reads those lines, so it hands on only complete files, and deletes each
file once it has been read. Keyframes are forced at every segment boundary, so every segment
starts with one and plays on its own (a viewer can start at any segment, and a skipped one
only costs its own seconds).

A file or the test pattern is read at its native rate (``-re``), as a camera would deliver it;
a URL (a live stream already) is read as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FfmpegError", "Produced", "Segmenter", "SegmenterSettings", "ffmpeg_path"]

_CSV_LINE = 4096  # longest segment-list line read from ffmpeg


class FfmpegError(RuntimeError):
    """ffmpeg is missing or failed; ``str(err)`` says what to do."""


def ffmpeg_path(name: str = "ffmpeg") -> str:
    """The ffmpeg (or ffprobe) executable, or :class:`FfmpegError` saying how to install it."""
    found = shutil.which(name)
    if found is None:
        raise FfmpegError(
            f"{name} is not installed: install it (Debian: apt-get install ffmpeg, or "
            "`make media-deps` as root) and try again"
        )
    return found


@dataclass(frozen=True, slots=True)
class SegmenterSettings:
    input: str = "testsrc"  # testsrc, a file, or a URL
    segment: float = 2.0  # seconds per segment
    size: str = "640x360"  # test pattern / output size WxH
    rate: int = 25  # frames per second (test pattern)
    bitrate: str = "1000k"  # video bitrate
    duration: float | None = None  # stop after this many seconds (None: until the input ends)
    loop: bool = False  # a file input starts again at its end

    def __post_init__(self) -> None:
        if not 0.5 <= self.segment <= 10:
            raise FfmpegError(f"--segment must be 0.5..10 seconds, not {self.segment:g}")
        w, _, h = self.size.partition("x")
        if not (w.isdigit() and h.isdigit() and 16 <= int(w) <= 7680 and 16 <= int(h) <= 4320):
            raise FfmpegError(f"--size must be WIDTHxHEIGHT (e.g. 640x360), not {self.size!r}")
        if not 1 <= self.rate <= 120:
            raise FfmpegError("--rate must be 1..120 frames per second")
        if self.duration is not None and self.duration <= 0:
            raise FfmpegError("--duration must be more than 0 seconds")
        if not self.input:
            raise FfmpegError("give --input: testsrc, a media file, or a URL")

    def input_args(self) -> list[str]:
        if self.input == "testsrc":
            video = f"testsrc=size={self.size}:rate={self.rate}"
            return ["-re", "-f", "lavfi", "-i", video]
        if "://" in self.input:
            return ["-i", self.input]
        if not Path(self.input).is_file():
            raise FfmpegError(f"input file {self.input!r} does not exist")
        loop = ["-stream_loop", "-1"] if self.loop else []
        return [*loop, "-re", "-i", self.input]

    def command(self, binary: str, workdir: Path) -> list[str]:
        gop = max(1, round(self.segment * self.rate))
        cmd = [binary, "-hide_banner", "-loglevel", "error", "-nostdin", *self.input_args()]
        if self.input == "testsrc":  # a tone, so that players see an audio track too
            cmd += ["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        if self.duration is not None:
            cmd += ["-t", f"{self.duration:g}"]
        cmd += ["-s", self.size] if self.input != "testsrc" else []
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency"]
        cmd += ["-pix_fmt", "yuv420p", "-b:v", self.bitrate, "-maxrate", self.bitrate]
        cmd += ["-bufsize", self.bitrate, "-g", str(gop), "-keyint_min", str(gop)]
        cmd += ["-sc_threshold", "0", "-force_key_frames", f"expr:gte(t,n_forced*{self.segment:g})"]
        cmd += ["-c:a", "aac", "-b:a", "96k", "-ar", "48000"]
        cmd += ["-f", "segment", "-segment_time", f"{self.segment:g}"]
        cmd += ["-segment_format", "mpegts", "-segment_list", "pipe:1"]
        cmd += ["-segment_list_type", "csv", str(workdir / "seg%09d.ts")]
        return cmd


@dataclass(frozen=True, slots=True)
class Produced:
    """One complete segment: its index from 0, its bytes, duration and capture time."""

    index: int
    data: bytes
    duration: float
    captured: float


class Segmenter:
    """Run ffmpeg; ``async for produced in segmenter.segments()``; ``await stop()``."""

    def __init__(self, settings: SegmenterSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.started = 0.0
        self.returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cmd = self.settings.command(ffmpeg_path(), self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self._proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_CSV_LINE,
        )
        self._stderr_task = asyncio.create_task(self._read_stderr(), name="hp2p-media-ffmpeg-err")

    async def _read_stderr(self) -> None:
        """Keep ffmpeg's last error lines; read in chunks so that no line length stalls it."""
        assert self._proc is not None
        assert self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(4096):  # ends with ffmpeg
            for line in chunk.decode(errors="replace").splitlines():
                if line.strip():
                    self._stderr.append(line.rstrip()[:300])

    async def segments(self) -> AsyncIterator[Produced]:
        """Each segment ffmpeg completes, in order, until it exits."""
        assert self._proc is not None
        assert self._proc.stdout is not None
        index = 0
        while True:  # ends when ffmpeg closes its stdout
            try:
                line = await self._proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raise FfmpegError("ffmpeg printed an over-long segment-list line") from None
            if not line:
                break
            name, start, end = _parse_line(line.decode(errors="replace"))
            path = self.workdir / Path(name).name
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise FfmpegError(f"cannot read segment {path}: {exc}") from None
            with contextlib.suppress(OSError):
                path.unlink()
            if data:
                yield Produced(index, data, max(0.0, end - start), self.started + start)
                index += 1
        self.returncode = await self._proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        if self.returncode not in (0, 255, -15):  # 255/-15: stopped by a signal
            tail = " | ".join(self._stderr) or "no message"
            raise FfmpegError(f"ffmpeg exited with status {self.returncode}: {tail}")

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()


def _parse_line(line: str) -> tuple[str, float, float]:
    parts = line.strip().rsplit(",", 2)
    if len(parts) != 3:
        raise FfmpegError(f"unexpected segment-list line from ffmpeg: {line.strip()[:100]!r}")
    try:
        return parts[0], float(parts[1]), float(parts[2])
    except ValueError:
        raise FfmpegError(f"unexpected segment-list line from ffmpeg: {line[:100]!r}") from None
