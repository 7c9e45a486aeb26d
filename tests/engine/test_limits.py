"""Load and run limits of the registry, and the store's behaviour on a full disk."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blindinfer._engine import limits
from blindinfer._engine.registry import EngineOptions, ModelRegistry
from blindinfer._server.config import parse_size
from blindinfer._storage.sealed import SealedStore
from blindinfer.errors import InsufficientStorage, InvalidModel, LimitExceeded

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = (FIXTURES / "mlp.onnx").read_bytes()


def test_call_with_timeout_returns_raises_and_abandons() -> None:
    assert limits.call_with_timeout(lambda: 42, 5) == 42
    with pytest.raises(ZeroDivisionError):
        limits.call_with_timeout(lambda: 1 // 0, 5)
    release = threading.Event()
    before = limits.abandoned_loads()
    with pytest.raises(limits._LoadTimeout):
        limits.call_with_timeout(lambda: release.wait(30), 0.05)
    assert limits.abandoned_loads() == before + 1
    release.set()
    deadline = time.monotonic() + 5
    while limits.abandoned_loads() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert limits.abandoned_loads() == before  # the abandoned thread finished and was counted


def test_a_load_past_its_time_is_abandoned_with_422(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    real = ort.InferenceSession
    release = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)  # stands in for an onnxruntime build that does not end
        return real(*args, **kwargs)

    reg = ModelRegistry(SealedStore(tmp_path, b"k" * 32), EngineOptions(max_load_seconds=0.1))
    monkeypatch.setattr(ort, "InferenceSession", slow)
    with pytest.raises(InvalidModel, match="max_load_seconds"):
        reg.add(MLP, name="slow")
    assert len(reg) == 0 and not list(tmp_path.iterdir())
    release.set()
    monkeypatch.setattr(ort, "InferenceSession", real)
    assert reg.add(MLP, name="fast").name == "fast"  # the caller's worker was not lost


def test_run_time_limit_and_stop_all(tmp_path: Path) -> None:
    reg = ModelRegistry(None, EngineOptions(max_run_seconds=0.3))
    model = reg.resolve(reg.add((FIXTURES / "loop_bomb.onnx").read_bytes(), name="loop").model_id)
    with pytest.raises(LimitExceeded, match="max_run_seconds"):
        reg.run(model, {"count": np.array(10**12, np.int64)})
    assert reg.run(model, {"count": np.array(7, np.int64)})["total"][0] == 7

    handles: list[limits.RunHandle] = []
    slow = ModelRegistry(None, EngineOptions(max_run_seconds=600))
    slow_model = slow.resolve(slow.add((FIXTURES / "loop_bomb.onnx").read_bytes()).model_id)
    errors: list[Exception] = []

    def run() -> None:
        try:
            slow.run(slow_model, {"count": np.array(10**12, np.int64)}, on_start=handles.append)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    while not handles:
        time.sleep(0.01)
    assert slow.watchdog.stop_all("shutdown") == 1
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(errors[0], LimitExceeded) and "shutting down" in str(errors[0])


def test_full_disk_gives_507_and_keeps_what_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SealedStore(tmp_path, b"k" * 32)
    reg = ModelRegistry(store, EngineOptions())
    kept = reg.add(MLP, name="kept")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InsufficientStorage, match="disk is full") as info:
        reg.add(MLP, name="new")
    assert info.value.status == 507
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kept.model_id}.sealed"]
    assert [i.name for i in reg.list()] == ["kept"]
    assert store.get(kept.model_id).data == MLP


def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    stale = tmp_path / "0b8f1c1e-3d2a-4c5b-9e8f-0a1b2c3d4e5f.tmp"
    stale.write_bytes(b"half a model")
    other = tmp_path / "notes.tmp"
    other.write_bytes(b"not ours")
    SealedStore(tmp_path, b"k" * 32)
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize(
    ("text", "value"),
    [("1000", 1000), ("2GiB", 2 * 1024**3), ("512 MiB", 512 * 1024**2), ("64kB", 64_000),
     ("1.5GiB", 3 * 1024**3 // 2)],
)  # fmt: skip
def test_sizes_with_units(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "GiB", "2 parsecs", "-1", "1e9"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
