"""The benchmark's models, built with onnx.helper (no downloads) and cached under bench/.cache/.

- ``mlp``: 64 -> 128 -> 10 with ReLU (the tiny model: measures per-request overhead).
- ``resnet18``: the real ResNet-18 topology (He et al. 2015, table 1): conv7x7/2 + BN + ReLU,
  maxpool 3x3/2, four stages of two BasicBlocks (64/128/256/512 channels, 1x1/2 projection on
  the first block of stages 2-4), global average pool, fc 1000. Input 1x3x224x224, BatchNorm kept
  as nodes (onnxruntime and tract both fold it into the convolutions).
- ``bert``: a BERT-shaped encoder (Devlin et al. 2018): word + position embeddings,
  LayerNormalization, 4 layers of 4-head MatMul/Softmax self-attention with an additive mask
  from ``attention_mask``, GELU (erf form) feed-forward 256 -> 1024 -> 256, post-LayerNorm.
  Inputs ``input_ids`` and ``attention_mask``, int64 1x128.

Weights are random (seeded) and scaled so activations stay finite: the timings, not the
answers, matter. Opset 17 (LayerNormalization is in the default domain from 17 on).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
BUILD_VERSION = "1"  # bump when a builder changes, so cached files are rebuilt


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path
    inputs: dict[str, np.ndarray]
    description: str


class _Graph:
    """Accumulates nodes and initializers with generated unique names."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def normal(self, shape: tuple[int, ...], std: float, prefix: str = "w") -> str:
        return self.const(self.rng.normal(0.0, std, shape).astype(np.float32), prefix)

    def op(self, op_type: str, inputs: list[str], prefix: str | None = None, **attrs: Any) -> str:
        out = self.name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="blindinfer-bench",
        )
        model.ir_version = 8  # readable by older runtimes (tract) too
        onnx.checker.check_model(model)
        return model


def _rename_output(g: _Graph, tensor: str, name: str) -> None:
    """Make the node producing ``tensor`` write ``name`` instead (graph output names)."""
    for node in g.nodes:
        for i, out in enumerate(node.output):
            if out == tensor:
                node.output[i] = name


# --- MLP ---------------------------------------------------------------------------------------


def build_mlp() -> onnx.ModelProto:
    g = _Graph(seed=1)
    h = g.op("Gemm", ["input", g.normal((64, 128), math.sqrt(2 / 64)), g.normal((128,), 0.01)])
    h = g.op("Relu", [h])
    out = g.op("Gemm", [h, g.normal((128, 10), math.sqrt(1 / 128)), g.normal((10,), 0.01)])
    _rename_output(g, out, "logits")
    return g.model(
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    )


# --- ResNet-18 ---------------------------------------------------------------------------------


def _conv_bn(
    g: _Graph, x: str, c_in: int, c_out: int, k: int, stride: int, relu: bool, gamma: float = 1.0
) -> str:
    w = g.normal((c_out, c_in, k, k), math.sqrt(2 / (c_in * k * k)), "conv_w")
    pad = k // 2
    y = g.op("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    bn = [
        g.const(np.full(c_out, gamma, np.float32), "bn_scale"),
        g.const(np.zeros(c_out, np.float32), "bn_bias"),
        g.const(np.zeros(c_out, np.float32), "bn_mean"),
        g.const(np.ones(c_out, np.float32), "bn_var"),
    ]
    y = g.op("BatchNormalization", [y, *bn], epsilon=1e-5)
    return g.op("Relu", [y]) if relu else y


def _basic_block(g: _Graph, x: str, c_in: int, c_out: int, stride: int) -> str:
    y = _conv_bn(g, x, c_in, c_out, 3, stride, relu=True)
    y = _conv_bn(g, y, c_out, c_out, 3, 1, relu=False, gamma=0.5)
    shortcut = x
    if stride != 1 or c_in != c_out:
        shortcut = _conv_bn(g, x, c_in, c_out, 1, stride, relu=False)
    return g.op("Relu", [g.op("Add", [y, shortcut])])


def build_resnet18() -> onnx.ModelProto:
    g = _Graph(seed=18)
    x = _conv_bn(g, "input", 3, 64, 7, 2, relu=True)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, c_out in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(g, x, c_in, c_out, stride)
            c_in = c_out
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    out = g.op("Gemm", [x, g.normal((1000, 512), math.sqrt(1 / 512)), g.normal((1000,), 0.01)])
    g.nodes[-1].attribute.append(helper.make_attribute("transB", 1))
    _rename_output(g, out, "logits")
    return g.model(
        "resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
    )


# --- BERT-shaped encoder -----------------------------------------------------------------------

SEQ = 128
HIDDEN = 256
HEADS = 4
LAYERS = 4
FFN = 1024
VOCAB = 30522


