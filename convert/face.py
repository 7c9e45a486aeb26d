"""Face embedding (served as ``face-embed``): MTCNN detector (P-Net, R-Net, O-Net) from the
``facenet-pytorch`` wheel and dlib's ResNet face-recognition network (128-d descriptors) as
shipped, uint8-quantised for tfjs, in the ``@vladmandic/face-api`` npm package.

MTCNN: the three state dicts are loaded into modules written here (same layer names) and exported
to ONNX with torch. Recognition net: the tfjs weights are dequantised (value = q * scale + min),
each conv's bias and the following per-channel scale layer are folded into the conv, and the
graph (topology read from face-api's ``src/faceRecognitionNet``) is built with onnx.helper.
Nothing from either package's code is used at run time.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from convert._fetch import Pin, fetch, member

NAME = "face-embed"

PINS: tuple[Pin, ...] = (
    # Licence: MIT (facenet-pytorch); the MTCNN weights are the original MTCNN authors' (MIT).
    Pin(
        registry="pypi",
        package="facenet-pytorch",
        version="2.6.0",
        filename="facenet_pytorch-2.6.0-py3-none-any.whl",
        sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
        license="MIT",
    ),
    # Licence: MIT (face-api); dlib's face-recognition ResNet weights are public domain (CC0).
    Pin(
        registry="npm",
        package="@vladmandic/face-api",
        version="1.7.15",
        filename="vladmandic-face-api-1.7.15.tgz",
        sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        license="MIT (code), public domain (dlib weights)",
    ),
)

MEAN_RGB = (122.782, 117.001, 104.298)  # face-api FaceRecognitionNet: (x - mean) / 255
RECOG_SIZE = 150

CONFIG = {
    "min_face": 20,  # smallest face side searched, pixels of the original image
    "factor": 0.709,  # image pyramid scale step
    "max_levels": 24,  # pyramid levels at most
    # P-Net, R-Net, O-Net face probabilities (O-Net 0.9, not the usual 0.7: a JPEG of the
    # astronaut photo has a 0.84 false face on the suit; real faces score > 0.99)
    "thresholds": [0.6, 0.7, 0.9],
    "max_pnet_side": 1024,  # the image is shrunk so that its longer side is at most this
    "max_proposals": 2000,  # P-Net boxes kept (best first) after the per-level NMS
    "max_refine": 400,  # R-Net boxes kept for O-Net
    "recog_size": RECOG_SIZE,
    "match_distance": 0.4,  # Euclidean distance of L2-normalised embeddings: same person below
}


# --- MTCNN (torch, dev only) ---------------------------------------------------------------


def _mtcnn_modules() -> tuple[Any, Any, Any]:
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
            self.prelu1 = nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
            self.prelu2 = nn.PReLU(16)
            self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
            self.prelu3 = nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
            self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
            return prob, self.conv4_2(x)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
            self.prelu1 = nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
            self.prelu2 = nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
            self.prelu3 = nn.PReLU(64)
            self.dense4 = nn.Linear(576, 128)
            self.prelu4 = nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x))
            x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
            x = self.prelu4(self.dense4(x))
            prob = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
            return prob, self.dense5_2(x)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
            self.prelu1 = nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
            self.prelu2 = nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
            self.prelu3 = nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
            self.prelu4 = nn.PReLU(128)
            self.dense5 = nn.Linear(1152, 256)
            self.prelu5 = nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
            x = self.prelu5(self.dense5(x))
            prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
            return prob, self.dense6_2(x), self.dense6_3(x)

    return PNet, RNet, ONet


def _export_mtcnn(wheel: Path, out: Path) -> dict[str, str]:
    import torch

    torch.manual_seed(0)
    pnet, rnet, onet = _mtcnn_modules()
    specs = {
        "pnet": (pnet, (1, 3, 48, 64), ["prob", "reg"], {"image": {2: "h", 3: "w"}}),
        "rnet": (rnet, (2, 3, 24, 24), ["prob", "reg"], {"image": {0: "n"}}),
        "onet": (onet, (2, 3, 48, 48), ["prob", "reg", "points"], {"image": {0: "n"}}),
    }
    graphs: dict[str, str] = {}
    for role, (cls, shape, outs, dyn) in specs.items():
        model = cls()
        state = torch.load(
            io.BytesIO(member(wheel, f"facenet_pytorch/data/{role}.pt")), weights_only=True
        )
        model.load_state_dict({k: v for k, v in state.items() if "softmax" not in k})
        model.eval()
        dynamic = {**dyn, **{o: {0: "n"} for o in outs}} if role != "pnet" else dyn
        if role == "pnet":
            dynamic = {"image": {2: "h", 3: "w"}, "prob": {1: "ph", 2: "pw"},
                       "reg": {2: "ph", 3: "pw"}}  # fmt: skip
        name = f"{role}.onnx"
        probe = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            want = [t.numpy() for t in model(probe)]
        torch.onnx.export(
            model, (torch.zeros(shape),), str(out / name), input_names=["image"],
            output_names=outs, dynamic_axes=dynamic, opset_version=17, dynamo=False,
        )  # fmt: skip
        graphs[role] = name
        _check_mtcnn(out / name, probe.numpy(), want)
    return graphs


def _check_mtcnn(path: Path, probe: np.ndarray, want: list[np.ndarray]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for got, ref in zip(sess.run(None, {"image": probe}), want, strict=True):
        if got.shape != ref.shape or not np.allclose(got, ref, atol=1e-5):
            raise RuntimeError(f"{path.name} differs from the torch module")


# --- dlib face recognition ResNet (tfjs weights -> onnx.helper graph) -----------------------


def read_tfjs(tarball: Path) -> dict[str, np.ndarray]:
    """face-api's recognition weights by name, dequantised to float32."""
    manifest = json.loads(
        member(tarball, "package/model/face_recognition_model-weights_manifest.json")
    )
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join(member(tarball, "package/model/" + p) for p in group["paths"])
        pos = 0
        for w in group["weights"]:
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            if q:
                if q["dtype"] != "uint8":
                    raise RuntimeError(f"{w['name']}: unexpected quantisation {q['dtype']}")
                raw = np.frombuffer(data, np.uint8, count, pos).astype(np.float64)
                pos += count
                value = (raw * q["scale"] + q["min"]).astype(np.float32)
            else:
                if w["dtype"] != "float32":
                    raise RuntimeError(f"{w['name']}: unexpected dtype {w['dtype']}")
                value = np.frombuffer(data, "<f4", count, pos).copy()
                pos += 4 * count
            weights[w["name"]] = value.reshape(w["shape"])
        if pos != len(data):
            raise RuntimeError(f"weights file holds {len(data)} bytes, manifest names {pos}")
    return weights


