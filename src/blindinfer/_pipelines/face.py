"""Face embedding (kind ``face-embedding``): MTCNN finds faces and five landmarks, each face is
aligned to a fixed 5-point template (least-squares similarity transform, Pillow bilinear warp)
into a 150x150 crop, and dlib's ResNet turns it into a 128-d descriptor, L2-normalised.

Input ``input``: BYTES [1], one JPEG or PNG. Outputs ``boxes`` FP32 [n, 4] (x0, y0, x1, y1 in
pixels of the decoded image) and ``embeddings`` FP32 [n, 128], the n <= ``max_faces`` most
confident faces, best first. Two faces are the same person when the Euclidean distance of their
embeddings is below ``config["match_distance"]`` (reported in docs/pipelines/face.md).

Every loop is bounded: pyramid levels (``max_levels``), boxes per stage (``max_proposals``,
``max_refine``), faces (``PipelineLimits.max_faces``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from blindinfer._pipelines.base import BuildContext, PipelineLimits, bytes_items
from blindinfer._pipelines.media import decode_image
from blindinfer._wire.models import TensorSpec
from blindinfer.errors import InvalidInput

KIND = "face-embedding"
MAX_IMAGE_BYTES = 32 * 1024 * 1024
_RECOG_BATCH = 16

# Where the five MTCNN landmarks (eyes, nose tip, mouth corners; subject's right first as seen in
# the image: left-to-right) are placed in the 150x150 crop the recogniser reads: dlib's chip
# layout (face box in the middle two thirds, 25% padding around).
TEMPLATE_150 = np.array(
    [[55.0, 58.0], [95.0, 58.0], [75.0, 82.0], [59.0, 104.0], [91.0, 104.0]], np.float64
)


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, union: bool = True) -> np.ndarray:
    """Indices kept by greedy NMS (IoU, or intersection over the smaller box), best first."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    keep: list[int] = []
    while order.size:  # each pass removes at least one index: bounded by len(boxes)
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        denom = (area[i] + area[rest] - inter) if union else np.minimum(area[i], area[rest])
        order = rest[inter / denom <= thresh]
    return np.array(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)


def _crops(img: Any, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box (pixel corners, may leave the image: outside is black) resized to size x size,
    as an N x 3 x size x size MTCNN input."""
    from PIL import Image

    out = np.empty((len(boxes), 3, size, size), np.float32)
    for i, b in enumerate(boxes):  # len(boxes) <= max_proposals / max_refine
        x0, y0 = int(np.floor(b[0])), int(np.floor(b[1]))
        x1, y1 = max(x0 + 1, int(np.ceil(b[2]))), max(y0 + 1, int(np.ceil(b[3])))
        crop = img.crop((x0, y0, x1, y1)).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = _normalise(np.asarray(crop)).transpose(2, 0, 1)
    return out


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity transform (rotation, uniform scale, shift) mapping src
    points onto dst points."""
    n = len(src)
    a = np.zeros((2 * n, 4))
    a[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], 1)
    a[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], 1)
    (p, q, tx, ty), *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
    return np.array([[p, -q, tx], [q, p, ty]])


_NONE = (np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0))


