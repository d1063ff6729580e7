"""`hp2p bench wire`: the result document has the agreed shape (timings are not asserted)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from hp2p.bench import wire
from hp2p.cli import app


def test_baseline_codec_round_trips_the_benchmark_messages() -> None:
    for msg in wire.sample_messages().values():
        assert wire._naive_decode(wire._naive_encode(msg)) == msg


def test_hp2p_and_baseline_frames_carry_the_same_header() -> None:
    """The baseline must do the same job, or the ratio means nothing."""
    from hp2p.wire import r2

    for msg in wire.sample_messages().values():
        ours, theirs = r2.encode(msg), wire._naive_encode(msg)
        assert r2.decode(theirs) == msg
        assert len(ours) == len(theirs)


def test_quick_run_writes_the_result_file(tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    result = CliRunner().invoke(app, ["bench", "wire", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "wire"
    for key in (
        "encode_decode_us",
        "hello_decode_us",
        "buffermap_1000_encode_us",
        "stream_mb_per_s",
    ):
        assert doc["metrics"][key] > 0
    assert doc["baselines"]["stdlib_json"]["encode_decode_us"] > 0
    assert doc["ratios"]["encode_decode_us"] > 0


def test_table_renders_every_message() -> None:
    console = Console(file=io.StringIO(), width=120)
    doc = {
        "metrics": {
            f"{n}_{k}": 1.0
            for n in wire.sample_messages()
            for k in ("encode_us", "decode_us", "encode_decode_us", "frame_bytes")
        },
        "baselines": {
            "stdlib_json": {f"{n}_encode_decode_us": 2.0 for n in wire.sample_messages()}
        },
    }
    console.print(wire._table(doc))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert all(name in text for name in wire.sample_messages())
    assert "0.50×" in text


def test_unwritable_result_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        app, ["bench", "wire", "--quick", "--json", str(blocker / "sub" / "w.json")]
    )
    assert result.exit_code == 1
    assert "cannot write" in result.output