RESNET: tuple[tuple[str, str], ...] = (
    ("conv32_1", "res"), ("conv32_2", "res"), ("conv32_3", "res"),
    ("conv64_down", "down"), ("conv64_1", "res"), ("conv64_2", "res"), ("conv64_3", "res"),
    ("conv128_down", "down"), ("conv128_1", "res"), ("conv128_2", "res"),
    ("conv256_down", "down"), ("conv256_1", "res"), ("conv256_2", "res"),
    ("conv256_down_out", "down"),
)  # fmt: skip


def reference_embed(w: dict[str, np.ndarray], rgb: np.ndarray) -> np.ndarray:
    """numpy re-implementation of face-api's forward pass (unfolded; NHWC like tfjs), for the
    converter's check. ``rgb``: float 150x150x3 in 0..255. Returns the raw 128-d output."""
    from numpy.lib.stride_tricks import sliding_window_view as windows

    def conv(x: np.ndarray, prefix: str, stride: int, relu: bool, same: bool) -> np.ndarray:
        f = w[prefix + "/conv/filters"].astype(np.float64)
        k = f.shape[0]
        if same:
            x = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
        win = windows(x, (k, k), axis=(0, 1))[::stride, ::stride]  # H W C k k
        y = np.einsum("hwcij,ijco->hwo", win, f)
        y = (y + w[prefix + "/conv/bias"]) * w[prefix + "/scale/weights"] + w[
            prefix + "/scale/biases"
        ]
        out: np.ndarray = np.maximum(y, 0) if relu else y
        return out

    x = (rgb.astype(np.float64) - np.array(MEAN_RGB)) / 255.0
    x = conv(x, "conv32_down", 2, True, False)
    x = windows(x, (3, 3), axis=(0, 1))[::2, ::2].max(axis=(3, 4))
    for name, kind in RESNET:
        if kind == "res":
            y = conv(x, name + "/conv1", 1, True, True)
            y = conv(y, name + "/conv2", 1, False, True)
            x = np.maximum(y + x, 0)
        else:
            y = conv(x, name + "/conv1", 2, True, False)
            y = conv(y, name + "/conv2", 1, False, True)
            h2, w2 = x.shape[0] // 2, x.shape[1] // 2
            pooled = x[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2, -1).mean(axis=(1, 3))
            if pooled.shape[:2] != y.shape[:2]:
                y = np.pad(y, ((0, 1), (0, 1), (0, 0)))
            if pooled.shape[2] != y.shape[2]:
                pooled = np.pad(pooled, ((0, 0), (0, 0), (0, y.shape[2] - pooled.shape[2])))
            x = np.maximum(pooled + y, 0)
    out: np.ndarray = x.mean(axis=(0, 1)) @ w["fc"]
    return out