def _layer_norm(g: _Graph, x: str) -> str:
    scale = g.const(np.ones(HIDDEN, np.float32), "ln_scale")
    bias = g.const(np.zeros(HIDDEN, np.float32), "ln_bias")
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-12)


def _dense(g: _Graph, x: str, n_in: int, n_out: int) -> str:
    w = g.normal((n_in, n_out), 0.02, "dense_w")
    return g.op("Add", [g.op("MatMul", [x, w]), g.normal((n_out,), 0.02, "dense_b")])


def _heads(g: _Graph, x: str, perm: list[int]) -> str:
    shape = g.const(np.array([1, SEQ, HEADS, HIDDEN // HEADS], np.int64), "shape")
    return g.op("Transpose", [g.op("Reshape", [x, shape])], perm=perm)


def _gelu(g: _Graph, x: str) -> str:
    # GELU(x) = 0.5 x (1 + erf(x / sqrt 2)); onnxruntime fuses this pattern into one Gelu.
    inner = g.op("Div", [x, g.const(np.array(math.sqrt(2.0), np.float32), "c")])
    inner = g.op("Add", [g.op("Erf", [inner]), g.const(np.array(1.0, np.float32), "c")])
    return g.op("Mul", [g.op("Mul", [x, inner]), g.const(np.array(0.5, np.float32), "c")])


def _encoder_layer(g: _Graph, x: str, mask: str) -> str:
    q = _heads(g, _dense(g, x, HIDDEN, HIDDEN), [0, 2, 1, 3])  # 1, H, S, D
    k = _heads(g, _dense(g, x, HIDDEN, HIDDEN), [0, 2, 3, 1])  # 1, H, D, S
    v = _heads(g, _dense(g, x, HIDDEN, HIDDEN), [0, 2, 1, 3])
    scale = g.const(np.array(1 / math.sqrt(HIDDEN // HEADS), np.float32), "c")
    scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), mask])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    ctx = g.op("Transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const(np.array([1, SEQ, HIDDEN], np.int64), "shape")])
    x = _layer_norm(g, g.op("Add", [x, _dense(g, ctx, HIDDEN, HIDDEN)]))
    ffn = _dense(g, _gelu(g, _dense(g, x, HIDDEN, FFN)), FFN, HIDDEN)
    return _layer_norm(g, g.op("Add", [x, ffn]))


def build_bert() -> onnx.ModelProto:
    g = _Graph(seed=4)
    words = g.op("Gather", [g.normal((VOCAB, HIDDEN), 0.02, "word_emb"), "input_ids"], axis=0)
    x = g.op("Add", [words, g.normal((1, SEQ, HIDDEN), 0.02, "pos_emb")])
    x = _layer_norm(g, x)
    # Additive mask: 0 where attention_mask is 1, -10000 where it is 0; shape 1x1x1xS.
    m = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = g.op("Sub", [g.const(np.array(1.0, np.float32), "c"), m])
    m = g.op("Mul", [m, g.const(np.array(-10000.0, np.float32), "c")])
    mask = g.op("Reshape", [m, g.const(np.array([1, 1, 1, SEQ], np.int64), "shape")])
    for _ in range(LAYERS):
        x = _encoder_layer(g, x, mask)
    _rename_output(g, x, "last_hidden_state")
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, SEQ]) for n in ("input_ids",)]
    ints.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, SEQ]))
    return g.model(
        "bert",
        ints,
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
    )


# --- inputs and the cache ----------------------------------------------------------------------


def _inputs(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    if name == "mlp":
        return {"input": rng.standard_normal((1, 64), np.float32)}
    if name == "resnet18":
        return {"input": rng.standard_normal((1, 3, 224, 224), np.float32)}
    ids = rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64)
    mask = np.ones((1, SEQ), np.int64)
    mask[0, SEQ - 16 :] = 0  # a padded tail, so the mask matters
    return {"input_ids": ids, "attention_mask": mask}


BUILDERS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "mlp": (build_mlp, "MLP 64->128->10, ReLU"),
    "resnet18": (build_resnet18, "ResNet-18 topology, 1x3x224x224, fc 1000"),
    "bert": (build_bert, f"BERT-shaped encoder: {LAYERS} layers, hidden {HIDDEN}, seq {SEQ}"),
}
NAMES = tuple(BUILDERS)


def ensure_model(name: str, cache_dir: Path = CACHE_DIR) -> BenchModel:
    """Build ``name`` once and cache it (rebuilt when BUILD_VERSION changes)."""
    builder, description = BUILDERS[name]
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{name}-v{BUILD_VERSION}-opset{OPSET}.onnx"
    if not path.exists():
        data = builder().SerializeToString()
        tmp = path.with_suffix(".onnx.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return BenchModel(name, path, _inputs(name), description)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
