"""OCR of one page image: PP-OCR text detection (DB), optional 180-degree line classifier, and
CTC text recognition, with the pre/post-processing done here in numpy/scipy/Pillow.

Served contract::

    input  "input"  BYTES [1]    a JPEG or PNG of a page
    output "lines"  BYTES [m]    UTF-8 text lines in reading order (rows top to bottom, left to
                                 right within a row)
    output "boxes"  FP32  [m, 4] x0, y0, x1, y1 of each line, pixels of the decoded image

Bounds: the image is refused past ``max_image_pixels``/``max_image_side`` before decoding; the
detector sees at most about ``det_max_pixels`` pixels and ``det_max_side`` on a side
(the image is shrunk to fit, never enlarged); more than ``max_text_lines`` text
regions is refused (PayloadTooLarge) before any line is recognised; a recognised line is at most
``rec_max_width`` pixels wide at ``rec_height`` (a longer one is squeezed), so its text is at
most rec_max_width / 8 characters.

Manifest ``config`` (all optional, defaults below): ``det_max_pixels``, ``det_max_side``,
``det_pad``, ``det_thresh``, ``box_thresh``, ``unclip_ratio``, ``min_box_side``, ``rec_height``,
``rec_max_width``,
``rec_batch``, ``cls_thresh``, ``use_classifier``, ``text_score``. Graphs: ``detector``,
``recognizer`` and (when ``use_classifier``) ``classifier``; asset ``dictionary``: the
recogniser's characters, one per line (CTC class i+1; the last class is a space).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from blindinfer._pipelines.base import BuildContext, PipelineLimits, bytes_array, bytes_items
from blindinfer._pipelines.media import decode_image
from blindinfer._pipelines.ocr_postprocess import ctc_greedy, db_regions, reading_order
from blindinfer._wire.models import TensorSpec
from blindinfer.errors import InvalidModel, PayloadTooLarge

KIND: Final = "ocr"
MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024  # one encoded page
_CLS_SHAPE: Final = (48, 192)  # the PP-OCR direction classifier's input (height, width)
_REC_MIN_WIDTH: Final = 320  # PP-OCR pads recogniser batches to at least 320 x 48
_CLS_WINDOWS: Final = 4  # classifier windows read per line
_MAX_SIDE_CAP: Final = 4096  # det_max_side / rec_max_width a manifest may ask for
_MAX_DET_PIXELS: Final = 4096 * 4096  # det_max_pixels a manifest may ask for


@dataclass(frozen=True)
class _Config:
    det_max_pixels: int = 1280 * 1280
    det_max_side: int = 4096
    det_pad: int = 32
    det_thresh: float = 0.3
    box_thresh: float = 0.55
    unclip_ratio: float = 2.2
    min_box_side: float = 3.0
    rec_height: int = 48
    rec_max_width: int = 3200
    rec_batch: int = 8
    cls_thresh: float = 0.9
    use_classifier: bool = True
    text_score: float = 0.5

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> _Config:
        base = cls()
        values: dict[str, Any] = {}
        for name, default in base.__dict__.items():
            value = doc.get(name, default)
            kind = type(default)
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                value = float(value) if ok else value
            if not ok:
                raise InvalidModel(f"pipeline.json: config.{name} must be a {kind.__name__}")
            values[name] = value
        conf = cls(**values)
        if not 0 <= conf.det_pad <= 256 or conf.det_pad % 16:
            raise InvalidModel("pipeline.json: config.det_pad must be a multiple of 16, 0-256")
        if not 32 <= conf.det_max_side <= _MAX_SIDE_CAP:
            raise InvalidModel(f"pipeline.json: config.det_max_side must be 32-{_MAX_SIDE_CAP}")
        if not 32 * 32 <= conf.det_max_pixels <= _MAX_DET_PIXELS:
            raise InvalidModel(
                f"pipeline.json: config.det_max_pixels must be {32 * 32}-{_MAX_DET_PIXELS}"
            )
        if not 8 <= conf.rec_height <= 128 or not conf.rec_height <= conf.rec_max_width:
            raise InvalidModel("pipeline.json: config.rec_height must be 8-128")
        if conf.rec_max_width > _MAX_SIDE_CAP:
            raise InvalidModel(f"pipeline.json: config.rec_max_width must be <= {_MAX_SIDE_CAP}")
        if not 1 <= conf.rec_batch <= 64:
            raise InvalidModel("pipeline.json: config.rec_batch must be 1-64")
        for name in ("det_thresh", "box_thresh", "cls_thresh", "text_score"):
            if not 0.0 <= getattr(conf, name) <= 1.0:
                raise InvalidModel(f"pipeline.json: config.{name} must be in [0, 1]")
        if not 0.0 <= conf.unclip_ratio <= 10.0 or not 0.0 <= conf.min_box_side <= 100.0:
            raise InvalidModel("pipeline.json: config.unclip_ratio/min_box_side out of range")
        return conf


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 BGR in [-1, 1] (PP-OCR models were trained on BGR)."""
    x = rgb[:, :, ::-1].astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _resize_h(rgb: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    width = max(1, math.ceil(height * rgb.shape[1] / rgb.shape[0]))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


class OcrPipeline:
    inputs = (TensorSpec("input", "BYTES", (1,)),)
    outputs = (TensorSpec("lines", "BYTES", (-1,)), TensorSpec("boxes", "FP32", (-1, 4)))

    def __init__(
        self,
        config: _Config,
        detector: Any,
        recognizer: Any,
        classifier: Any | None,
        charset: tuple[str, ...],
        limits: PipelineLimits,
    ) -> None:
        self._conf = config
        self._det = detector
        self._det_in = detector.get_inputs()[0].name
        self._rec = recognizer
        self._rec_in = recognizer.get_inputs()[0].name
        self._cls = classifier
        self._cls_in = classifier.get_inputs()[0].name if classifier is not None else ""
        self._charset = charset
        self._limits = limits

    def run(
        self, inputs: Mapping[str, np.ndarray], run_options: Any | None = None
    ) -> dict[str, np.ndarray]:
        (data,) = bytes_items(inputs, "input", max_items=1, max_bytes=MAX_IMAGE_BYTES)
        rgb = decode_image(data, self._limits, what="the page image")
        quads = self._detect(rgb, run_options)
        if len(quads) == 0:
            return self._result([], np.zeros((0, 4), np.float32))
        height, width = rgb.shape[:2]
        quads[:, :, 0] = np.clip(quads[:, :, 0], 0.0, float(width))
        quads[:, :, 1] = np.clip(quads[:, :, 1], 0.0, float(height))
        boxes = np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)
        crops = [self._crop(rgb, q) for q in quads]
        if self._cls is not None:
            crops = self._orient(self._cls, crops, run_options)
        texts = self._recognise(crops, run_options)
        order = reading_order(quads)
        kept = [i for i in order if texts[i] is not None]
        lines = [texts[i] or "" for i in kept]
        return self._result(lines, boxes[kept].astype(np.float32).reshape(-1, 4))

    @staticmethod
    def _result(lines: list[str], boxes: np.ndarray) -> dict[str, np.ndarray]:
        return {"lines": bytes_array(lines), "boxes": boxes}

    def _detect(self, rgb: np.ndarray, run_options: Any) -> np.ndarray:
        """Text-region quads [n, 4, 2] in pixels of the decoded image."""
        from PIL import Image

        conf = self._conf
        height, width = rgb.shape[:2]
        # never enlarged; shrunk to the pixel budget (a long strip keeps its resolution)
        scale = min(
            1.0,
            math.sqrt(conf.det_max_pixels / (height * width)),
            conf.det_max_side / max(height, width),
        )
        side = conf.det_max_side // 32 * 32
        det_h = max(32, min(side, round(height * scale / 32) * 32))
        det_w = max(32, min(side, round(width * scale / 32) * 32))
        img = np.asarray(Image.fromarray(rgb).resize((det_w, det_h), Image.Resampling.BILINEAR))
        # a margin of the page's border colour: the detector misses text that touches the edge
        pad = conf.det_pad
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        framed = np.empty((det_h + 2 * pad, det_w + 2 * pad, 3), np.uint8)
        framed[:] = np.median(border, axis=0).astype(np.uint8)
        framed[pad : pad + det_h, pad : pad + det_w] = img
        x = _normalise(framed)[None]
        (prob,) = self._det.run(None, {self._det_in: x}, run_options)
        regions = db_regions(
            np.asarray(prob, dtype=np.float32)[0, 0],
            thresh=conf.det_thresh,
            box_thresh=conf.box_thresh,
            unclip_ratio=conf.unclip_ratio,
            min_side=conf.min_box_side,
        )
        n = len(regions.quads)
        if n > self._limits.max_text_lines:
            raise PayloadTooLarge(
                f"the page image holds {n} text regions; at most "
                f"{self._limits.max_text_lines} lines are read"
            )
        quads = regions.quads - pad
        quads[:, :, 0] *= width / det_w
        quads[:, :, 1] *= height / det_h
        return quads

    def _crop(self, rgb: np.ndarray, quad: np.ndarray) -> np.ndarray:
        """The line under ``quad`` straightened, at recogniser height (width bounded)."""
        from PIL import Image

        conf = self._conf
        tl, tr, br, bl = quad
        w = max(1, round(float(np.hypot(*(tr - tl)))))
        h = max(1, round(float(np.hypot(*(bl - tl)))))
        corners = (*tl, *bl, *br, *tr)
        img = Image.fromarray(rgb).transform(
            (w, h),
            Image.Transform.QUAD,
            tuple(float(c) for c in corners),
            resample=Image.Resampling.BILINEAR,
        )
        out_w = max(1, min(conf.rec_max_width, math.ceil(conf.rec_height * w / h)))
        img = img.resize((out_w, conf.rec_height), Image.Resampling.BILINEAR)
        return np.asarray(img)

    def _orient(
        self, classifier: Any, crops: list[np.ndarray], run_options: Any
    ) -> list[np.ndarray]:
        """Crops the classifier finds upside down turned 180 degrees.

        The classifier reads 192 x 48 pixels; squeezing a whole line into that (as PP-OCR does)
        makes its answer for long lines close to chance, so it reads up to ``_CLS_WINDOWS``
        windows of the line at its own aspect and their log-probabilities are summed: a line
        is turned when the combined probability of "180" is over ``cls_thresh``."""
        ch, cw = _CLS_SHAPE
        windows: list[np.ndarray] = []
        owner: list[int] = []
        for i, crop in enumerate(crops):
            small = crop if crop.shape[0] == ch else _resize_h(crop, ch)
            width = small.shape[1]
            count = min(_CLS_WINDOWS, max(1, math.ceil(width / cw)))
            starts = np.linspace(0, max(0, width - cw), count).round().astype(int)
            for s in starts:
                windows.append(small[:, s : s + cw])
                owner.append(i)
        logp = np.zeros((len(crops), 2), np.float64)
        step = self._conf.rec_batch
        for start in range(0, len(windows), step):
            part = windows[start : start + step]
            batch = np.zeros((len(part), 3, ch, cw), np.float32)
            for j, win in enumerate(part):
                batch[j, :, :, : win.shape[1]] = _normalise(win)
            (probs,) = classifier.run(None, {self._cls_in: batch}, run_options)
            probs = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
            np.add.at(logp, owner[start : start + step], np.log(probs))
        out = list(crops)
        for i in range(len(crops)):
            flipped = 1.0 / (1.0 + math.exp(min(700.0, logp[i, 0] - logp[i, 1])))
            if flipped > self._conf.cls_thresh:
                out[i] = np.ascontiguousarray(crops[i][::-1, ::-1])
        return out

    def _recognise(self, crops: list[np.ndarray], run_options: Any) -> list[str | None]:
        """Text of each crop (None: nothing confident enough), batched by width."""
        conf = self._conf
        texts: list[str | None] = [None] * len(crops)
        by_width = sorted(range(len(crops)), key=lambda i: crops[i].shape[1])
        for start in range(0, len(by_width), conf.rec_batch):
            part = by_width[start : start + conf.rec_batch]
            width = max(_REC_MIN_WIDTH, max(crops[i].shape[1] for i in part))
            batch = np.zeros((len(part), 3, conf.rec_height, width), np.float32)
            for j, i in enumerate(part):
                batch[j, :, :, : crops[i].shape[1]] = _normalise(crops[i])
            (probs,) = self._rec.run(None, {self._rec_in: batch}, run_options)
            probs = np.asarray(probs)
            for j, i in enumerate(part):
                text, score = ctc_greedy(probs[j], self._charset)
                text = text.strip()
                if text and score >= conf.text_score:
                    texts[i] = text
        return texts


def _charset(raw: bytes, classes: int) -> tuple[str, ...]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidModel("the OCR dictionary asset is not UTF-8 text") from None
    keys = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    if len(keys) + 2 != classes:
        raise InvalidModel(
            f"the OCR dictionary has {len(keys)} characters but the recogniser has {classes} "
            "classes (expected dictionary + blank + space)"
        )
    return ("", *keys, " ")


def _classes(session: Any) -> int:
    shape = session.get_outputs()[0].shape
    if len(shape) != 3 or not isinstance(shape[2], int):
        raise InvalidModel("the OCR recogniser must output [batch, steps, classes]")
    return int(shape[2])


def build(ctx: BuildContext) -> OcrPipeline:
    conf = _Config.parse(ctx.config)
    recognizer = ctx.session("recognizer")
    charset = _charset(ctx.asset("dictionary"), _classes(recognizer))
    return OcrPipeline(
        conf,
        ctx.session("detector"),
        recognizer,
        ctx.session("classifier") if conf.use_classifier else None,
        charset,
        ctx.limits,
    )