def _recognition_onnx(w: dict[str, np.ndarray]) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def fresh(base: str) -> str:
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def conv(x: str, prefix: str, stride: int, relu: bool, same: bool) -> str:
        f = w[prefix + "/conv/filters"].astype(np.float64)  # HWIO
        s = w[prefix + "/scale/weights"].astype(np.float64)
        kernel = (f * s).transpose(3, 2, 0, 1).astype(np.float32)  # OIHW
        bias = (w[prefix + "/conv/bias"] * s + w[prefix + "/scale/biases"]).astype(np.float32)
        k = f.shape[0]
        y = fresh(prefix)
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(prefix + "/W", kernel), const(prefix + "/B", bias)],
                [y],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4 if same else [0] * 4,
            )
        )
        if relu:
            r = fresh(prefix + "/relu")
            nodes.append(helper.make_node("Relu", [y], [r]))
            return r
        return y

    def pad(x: str, pads: list[int]) -> str:
        y = fresh("pad")
        nodes.append(helper.make_node("Pad", [x, const(y + "/p", np.array(pads, np.int64))], [y]))
        return y

    mean = np.array(MEAN_RGB, np.float32).reshape(1, 3, 1, 1)
    nodes.append(helper.make_node("Sub", ["image", const("mean_rgb", mean)], ["centred"]))
    nodes.append(
        helper.make_node("Mul", ["centred", const("inv255", np.array(1 / 255, np.float32))], ["x0"])
    )
    x = conv("x0", "conv32_down", 2, True, False)
    nodes.append(helper.make_node("MaxPool", [x], ["pool0"], kernel_shape=[3, 3], strides=[2, 2]))
    x, side, chans = "pool0", ((RECOG_SIZE - 7) // 2 + 1 - 3) // 2 + 1, 32
    for name, kind in RESNET:
        if kind == "res":
            y = conv(x, name + "/conv1", 1, True, True)
            y = conv(y, name + "/conv2", 1, False, True)
        else:
            y = conv(x, name + "/conv1", 2, True, False)
            y = conv(y, name + "/conv2", 1, False, True)
            out_side, out_ch = (side - 3) // 2 + 1, w[name + "/conv2/conv/filters"].shape[3]
            pooled = fresh(name + "/avg")
            nodes.append(
                helper.make_node("AveragePool", [x], [pooled], kernel_shape=[2, 2], strides=[2, 2])
            )
            if side // 2 != out_side:
                y = pad(y, [0, 0, 0, 0, 0, 0, 1, 1])
                out_side += 1
            if out_ch != chans:
                pooled = pad(pooled, [0, 0, 0, 0, 0, out_ch - chans, 0, 0])
            x, side, chans = pooled, out_side, out_ch
        added, r = fresh(name + "/add"), fresh(name + "/out")
        nodes.append(helper.make_node("Add", [y, x], [added]))
        nodes.append(helper.make_node("Relu", [added], [r]))
        x = r
    nodes.append(helper.make_node("ReduceMean", [x], ["gap"], axes=[2, 3], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["gap", const("fc", w["fc"])], ["embedding"]))
    graph = helper.make_graph(
        nodes,
        "dlib_face_recognition_resnet",
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["n", 3, RECOG_SIZE, RECOG_SIZE]
            )
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 128])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _check_recognition(w: dict[str, np.ndarray], onnx_bytes: bytes) -> float:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (RECOG_SIZE, RECOG_SIZE, 3)).astype(np.float32)
    ref = reference_embed(w, img)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": img.transpose(2, 0, 1)[None]})[0][0]
    err = float(np.abs(got - ref).max() / max(1e-12, float(np.abs(ref).max())))
    if err > 1e-4:
        raise RuntimeError(f"recognition ONNX differs from the numpy reference: {err:.2e}")
    return err


