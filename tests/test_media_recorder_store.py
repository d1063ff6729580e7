"""A recorder's directory: segments written aside then renamed, an index read back on restart
(rows whose file is missing or of another size are skipped, bad lines and names ignored)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hp2p.apps.media.chunk import MediaSegment
from hp2p.apps.media.recorder import MediaRecorder, _row
from hp2p.apps.media.vod import RecordedSegment
from hp2p.peer.mesh_node import MeshNode, MeshSettings

T0 = 1_700_000_000.0


def recorder(directory: Path) -> MediaRecorder:
    node = MeshNode(MeshSettings(homs="http://127.0.0.1:1", join="media-rec"))
    return MediaRecorder(node, directory)


def test_a_restarted_recorder_reads_its_index_back(tmp_path: Path) -> None:
    first = recorder(tmp_path)
    for seq in (0, 1, 2):
        data = bytes([seq]) * 100
        segment = MediaSegment("cam1", seq, 2.0, T0, hashlib.sha256(data).digest(), data)
        first._write(segment)
        record = RecordedSegment(seq, 2.0, T0, len(data), segment.sha256.hex())
        first._append("cam1", {"segment": _row(record)})
    first._append("cam1", {"end": 3})
    (tmp_path / "cam1" / "2.ts").write_bytes(b"short")  # damaged: skipped
    with (tmp_path / "cam1" / "index.jsonl").open("a") as index:
        index.write("not json\n{}\n")
    (tmp_path / "..bad").mkdir()
    assert not list((tmp_path / "cam1").glob(".*.part"))

    again = recorder(tmp_path)
    again._load()
    status = again.index.status()
    assert set(status) == {"cam1"}
    assert status["cam1"]["segments"] == 2
    assert status["cam1"]["ended"]
    assert again.index.missing("cam1") == [2]
    assert again.segment("cam1", 1) == bytes([1]) * 100
    assert again.segment("cam1", 2) is None
    playlist = again.playlist("cam1")
    assert playlist is not None
    assert "#EXT-X-ENDLIST" in playlist
