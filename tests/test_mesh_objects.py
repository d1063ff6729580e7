"""SubMesh objects: piece numbering, manifests, verification, piece stores."""

from __future__ import annotations

import hashlib

import pytest

from hp2p.peer.errors import SettingsError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_objects import (
    MAX_PIECES,
    ManifestError,
    decode_manifest,
    make_object,
    object_ok,
    piece_ok,
    sequence_of,
    split_sequence,
)
from hp2p.peer.mesh_store import DiskPieceStore, MemoryPieceStore


def test_sequence_numbering_round_trips_and_rejects_out_of_range():
    assert sequence_of(1, 0) == 65536
    assert split_sequence(sequence_of(7, 33)) == (7, 33)
    assert split_sequence(5) == (0, 5)  # object 0: not a mesh piece
    with pytest.raises(ValueError, match="object number"):
        sequence_of(0, 1)
    with pytest.raises(ValueError, match="piece index"):
        sequence_of(1, MAX_PIECES + 1)


def test_make_object_splits_and_hashes():
    data = bytes(range(256)) * 100  # 25,600 bytes
    manifest, pieces = make_object(3, data, 10_000, app_id="blockchain", meta={"k": 1})
    assert [len(p) for p in pieces] == [10_000, 10_000, 5_600]
    assert b"".join(pieces) == data
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.piece_length(3) == 5_600
    assert all(piece_ok(manifest, i, p) for i, p in enumerate(pieces, 1))
    assert object_ok(manifest, data)
    again = decode_manifest(manifest.encode(), 3, 10_000)
    assert again == manifest


def test_piece_check_refuses_forged_short_and_out_of_range_pieces():
    manifest, pieces = make_object(1, b"a" * 100, 40)
    forged = b"b" + pieces[0][1:]
    assert not piece_ok(manifest, 1, forged)
    assert not piece_ok(manifest, 1, pieces[0][:-1])
    assert not piece_ok(manifest, 0, pieces[0])
    assert not piece_ok(manifest, 4, pieces[0])
    assert not object_ok(manifest, b"a" * 99)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: b"{not json", "not valid JSON"),
        (lambda raw: raw.replace(b'"object":1', b'"object":2'), "names object 2"),
        (lambda raw: raw.replace(b'"piece-size":40', b'"piece-size":0'), "piece-size"),
        (lambda raw: raw.replace(b'"size":100', b'"size":1000'), "piece digests"),
        (lambda raw: raw.replace(b'"sha256":"', b'"sha256":"X'), "64 lower-case hex"),
        # msgspec reports bad UTF-8 as UnicodeDecodeError, not DecodeError: still a refusal
        (lambda raw: raw.replace(b'"sha256":"', b'"sha256":"\xff'), "not valid JSON"),
        (lambda raw: raw.replace(b'"object"', b'"\xffobject"'), "not valid JSON"),
    ],
)
def test_bad_manifests_are_refused_with_a_reason(mutate, message):
    manifest, _ = make_object(1, b"a" * 100, 40)
    raw = manifest.encode()
    with pytest.raises(ManifestError, match=message):
        decode_manifest(mutate(raw), 1, 1024)


def test_stores_keep_return_and_drop_whole_objects(tmp_path):
    for store in (MemoryPieceStore(), DiskPieceStore(tmp_path / "pieces")):
        store.put(sequence_of(1, 0), b"m")
        store.put(sequence_of(1, 1), b"p1")
        store.put(sequence_of(2, 0), b"m2")
        assert store.get(sequence_of(1, 1)) == b"p1"
        assert store.get(sequence_of(9, 9)) is None
        assert sorted(store.sequences()) == sorted(
            [sequence_of(1, 0), sequence_of(1, 1), sequence_of(2, 0)]
        )
        store.drop_object(1)
        assert sorted(store.sequences()) == [sequence_of(2, 0)]


def test_disk_store_refuses_an_unusable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot use"):
        DiskPieceStore(blocker / "sub")


def test_config_checks_name_the_setting():
    with pytest.raises(SettingsError, match="max_requests"):
        MeshConfig(max_requests=0)
    with pytest.raises(SettingsError, match="low_water"):
        MeshConfig(low_water=9, target_neighbours=8)
    with pytest.raises(SettingsError, match="unknown mesh setting"):
        MeshConfig.from_dict({"bogus": 1})
