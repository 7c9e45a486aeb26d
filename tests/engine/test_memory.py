"""One copy of each model in memory: a served model costs about its size, not twice it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from blindinfer._engine.registry import release_model_bytes

# Runs in a fresh interpreter so RSS is this model's alone: imports first, then a 64 MiB model
# built, served through the real registry (validated, sealed to disk, loaded), its bytes dropped.
SCRIPT = textwrap.dedent(
    """
    import gc, os, sys, tempfile
    from pathlib import Path
    import numpy as np, onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    from blindinfer._engine.registry import EngineOptions, ModelRegistry
    from blindinfer._storage.sealed import SealedStore

    def rss():
        for line in open(f"/proc/{os.getpid()}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024

    def model_bytes():
        w = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    registry = ModelRegistry(
        SealedStore(Path(tempfile.mkdtemp()) / "models", bytes(32)), EngineOptions()
    )
    registry.add(model_bytes().SerializeToString(), name="warm")  # first-use costs, not per model
    registry.delete("warm")
    gc.collect()
    before = rss()
    data = model_bytes().SerializeToString()
    size = len(data)
    registry.add(data, name="big")
    del data
    gc.collect()
    out = registry.run(registry.resolve("big"), {"x": np.ones((1, 4096), np.float32)})
    assert out["y"].shape == (1, 4096)
    print(size, rss() - before)
    """
)


def test_retained_memory_per_served_model_is_about_its_size() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    size, retained = map(int, out.stdout.split())
    assert retained <= 1.15 * size, f"{retained / size:.2f}x the model's size retained"


# Peak memory while one model is validated and loaded: the bytes are there already, onnxruntime
# makes its one copy of the weights; nothing else may copy them (a full parse into Python, a
# walk that materialised every raw_data, the checker's own parse and onnxruntime's parse of the
# whole protobuf each did: 4x the model's size on top of it before).
PEAK_SCRIPT = textwrap.dedent(
    """
    import gc, os
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from blindinfer._engine.registry import EngineOptions, ModelRegistry

    def status(key):
        for line in open(f"/proc/{os.getpid()}/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    def model_bytes(n):
        w = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])
        node = helper.make_node("Add", ["x", "w"], ["y"])
        graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    registry = ModelRegistry(None, EngineOptions())
    registry.add(model_bytes(1 << 20).SerializeToString(), name="warm", persist=False)
    data = model_bytes(16 << 20).SerializeToString()
    gc.collect()
    before = status("VmRSS")
    with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    registry.add(data, name="big", persist=False)
    print(len(data), status("VmHWM") - before)
    """
)


def test_loading_a_model_copies_its_weights_once() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    size, grown = map(int, out.stdout.split())
    assert grown <= 1.3 * size, f"peak grew by {grown / size:.2f}x the model's size"


def test_onnxruntime_still_names_the_retained_bytes() -> None:
    """If onnxruntime renames ``_model_bytes`` or ``_sess_options_initial``, the drop above
    silently stops working."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = ort.InferenceSession(data, ort.SessionOptions(), providers=["CPUExecutionProvider"])
    assert session._model_bytes is data
    assert session._sess_options_initial is not None  # holds the views of an upload
    release_model_bytes(session)
    assert session._model_bytes is None
    assert session._sess_options_initial is None
    assert session.run(None, {"x": np.ones(1, np.float32)})[0].tolist() == [1.0]
