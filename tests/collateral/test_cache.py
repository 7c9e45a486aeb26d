"""The on-disk collateral cache: persistence, corruption, key hygiene, failure handling."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blindinfer._collateral import cache_for, collect
from blindinfer._collateral.cache import CacheEntry, CollateralCache
from blindinfer.errors import CollateralError

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(days=10)


def test_roundtrip_and_persistence(tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path, clock=lambda: NOW)
    calls: list[int] = []

    def fetch() -> Mapping[str, bytes]:
        calls.append(1)
        return {"a": b"\x00\xff", "b": b""}

    assert cache.get("k", fetch, lambda items: LATER) == {"a": b"\x00\xff", "b": b""}
    assert cache.load("k") == CacheEntry({"a": b"\x00\xff", "b": b""}, LATER)
    assert CollateralCache(tmp_path, clock=lambda: NOW).get("k", fetch, lambda i: LATER)
    assert calls == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json"]  # no temporary leftovers


def test_corrupt_file_is_refetched(tmp_path: Path) -> None:
    (tmp_path / "k.json").write_text("{not json")
    cache = CollateralCache(tmp_path, clock=lambda: NOW)
    assert cache.load("k") is None
    assert cache.get("k", lambda: {"x": b"1"}, lambda i: LATER) == {"x": b"1"}
    assert cache.load("k") == CacheEntry({"x": b"1"}, LATER)


def test_keys_cannot_escape_the_directory(tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path / "c")
    for key in ("../evil", "a/b", "", "x" * 201):
        with pytest.raises(CollateralError, match="invalid collateral cache key"):
            cache.get(key, lambda: {}, lambda i: LATER)


def test_fetch_failure_without_cache_propagates(tmp_path: Path) -> None:
    def fetch() -> Mapping[str, bytes]:
        raise CollateralError("service down")

    cache = CollateralCache(tmp_path, clock=lambda: NOW)
    with pytest.raises(CollateralError, match="service down"):
        cache.get("k", fetch, lambda i: LATER)
    assert collect(lambda evidence: cache.get("k", fetch, lambda i: LATER), b"") == {}
    assert collect(None, b"evidence") == {}


def test_cache_for_uses_the_data_dir(tmp_path: Path) -> None:
    assert cache_for(tmp_path).directory == tmp_path / "collateral"