def build(out: Path) -> None:
    wheel, tarball = fetch(PINS[0]), fetch(PINS[1])
    graphs = _export_mtcnn(wheel, out)
    weights = read_tfjs(tarball)
    recog = _recognition_onnx(weights)
    _check_recognition(weights, recog)
    (out / "recog.onnx").write_bytes(recog)
    graphs["embed"] = "recog.onnx"
    manifest = {
        "blindinfer_pipeline": 1,
        "kind": "face-embedding",
        "graphs": graphs,
        "assets": {},
        "config": CONFIG,
    }
    (out / "pipeline.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")


# face-api's own forward pass (tfjs CPU backend, under node), for a manual cross-check:
# ``python -c "import convert.face as f; print(f.check_against_face_api_js())"``.
_NODE_CHECK = r"""
try { Object.defineProperty(process.versions, 'node', { value: undefined, configurable: true }); }
catch (e) { }
const faceapi = await import(process.argv[2] + '/dist/face-api.esm.js');
const fs = await import('fs');
const tf = faceapi.tf;
tf.env().setPlatform('plain', {
  isTypedArray: (a) => ArrayBuffer.isView(a) && !(a instanceof DataView),
  encode: (s) => new TextEncoder().encode(s), decode: (b, e) => new TextDecoder(e).decode(b),
  now: () => performance.now(), fetch: () => { throw new Error('no fetch'); },
  setTimeoutCustom: (f, t) => setTimeout(f, t) });
await tf.setBackend('cpu'); await tf.ready();
class K {}
faceapi.env.setEnv({ Canvas: K, CanvasRenderingContext2D: K, Image: K, ImageData: K, Video: K,
  createCanvasElement: () => ({}), createImageElement: () => ({}),
  createVideoElement: () => ({}), fetch: () => { throw new Error('no'); },
  readFile: () => { throw new Error('no'); } });
const dir = process.argv[2] + '/model/';
const manifest = JSON.parse(fs.readFileSync(dir + 'face_recognition_model-weights_manifest.json'));
const bin = fs.readFileSync(dir + 'face_recognition_model.bin');
const ab = bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength);
const net = faceapi.nets.faceRecognitionNet;
net.loadFromWeightMap(tf.io.decodeWeights(ab, manifest[0].weights));
const raw = fs.readFileSync(process.argv[3]);
const pixels = new Float32Array(raw.buffer, raw.byteOffset, 150 * 150 * 3);
const x = tf.tensor4d(pixels, [1, 150, 150, 3]);
const out = net.forwardInput(await faceapi.toNetInput(x));
fs.writeFileSync(process.argv[4], JSON.stringify(Array.from(await out.data())));
"""


def check_against_face_api_js(onnx_path: Path | None = None) -> float:
    """Max relative difference between face-api's JS forward pass (node + its bundled tfjs)
    and the converted recognition ONNX on one random 150x150 input."""
    import subprocess
    import tarfile
    import tempfile

    import onnxruntime as ort

    tarball = fetch(PINS[1])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with tarfile.open(tarball) as tf:
            tf.extractall(root, filter="data")
        img = np.random.default_rng(0).uniform(0, 255, (RECOG_SIZE, RECOG_SIZE, 3))
        img = img.astype(np.float32)
        img.tofile(root / "probe.f32")
        (root / "check.mjs").write_text(_NODE_CHECK)
        subprocess.run(
            ["node", str(root / "check.mjs"), str(root / "package"), str(root / "probe.f32"),
             str(root / "out.json")],
            check=True, capture_output=True,
        )  # fmt: skip
        js = np.array(json.loads((root / "out.json").read_text()), np.float64)
        if onnx_path is None:
            onnx_bytes = _recognition_onnx(read_tfjs(tarball))
        else:
            onnx_bytes = onnx_path.read_bytes()
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": img.transpose(2, 0, 1)[None]})[0][0]
    return float(np.abs(got - js).max() / np.abs(js).max())
