"""ffmpeg as a subprocess: a generated clip file and the test pattern cut into MPEG-TS
segments that start with a keyframe and that ffprobe reads; bad settings refused."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from hp2p.apps.media.ffmpeg import FfmpegError, Produced, Segmenter, SegmenterSettings
from media_helpers import ffprobe_streams, needs_ffmpeg, small_clip


def test_commands_for_each_kind_of_input(tmp_path: Path) -> None:
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"")
    assert "lavfi" in SegmenterSettings("testsrc").command("ffmpeg", tmp_path)
    file_cmd = SegmenterSettings(str(clip), loop=True).command("ffmpeg", tmp_path)
    assert file_cmd[file_cmd.index("-i") - 1] == "-re"
    assert "-stream_loop" in file_cmd
    url_cmd = SegmenterSettings("rtsp://127.0.0.1/cam").command("ffmpeg", tmp_path)
    assert "-re" not in url_cmd
    for bad in (
        {"segment": 0.1},
        {"size": "big"},
        {"size": "8x8"},
        {"rate": 0},
        {"duration": -1.0},
        {"input": ""},
    ):
        with pytest.raises(FfmpegError):
            SegmenterSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(FfmpegError, match="does not exist"):
        SegmenterSettings(str(tmp_path / "missing.mp4")).input_args()


async def segments_of(settings: SegmenterSettings, workdir: Path) -> list[Produced]:
    segmenter = Segmenter(settings, workdir)
    await segmenter.start()
    try:
        return [p async for p in segmenter.segments()]
    finally:
        await segmenter.stop()


@needs_ffmpeg
async def test_a_generated_clip_file_is_cut_into_playable_segments(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10"]
    make += ["-t", "3", "-pix_fmt", "yuv420p", str(clip)]
    await asyncio.to_thread(subprocess.run, make, check=True, timeout=60)
    settings = SegmenterSettings(str(clip), 1.0, "160x120", 10, "200k")
    produced = await segments_of(settings, tmp_path / "out")
    assert len(produced) == 3
    assert [p.index for p in produced] == [0, 1, 2]
    assert sum(p.duration for p in produced) == pytest.approx(3.0, abs=0.2)
    assert all(p.data[0] == 0x47 for p in produced)  # MPEG-TS sync byte
    assert not list((tmp_path / "out").iterdir())  # each file deleted once read
    (tmp_path / "seg.ts").write_bytes(produced[1].data)
    assert "h264" in await asyncio.to_thread(ffprobe_streams, tmp_path / "seg.ts")


@needs_ffmpeg
async def test_the_test_pattern_runs_in_real_time_for_its_duration(tmp_path: Path) -> None:
    produced = await segments_of(small_clip(2.0), tmp_path / "out")
    assert len(produced) == 2
    assert produced[1].captured - produced[0].captured == pytest.approx(1.0, abs=0.2)


@needs_ffmpeg
async def test_an_input_ffmpeg_cannot_read_gives_its_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(FfmpegError, match="ffmpeg exited with status") as caught:
        await segments_of(SegmenterSettings(str(bad), 1.0), tmp_path / "out")
    assert "bad.mp4" in str(caught.value) or "Invalid" in str(caught.value)
