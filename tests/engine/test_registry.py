"""Model validation and the registry, in process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from blindinfer._engine.demo import demo_model_bytes, demo_reference
from blindinfer._engine.registry import EngineOptions, ModelRegistry
from blindinfer._storage.sealed import SealedStore
from blindinfer.errors import Conflict, InvalidInput, InvalidModel, ModelNotFound, PayloadTooLarge

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