class FacePipeline:
    inputs = (TensorSpec(name="input", datatype="BYTES", shape=(1,)),)
    outputs = (
        TensorSpec(name="boxes", datatype="FP32", shape=(-1, 4)),
        TensorSpec(name="embeddings", datatype="FP32", shape=(-1, 128)),
    )

    def __init__(self, ctx: BuildContext) -> None:
        cfg = ctx.config
        self._limits: PipelineLimits = ctx.limits
        self._pnet = ctx.session("pnet")
        self._rnet = ctx.session("rnet")
        self._onet = ctx.session("onet")
        self._recog = ctx.session("embed")
        self._min_face = float(cfg.get("min_face", 20))
        self._factor = float(cfg.get("factor", 0.709))
        self._max_levels = int(cfg.get("max_levels", 24))
        self._thresholds = [float(t) for t in cfg.get("thresholds", [0.6, 0.7, 0.9])]
        self._max_side = int(cfg.get("max_pnet_side", 1024))
        self._max_proposals = int(cfg.get("max_proposals", 2000))
        self._max_refine = int(cfg.get("max_refine", 400))
        self._size = int(cfg.get("recog_size", 150))
        self._template = TEMPLATE_150 * (self._size / 150.0)
        if not 0.1 <= self._factor < 1.0 or self._min_face < 12:
            raise InvalidInput("face pipeline config: factor must be in [0.1, 1), min_face >= 12")

    def run(
        self, inputs: Mapping[str, np.ndarray], run_options: Any | None = None
    ) -> dict[str, np.ndarray]:
        if "input" not in inputs:
            raise InvalidInput("input 'input' is missing")
        (data,) = bytes_items(inputs, "input", max_items=1, max_bytes=MAX_IMAGE_BYTES)
        rgb = decode_image(data, self._limits)
        boxes, points, _ = self.detect(rgb, run_options)
        if not len(boxes):
            return {
                "boxes": np.zeros((0, 4), np.float32),
                "embeddings": np.zeros((0, 128), np.float32),
            }
        return {
            "boxes": boxes.astype(np.float32),
            "embeddings": self.embed(rgb, points, run_options),
        }

    # --- detection ---------------------------------------------------------------------------

    def detect(
        self, rgb: np.ndarray, run_options: Any = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Face boxes (x0, y0, x1, y1, pixels), their 5 landmarks (n x 5 x 2) and O-Net
        probabilities, best first."""
        from PIL import Image

        h, w = rgb.shape[:2]
        img = Image.fromarray(rgb)
        # P-Net runs on a copy whose longer side is at most max_pnet_side (bounded work).
        shrink = min(1.0, self._max_side / max(h, w))
        small = (
            img
            if shrink == 1.0
            else img.resize(
                (max(1, round(w * shrink)), max(1, round(h * shrink))), Image.Resampling.BOX
            )
        )
        sw, sh = small.size
        eff_shrink = sw / w
        min_face = max(12.0, self._min_face * eff_shrink)
        scale = 12.0 / min_face
        found: list[np.ndarray] = []
        for _ in range(self._max_levels):
            lw, lh = int(np.ceil(sw * scale)), int(np.ceil(sh * scale))
            if min(lw, lh) < 12:
                break
            level = small.resize((lw, lh), Image.Resampling.BOX)
            x = _normalise(np.asarray(level)).transpose(2, 0, 1)[None]
            prob, reg = self._pnet.run(["prob", "reg"], {"image": x}, run_options)
            ys, xs = np.nonzero(prob[0] >= self._thresholds[0])
            if len(ys):
                score = prob[0][ys, xs]
                if len(score) > self._max_proposals:
                    top = np.argsort(-score, kind="stable")[: self._max_proposals]
                    ys, xs, score = ys[top], xs[top], score[top]
                cell = np.stack([xs, ys], 1).astype(np.float64)
                q1 = np.floor((2 * cell + 1) / scale)
                q2 = np.floor((2 * cell + 12) / scale)
                cand = np.concatenate([q1, q2, score[:, None], reg[0][:, ys, xs].T], 1)
                cand = cand[_nms(cand[:, :4], cand[:, 4], 0.5)]
                found.append(cand)
            scale *= self._factor
        if not found:
            return _NONE
        cand = np.concatenate(found)
        cand = cand[np.argsort(-cand[:, 4], kind="stable")[: self._max_proposals]]
        cand = cand[_nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = _square(_regress(cand[:, :4], cand[:, 5:9])) / eff_shrink
        boxes = boxes[: self._max_refine]

        # R-Net on 24x24 crops of the original image.
        prob, reg = self._batched(self._rnet, ["prob", "reg"], _crops(img, boxes, 24), run_options)
        keep = prob > self._thresholds[1]
        boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
        if not len(boxes):
            return _NONE
        pick = _nms(boxes, prob, 0.7)[: self._max_refine]
        boxes = _square(_regress(boxes[pick], reg[pick]))

        # O-Net on 48x48 crops: final boxes and landmarks.
        prob, reg, pts = self._batched(
            self._onet, ["prob", "reg", "points"], _crops(img, boxes, 48), run_options
        )
        keep = prob > self._thresholds[2]
        boxes, prob, reg, pts = boxes[keep], prob[keep], reg[keep], pts[keep]
        if not len(boxes):
            return _NONE
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.stack([bw * pts[:, :5] + boxes[:, :1], bh * pts[:, 5:] + boxes[:, 1:2]], 2)
        boxes = _regress(boxes, reg)
        pick = _nms(boxes, prob, 0.7, union=False)[: self._limits.max_faces]
        boxes = boxes[pick]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        return boxes, points[pick], prob[pick]

    def _batched(
        self, session: Any, names: list[str], x: np.ndarray, run_options: Any
    ) -> list[np.ndarray]:
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(x), 64):  # len(x) <= max_refine
            outs = session.run(names, {"image": x[start : start + 64]}, run_options)
            for acc, o in zip(parts, outs, strict=True):
                acc.append(o)
        return [np.concatenate(p).astype(np.float64) for p in parts]

    # --- alignment and embedding ---------------------------------------------------------------

    def aligned(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
        """The size x size RGB crop of one face, its landmarks on the template."""
        from PIL import Image

        m = similarity(self._template, points)  # crop pixel -> image pixel (what PIL wants)
        crop = Image.fromarray(rgb).transform(
            (self._size, self._size),
            Image.Transform.AFFINE,
            tuple(m.reshape(-1)),
            resample=Image.Resampling.BILINEAR,
        )
        return np.asarray(crop)

    def embed(self, rgb: np.ndarray, points: np.ndarray, run_options: Any = None) -> np.ndarray:
        crops = np.stack([self.aligned(rgb, p) for p in points]).astype(np.float32)
        x = crops.transpose(0, 3, 1, 2)
        outs = []
        for start in range(0, len(x), _RECOG_BATCH):  # len(x) <= max_faces
            outs.append(
                self._recog.run(
                    ["embedding"], {"image": x[start : start + _RECOG_BATCH]}, run_options
                )[0]
            )
        emb = np.concatenate(outs).astype(np.float32)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        out: np.ndarray = (emb / np.maximum(norm, 1e-12)).astype(np.float32)
        return out


def build(ctx: BuildContext) -> FacePipeline:
    return FacePipeline(ctx)
