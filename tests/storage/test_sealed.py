"""The sealed store: encrypted at rest, bound to the key and to the model id."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blindinfer._storage.sealed import SealedStore, StoreError

MODEL = b"\x08\x07ONNX-MODEL-BYTES" * 100


def test_round_trip_and_ciphertext_at_rest(tmp_path: Path) -> None:
    store = SealedStore(tmp_path, os.urandom(32))
    mid = "12345678-1234-1234-1234-123456789abc"
    store.put(mid, {"name": "m"}, MODEL)
    raw = (tmp_path / f"{mid}.sealed").read_bytes()
    assert MODEL[:16] not in raw and b'"name"' not in raw
    got = store.get(mid)
    assert got.data == MODEL and got.meta == {"name": "m"}
    assert list(store.ids()) == [mid]
    store.delete(mid)
    assert list(store.ids()) == []


def test_wrong_key_tamper_and_swap_are_refused(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = SealedStore(tmp_path, key)
    a, b = "aaaaaaaa-1234-1234-1234-123456789abc", "bbbbbbbb-1234-1234-1234-123456789abc"
    store.put(a, {"name": "a"}, MODEL)
    store.put(b, {"name": "b"}, MODEL + b"x")
    with pytest.raises(StoreError, match="cannot unseal"):
        SealedStore(tmp_path, os.urandom(32)).get(a)
    path = tmp_path / f"{a}.sealed"
    blob = bytearray(path.read_bytes())
    blob[40] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(StoreError):
        store.get(a)
    # an operator swapping files: b's ciphertext under a's name
    path.write_bytes((tmp_path / f"{b}.sealed").read_bytes())
    with pytest.raises(StoreError):
        store.get(a)


def test_ids_are_validated(tmp_path: Path) -> None:
    store = SealedStore(tmp_path, os.urandom(32))
    with pytest.raises(ValueError):
        store.put("../../etc/passwd", {}, b"")


def test_multi_chunk_model_round_trips(tmp_path: Path) -> None:
    store = SealedStore(tmp_path, os.urandom(32))
    mid = "cccccccc-1234-1234-1234-123456789abc"
    data = os.urandom(3 * 1024 * 1024 + 17)  # spans several streamed encryption chunks
    store.put(mid, {"name": "big"}, data)
    assert store.get(mid).data == data
    assert not list(tmp_path.glob("*.tmp"))


def test_writer_streams_the_same_format_put_writes(tmp_path: Path) -> None:
    import hashlib

    store = SealedStore(tmp_path, bytes(range(32)))
    model_id = "00000000-0000-4000-8000-000000000001"
    data = bytes(range(256)) * 5000
    writer = store.writer(model_id, {"name": "m"})
    for start in range(0, len(data), 7777):
        writer.update(memoryview(data)[start : start + 7777])
    digest = writer.finish()
    assert writer.model_sha256() == hashlib.sha256(data).hexdigest()
    assert not store._path(model_id).exists()  # nothing stored before commit
    writer.commit()
    got = store.get(model_id, digest)
    assert got.data == data and got.meta == {"name": "m"}
    assert digest == store.file_sha256(model_id)


def test_aborted_writer_leaves_no_file(tmp_path: Path) -> None:
    store = SealedStore(tmp_path, bytes(32))
    writer = store.writer("00000000-0000-4000-8000-000000000002", {"name": "m"})
    writer.update(b"x" * 100_000)
    writer.abort()
    assert list(tmp_path.iterdir()) == []
