"""Image classification (kind ``image-classification``): decode, resize the shorter side,
centre-crop, normalise, one classifier graph, softmax, top-k labels.

Served contract::

    input  "input"   BYTES [1]  a JPEG or PNG
    output "labels"  BYTES [k]  class names, most probable first (k = config top_k)
    output "scores"  FP32  [k]  their softmax probabilities, descending

Bounds: the image is refused past ``max_image_pixels``/``max_image_side`` before decoding
(media.decode_image); the graph always sees one crop x crop image.

Manifest ``config`` (all optional): ``resize`` (shorter side, 16-1024, default 256), ``crop``
(16-1024, <= resize, default 224), ``mean``/``std`` (three floats each, RGB in [0, 1] units),
``top_k`` (1-100, default 5). Graph ``classifier``: float32 [n, 3, crop, crop] -> logits
[n, classes]. Asset ``labels``: UTF-8, one class name per line, as many as the graph has classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from blindinfer._pipelines.base import BuildContext, PipelineLimits, bytes_array, bytes_items
from blindinfer._pipelines.media import decode_image
from blindinfer._wire.models import TensorSpec
from blindinfer.errors import InvalidModel

KIND: Final = "image-classification"
MAX_IMAGE_BYTES: Final = 32 * 1024 * 1024


def _floats3(doc: Mapping[str, Any], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    value = doc.get(name, list(default))
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise InvalidModel(f"pipeline.json: config.{name} must be three numbers")
    if name == "std" and not all(v > 0 for v in value):
        raise InvalidModel("pipeline.json: config.std must be positive")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class _Config:
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    top_k: int

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> _Config:
        ints = {}
        for name, default, lo, hi in (("resize", 256, 16, 1024), ("crop", 224, 16, 1024),
                                      ("top_k", 5, 1, 100)):  # fmt: skip
            value = doc.get(name, default)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InvalidModel(f"pipeline.json: config.{name} must be an integer {lo}-{hi}")
            ints[name] = value
        if ints["crop"] > ints["resize"]:
            raise InvalidModel("pipeline.json: config.crop must not exceed config.resize")
        return cls(
            resize=ints["resize"],
            crop=ints["crop"],
            mean=_floats3(doc, "mean", (0.485, 0.456, 0.406)),
            std=_floats3(doc, "std", (0.229, 0.224, 0.225)),
            top_k=ints["top_k"],
        )


def _labels(raw: bytes) -> tuple[str, ...]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidModel("pipeline.json: asset 'labels' is not UTF-8") from None
    return tuple(text.rstrip("\n").split("\n"))


class ImageClassificationPipeline:
    inputs = (TensorSpec("input", "BYTES", (1,)),)

    def __init__(self, ctx: BuildContext) -> None:
        self._conf = _Config.parse(ctx.config)
        self._limits: PipelineLimits = ctx.limits
        self._labels = _labels(ctx.asset("labels"))
        self._net = ctx.session("classifier")
        self._in = self._net.get_inputs()[0].name
        self._out = self._net.get_outputs()[0].name
        classes = self._net.get_outputs()[0].shape[-1]
        if classes != len(self._labels):
            raise InvalidModel(
                f"graph 'classifier' has {classes} classes but asset 'labels' names "
                f"{len(self._labels)}"
            )
        k = min(self._conf.top_k, len(self._labels))
        self._k = k
        self.outputs = (TensorSpec("labels", "BYTES", (k,)), TensorSpec("scores", "FP32", (k,)))
        self._mean = np.array(self._conf.mean, np.float32) * 255.0
        self._scale = 1.0 / (np.array(self._conf.std, np.float32) * 255.0)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """[1, 3, crop, crop] float32: shorter side to ``resize`` (Pillow bilinear, which
        filters when shrinking), centre crop, per-channel mean/std."""
        from PIL import Image

        h, w = rgb.shape[:2]
        size = self._conf.resize
        # Rounded like torchvision's Resize(int): the shorter side exactly ``size``.
        nw, nh = (size, max(1, int(size * h / w))) if w <= h else (max(1, int(size * w / h)), size)
        img = Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR)
        c = self._conf.crop
        # Crop offsets rounded like torchvision's CenterCrop; a side shorter than the crop
        # (a very elongated photo) is padded with zeros, as CenterCrop pads.
        x0, y0 = round((nw - c) / 2.0), round((nh - c) / 2.0)
        crop = np.asarray(img.crop((x0, y0, x0 + c, y0 + c)), np.float32)
        x = (crop - self._mean) * self._scale
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def run(
        self, inputs: Mapping[str, np.ndarray], run_options: Any | None = None
    ) -> dict[str, np.ndarray]:
        (data,) = bytes_items(inputs, "input", max_items=1, max_bytes=MAX_IMAGE_BYTES)
        x = self.preprocess(decode_image(data, self._limits))
        logits = self._net.run([self._out], {self._in: x}, run_options)[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs, kind="stable")[: self._k]
        return {
            "labels": bytes_array([self._labels[i] for i in top]),
            "scores": probs[top].astype(np.float32),
        }


def build(ctx: BuildContext) -> ImageClassificationPipeline:
    return ImageClassificationPipeline(ctx)
