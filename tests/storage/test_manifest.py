"""The sealed, versioned store manifest: tamper-evident, rollback-checked, serialised writers."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from blindinfer._storage.manifest import (
    MANIFEST_FILE,
    Entry,
    FileAnchor,
    RolledBack,
    StoreManifest,
)
from blindinfer.errors import StoreError

KEY = b"m" * 32


def add(mid: str, name: str) -> Callable[[dict[str, Entry], int], None]:
    def change(entries: dict[str, Entry], version: int) -> None:
        entries[mid] = Entry("ab" * 32, name, version)

    return change


def test_versions_grow_and_round_trip(tmp_path: Path) -> None:
    m = StoreManifest(tmp_path, KEY)
    assert m.read() is None
    first = m.update(add("a", "x"))
    second = m.update(add("b", "y"))
    assert (first.version, second.version) == (1, 2)
    again = StoreManifest(tmp_path, KEY).read()
    assert again is not None and again.version == 2
    assert again.models["a"] == Entry("ab" * 32, "x", 1)
    assert again.models["b"].generation == 2
    raw = (tmp_path / MANIFEST_FILE).read_bytes()
    assert b'"x"' not in raw and b"version" not in raw  # sealed, not just signed
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_wrong_key_and_tampering_are_refused(tmp_path: Path) -> None:
    StoreManifest(tmp_path, KEY).update(add("a", "x"))
    with pytest.raises(StoreError, match="cannot be unsealed"):
        StoreManifest(tmp_path, os.urandom(32)).read()
    path = tmp_path / MANIFEST_FILE
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(StoreError, match="cannot be unsealed"):
        StoreManifest(tmp_path, KEY).read()


def test_a_sealed_secret_of_another_purpose_is_not_a_manifest(tmp_path: Path) -> None:
    from blindinfer._storage.secrets import SealedSecret

    SealedSecret(tmp_path / MANIFEST_FILE, KEY, b"blindinfer-owner-token-v1").create(b"x" * 32)
    with pytest.raises(StoreError):
        StoreManifest(tmp_path, KEY).read()


def test_an_old_manifest_is_refused_below_the_anchor(tmp_path: Path) -> None:
    anchor = FileAnchor(tmp_path / "anchor")
    m = StoreManifest(tmp_path / "store", KEY, anchor)
    m.update(add("a", "x"))
    old = (tmp_path / "store" / MANIFEST_FILE).read_bytes()
    m.update(add("b", "y"))
    assert anchor.read() == 2
    (tmp_path / "store" / MANIFEST_FILE).write_bytes(old)  # the operator restores version 1
    with pytest.raises(RolledBack, match="rolled back"):
        StoreManifest(tmp_path / "store", KEY, anchor).read()
    with pytest.raises(RolledBack):  # nor may a writer build on it
        StoreManifest(tmp_path / "store", KEY, anchor).update(add("c", "z"))
    (tmp_path / "store" / MANIFEST_FILE).unlink()  # deleting it is no better
    with pytest.raises(RolledBack, match="missing"):
        StoreManifest(tmp_path / "store", KEY, anchor).read()
    # without the anchor the same old manifest is accepted: the documented limit
    (tmp_path / "store" / MANIFEST_FILE).write_bytes(old)
    got = StoreManifest(tmp_path / "store", KEY).read()
    assert got is not None and got.version == 1


def test_this_process_never_goes_back_even_without_an_anchor(tmp_path: Path) -> None:
    m = StoreManifest(tmp_path, KEY)
    m.update(add("a", "x"))
    old = (tmp_path / MANIFEST_FILE).read_bytes()
    m.update(add("b", "y"))
    (tmp_path / MANIFEST_FILE).write_bytes(old)
    with pytest.raises(RolledBack, match="already saw version 2"):
        m.read()


def test_file_anchor_only_moves_forward(tmp_path: Path) -> None:
    anchor = FileAnchor(tmp_path / "a")
    assert anchor.read() is None
    anchor.advance(5)
    anchor.advance(3)
    assert anchor.read() == 5
    (tmp_path / "a").write_text("junk")
    with pytest.raises(StoreError):
        anchor.read()


def test_concurrent_writers_never_lose_an_update(tmp_path: Path) -> None:
    """Separate instances (separate lock file descriptions, as separate replicas have)."""
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        m = StoreManifest(tmp_path, KEY)
        try:
            for i in range(15):
                m.update(add(f"{tag}{i}", f"{tag}{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = StoreManifest(tmp_path, KEY).read()
    assert final is not None and final.version == 45 and len(final.models) == 45


def test_a_failing_change_writes_nothing(tmp_path: Path) -> None:
    m = StoreManifest(tmp_path, KEY)
    m.update(add("a", "x"))

    def refuse(entries: dict[str, Entry], version: int) -> None:
        raise StoreError("no")

    with pytest.raises(StoreError):
        m.update(refuse)
    got = m.read()
    assert got is not None and got.version == 1
