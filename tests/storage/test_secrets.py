"""The sealed small-secret file: only the same key and purpose open it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blindinfer._storage.secrets import SealedSecret
from blindinfer.errors import StoreError

KEY = bytes(range(32))


def test_round_trip_and_file_mode(tmp_path: Path) -> None:
    s = SealedSecret(tmp_path / "s.sealed", KEY, b"purpose-a")
    assert not s.exists()
    s.create(b"secret digest")
    assert s.exists() and s.load() == b"secret digest"
    assert os.stat(s.path).st_mode & 0o777 == 0o600
    assert b"secret digest" not in s.path.read_bytes()


def test_never_overwritten(tmp_path: Path) -> None:
    s = SealedSecret(tmp_path / "s.sealed", KEY, b"p")
    s.create(b"first")
    with pytest.raises(FileExistsError):
        s.create(b"second")
    assert s.load() == b"first"


@pytest.mark.parametrize("change", ["key", "purpose", "flip", "truncate"])
def test_refused_when_anything_differs(tmp_path: Path, change: str) -> None:
    path = tmp_path / "s.sealed"
    SealedSecret(path, KEY, b"p").create(b"value")
    key, purpose = KEY, b"p"
    if change == "key":
        key = bytes(32)
    elif change == "purpose":
        purpose = b"q"
    elif change == "flip":
        blob = bytearray(path.read_bytes())
        blob[-1] ^= 1
        path.write_bytes(bytes(blob))
    else:
        path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(StoreError, match="cannot be unsealed"):
        SealedSecret(path, key, purpose).load()
