"""Model validation and the registry, in process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from blindinfer._engine.demo import demo_model_bytes, demo_reference
from blindinfer._engine.registry import EngineOptions, ModelRegistry
from blindinfer._storage.manifest import StoreManifest
from blindinfer._storage.sealed import SealedStore
from blindinfer.errors import (
    Conflict,
    InvalidInput,
    InvalidModel,
    ModelNotFound,
    PayloadTooLarge,
    StoreError,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(SealedStore(tmp_path, b"k" * 32), EngineOptions(max_models=3))


def test_signature_records_dynamic_dims(registry: ModelRegistry) -> None:
    info = registry.add((FIXTURES / "mlp.onnx").read_bytes(), name="mlp")
    x, scale = info.inputs
    assert (x.name, x.datatype, x.shape, x.dim_names) == ("x", "FP32", (-1, 8), ("batch", None))
    assert (scale.name, scale.shape) == ("scale", (1,))
    assert [o.datatype for o in info.outputs] == ["FP32", "INT64"]


def test_external_data_is_refused_without_reading_the_path(registry: ModelRegistry) -> None:
    with pytest.raises(InvalidModel, match="external data"):
        registry.add((FIXTURES / "external_data.onnx").read_bytes())
    assert len(registry) == 0


@pytest.mark.parametrize("data", [b"", b"garbage" * 10, b"\x08\x01"])
def test_garbage_is_refused(registry: ModelRegistry, data: bytes) -> None:
    with pytest.raises(InvalidModel):
        registry.add(data)


def test_limits(tmp_path: Path) -> None:
    reg = ModelRegistry(None, EngineOptions(max_models=1, max_model_size=10_000))
    reg.add(demo_model_bytes(), name="one")
    with pytest.raises(Conflict, match="limit"):
        reg.add(demo_model_bytes(), name="two")
    with pytest.raises(PayloadTooLarge):
        reg.add(b"x" * 10_001)


@pytest.mark.parametrize(
    "name", ["", "a/b", "-x", "a" * 129, "0" * 64, "12345678-1234-1234-1234-123456789abc"]
)
def test_bad_names(registry: ModelRegistry, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid model name"):
        registry.add(demo_model_bytes(), name=name)


def test_run_checks_inputs(registry: ModelRegistry) -> None:
    registry.add(demo_model_bytes(), name="demo")
    model = registry.resolve("demo")
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        registry.run(model, {"features": x})["probabilities"], demo_reference(x), rtol=1e-6
    )
    with pytest.raises(InvalidInput, match="missing input"):
        registry.run(model, {})
    with pytest.raises(InvalidInput, match="unknown input"):
        registry.run(model, {"features": x, "extra": x})
    with pytest.raises(InvalidInput, match="must be FP32, got FP64"):
        registry.run(model, {"features": x.astype(np.float64)})
    with pytest.raises(InvalidInput, match="must have shape"):
        registry.run(model, {"features": np.ones((2, 5), np.float32)})
    with pytest.raises(InvalidInput, match="unsupported tensor dtype"):
        registry.run(model, {"features": np.ones((2, 4), np.complex64)})
    with pytest.raises(InvalidInput, match="has no output"):
        registry.run(model, {"features": x}, ["nope"])


def test_reload_from_store_and_keep_unreadable(tmp_path: Path) -> None:
    key = os.urandom(32)
    reg = ModelRegistry(SealedStore(tmp_path, key))
    info = reg.add(demo_model_bytes(), name="kept")
    (tmp_path / "00000000-0000-0000-0000-000000000000.sealed").write_bytes(
        b"BINFSEAL1" + b"\0" * 40
    )
    fresh = ModelRegistry(SealedStore(tmp_path, key))
    failed = fresh.load_stored()
    assert failed == ["00000000-0000-0000-0000-000000000000"]
    assert fresh.resolve("kept").info.sha256 == info.sha256
    assert (tmp_path / "00000000-0000-0000-0000-000000000000.sealed").exists()
    with pytest.raises(ModelNotFound):
        fresh.resolve("missing")


# --- with the store manifest (as the server runs it) -------------------------------------------

MLP = (FIXTURES / "mlp.onnx").read_bytes()


def managed(root: Path, key: bytes, max_models: int = 32) -> ModelRegistry:
    return ModelRegistry(
        SealedStore(root / "models", key),
        EngineOptions(max_models=max_models),
        manifest=StoreManifest(root, key),
    )


def test_manifest_decides_what_is_live(tmp_path: Path) -> None:
    key = os.urandom(32)
    reg = managed(tmp_path, key)
    assert reg.load_stored() == []
    gone = reg.add(demo_model_bytes(), name="gone")
    v1 = reg.add(demo_model_bytes(), name="m")
    models = tmp_path / "models"
    gone_file = (models / f"{gone.model_id}.sealed").read_bytes()
    v1_file = (models / f"{v1.model_id}.sealed").read_bytes()
    reg.delete("gone")
    v2 = reg.add(MLP, name="m", replace=True)
    assert not (models / f"{v1.model_id}.sealed").exists()
    # the operator restores the deleted model and the superseded version
    (models / f"{gone.model_id}.sealed").write_bytes(gone_file)
    (models / f"{v1.model_id}.sealed").write_bytes(v1_file)
    fresh = managed(tmp_path, key)
    assert fresh.load_stored() == []
    assert sorted(fresh.ignored) == sorted([gone.model_id, v1.model_id])
    assert fresh.resolve("m").info.model_id == v2.model_id
    with pytest.raises(ModelNotFound):
        fresh.resolve("gone")
    assert (models / f"{gone.model_id}.sealed").exists()  # reported, never deleted


def test_a_listed_file_swapped_for_another_version_is_not_served(tmp_path: Path) -> None:
    key = os.urandom(32)
    reg = managed(tmp_path, key)
    reg.load_stored()
    info = reg.add(demo_model_bytes(), name="m")
    path = tmp_path / "models" / f"{info.model_id}.sealed"
    first = path.read_bytes()
    # an authentic re-seal of the same id (same key, same AAD) is still not the listed file
    SealedStore(tmp_path / "models", key).put(info.model_id, {"name": "m", "created": "x"}, MLP)
    assert path.read_bytes() != first
    fresh = managed(tmp_path, key)
    assert fresh.load_stored() == [info.model_id]
    with pytest.raises(ModelNotFound):
        fresh.resolve("m")


def test_missing_manifest_with_sealed_models_needs_migration(tmp_path: Path) -> None:
    key = os.urandom(32)
    legacy = ModelRegistry(SealedStore(tmp_path / "models", key))
    info = legacy.add(demo_model_bytes(), name="old")
    with pytest.raises(StoreError, match=r"no store manifest.*--migrate-store"):
        managed(tmp_path, key).load_stored()
    adopted = managed(tmp_path, key)
    assert adopted.load_stored(migrate=True) == []
    assert adopted.resolve("old").info.model_id == info.model_id
    again = managed(tmp_path, key)  # the manifest now exists: no flag needed
    assert again.load_stored() == [] and again.resolve("old")


def test_replicas_share_one_store(tmp_path: Path) -> None:
    key = os.urandom(32)
    a, b = managed(tmp_path, key, max_models=2), managed(tmp_path, key, max_models=2)
    a.load_stored()
    b.load_stored()
    info = a.add(demo_model_bytes(), name="shared")
    with pytest.raises(ModelNotFound):
        b.resolve("shared")
    assert b.sync() is True
    assert b.resolve("shared").info.model_id == info.model_id
    assert b.sync() is False  # nothing new
    with pytest.raises(Conflict, match="already exists"):  # B knows, and so does the manifest
        b.add(demo_model_bytes(), name="shared")
    a.add(MLP, name="second")
    with pytest.raises(Conflict, match="limit"):  # the limit counts what all replicas stored
        b.add(MLP, name="third")
    b.delete("shared")
    assert a.sync() is True
    with pytest.raises(ModelNotFound):
        a.resolve("shared")
    replaced = b.add(demo_model_bytes(), name="second", replace=True)
    a.sync()
    assert a.resolve("second").info.model_id == replaced.model_id


def test_a_name_conflict_decided_by_the_manifest_leaves_no_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    a, b = managed(tmp_path, key), managed(tmp_path, key)
    a.load_stored()
    b.load_stored()
    a.add(demo_model_bytes(), name="x")
    with pytest.raises(Conflict):  # B has not synced: only the manifest can tell
        b.add(MLP, name="x")
    assert len(list((tmp_path / "models").glob("*.sealed"))) == 1


def test_the_demo_model_stays_in_memory(tmp_path: Path) -> None:
    key = os.urandom(32)
    a = managed(tmp_path, key)
    a.load_stored()
    a.add(demo_model_bytes(), name="demo", persist=False)
    b = managed(tmp_path, key)
    b.load_stored()
    b.add(MLP, name="other")
    a.sync()
    assert a.resolve("demo") and a.resolve("other")
    assert list((tmp_path / "models").glob("*.sealed")) == [
        tmp_path / "models" / f"{b.resolve('other').info.model_id}.sealed"
    ]
