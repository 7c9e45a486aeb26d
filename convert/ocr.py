"""OCR (served as ``ocr``): PaddleOCR PP-OCRv4 text detector and recogniser plus the
PP-OCR mobile v2.0 text-direction (0/180 degrees) classifier, as the ONNX files shipped inside
the ``rapidocr-onnxruntime`` wheel.

The three graphs are copied byte for byte (they are already self-contained ONNX); the
recogniser's character dictionary, which the wheel keeps in the recogniser's ONNX metadata
(``character``, one key per line), is written out as the ``dictionary`` asset so the pipeline
does not depend on metadata. Nothing from rapidocr's Python code is used.
"""

from __future__ import annotations

import json
from pathlib import Path

from convert._fetch import Pin, fetch, member

NAME = "ocr"

PINS: tuple[Pin, ...] = (
    # Licence: Apache-2.0 (RapidOCR wheel; the PP-OCR models are PaddleOCR's, Apache-2.0).
    Pin(
        registry="pypi",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        filename="rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        license="Apache-2.0",
    ),
)

_MODELS = "rapidocr_onnxruntime/models/"
GRAPHS = {
    "detector": ("ch_PP-OCRv4_det_infer.onnx", "det.onnx"),
    "recognizer": ("ch_PP-OCRv4_rec_infer.onnx", "rec.onnx"),
    "classifier": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "cls.onnx"),
}
DICTIONARY = "ppocr_keys.txt"

# What the pipeline is told (src/blindinfer/_pipelines/ocr.py documents each key).
CONFIG = {
    "det_max_pixels": 1280 * 1280,  # detector input: the page shrunk to about this many pixels
    "det_max_side": 4096,  # ... and this many on a side (sides are multiples of 32)
    "det_pad": 32,  # detector input framed by this margin of the page's border colour
    "det_thresh": 0.3,  # DB: probability-map binarisation threshold
    "box_thresh": 0.55,  # DB: mean probability a text region needs
    "unclip_ratio": 2.2,  # DB: grown by area * ratio / perimeter (1.6 cut lines too tight)
    "min_box_side": 3,  # DB: regions thinner than this (detector pixels) are dropped
    "rec_height": 48,  # recogniser input height (PP-OCRv4: 48)
    "rec_max_width": 3200,  # recogniser input width bound (a longer line is squeezed)
    "rec_batch": 8,
    "cls_thresh": 0.9,  # a line is turned 180 degrees when the classifier is this sure
    "use_classifier": True,
    "text_score": 0.5,  # lines whose mean character probability is lower are dropped
}


def _dictionary(rec_onnx: bytes) -> bytes:
    import onnx

    model = onnx.load_from_string(rec_onnx)
    meta = {p.key: p.value for p in model.metadata_props}
    keys = meta["character"].split("\n")
    classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    # CTC classes: blank, the dictionary, then the space the dictionary omits.
    if classes != len(keys) + 2:
        raise RuntimeError(f"recogniser has {classes} classes for {len(keys)} dictionary keys")
    return ("\n".join(keys) + "\n").encode("utf-8")


def build(out: Path) -> None:
    wheel = fetch(PINS[0])
    graphs: dict[str, str] = {}
    for role, (src, dest) in GRAPHS.items():
        data = member(wheel, _MODELS + src)
        (out / dest).write_bytes(data)
        graphs[role] = dest
        if role == "recognizer":
            (out / DICTIONARY).write_bytes(_dictionary(data))
    manifest = {
        "blindinfer_pipeline": 1,
        "kind": "ocr",
        "graphs": graphs,
        "assets": {"dictionary": DICTIONARY},
        "config": CONFIG,
    }
    (out / "pipeline.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
