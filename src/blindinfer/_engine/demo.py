"""The demo model preloaded by ``blindinfer serve``: a tiny 4-feature, 3-class classifier.

Built in code (fixed weights) so a fresh install can be queried at once with no download:
input ``features`` FP32 [batch, 4] -> output ``probabilities`` FP32 [batch, 3] (softmax of an
affine map). The weights are arbitrary; it demonstrates the path, not a useful prediction.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEMO_NAME = "demo"
WEIGHTS = np.array(
    [[0.9, -0.4, -0.5], [0.3, 0.2, -0.6], [-1.2, 0.4, 0.9], [-0.8, 0.1, 1.1]], dtype=np.float32
)
BIAS = np.array([0.5, 0.1, -0.6], dtype=np.float32)


def demo_model_bytes() -> bytes:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "blindinfer_demo",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def demo_reference(features: np.ndarray) -> np.ndarray:
    """What the demo model computes, in numpy (for docs and tests)."""
    logits = features.astype(np.float32) @ WEIGHTS + BIAS
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


if __name__ == "__main__":  # pragma: no cover
    onnx.checker.check_model(onnx.load_model_from_string(demo_model_bytes()))
