"""The ``ocr`` pipeline with its real PP-OCRv4 weights, on documents rendered here: accuracy
(character error rate), reading order, box geometry, bad inputs and bounds; plus the numpy
post-processing on synthetic maps."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from blindinfer._pipelines.base import PipelineLimits
from blindinfer._pipelines.bundle import load_dir
from blindinfer._pipelines.ocr_postprocess import ctc_greedy, db_regions, reading_order
from blindinfer.errors import InvalidInput, PayloadTooLarge

from . import _documents as docs

# Measured (PP-OCRv4 from rapidocr-onnxruntime 1.4.4, this code): invoice 0.000, degraded scan
# 0.000 (tight skewed 0.000, upside-down invoice 0.005). The bounds leave room for other
# onnxruntime/Pillow versions.
INVOICE_MAX_CER = 0.02
SCAN_MAX_CER = 0.03


def _run(pipe, data: bytes) -> tuple[list[str], np.ndarray]:
    out = pipe.run({"input": np.array([data], dtype=object)})
    assert set(out) == {"lines", "boxes"}
    lines = out["lines"]
    boxes = out["boxes"]
    assert lines.dtype == object and lines.ndim == 1
    assert boxes.dtype == np.float32 and boxes.shape == (len(lines), 4)
    return [s.decode("utf-8") for s in lines], boxes


@pytest.fixture(scope="module")
def ocr(pipeline):
    return pipeline("ocr")


def test_contract(ocr) -> None:
    assert [(s.name, s.datatype, s.shape) for s in ocr.inputs] == [("input", "BYTES", (1,))]
    assert [(s.name, s.datatype, s.shape) for s in ocr.outputs] == [
        ("lines", "BYTES", (-1,)),
        ("boxes", "FP32", (-1, 4)),
    ]


def test_invoice_character_error_rate(ocr) -> None:
    data, want = docs.invoice()
    got, _ = _run(ocr, data)
    rate = docs.cer(got, want)
    print(f"invoice CER {rate:.4f} ({len(got)} lines)")
    assert rate <= INVOICE_MAX_CER, (rate, got)


def test_scanned_page_character_error_rate(ocr) -> None:
    data, want = docs.scanned_page()
    got, _ = _run(ocr, data)
    rate = docs.cer(got, want)
    print(f"scanned page CER {rate:.4f} ({len(got)} lines)")
    assert rate <= SCAN_MAX_CER, (rate, got)


def test_reading_order(ocr) -> None:
    """Rows top to bottom; on an invoice row the price (right) follows its item (left)."""
    data, want = docs.invoice()
    got, boxes = _run(ocr, data)
    assert len(got) == len(want)
    # each output line is closest to the reference line at the same position
    for i, line in enumerate(got):
        nearest = min(range(len(want)), key=lambda j: docs.levenshtein(line, want[j]))
        assert nearest == i, (i, line, want[nearest])
    centres = (boxes[:, 1] + boxes[:, 3]) / 2
    for a, b in zip(range(len(got) - 1), range(1, len(got)), strict=True):
        same_row = abs(centres[a] - centres[b]) < (boxes[a, 3] - boxes[a, 1]) / 2
        assert centres[b] > centres[a] or (same_row and boxes[b, 0] > boxes[a, 2])


def test_skewed_tight_page_keeps_rows(ocr) -> None:
    """Skewed lines 34 px apart: their axis-aligned boxes overlap, the order must not swap."""
    data, want = docs.scanned_page(seed=3, leading=34)
    got, _ = _run(ocr, data)
    assert len(got) == len(want)
    rate = docs.cer(got, want)
    print(f"tight skewed page CER {rate:.4f}")
    assert rate <= SCAN_MAX_CER


def test_boxes_within_image_and_on_the_text(ocr) -> None:
    data, want = docs.invoice()
    width, height = Image.open(io.BytesIO(data)).size
    got, boxes = _run(ocr, data)
    assert len(got) == len(want)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # the title was drawn at (90, 70) in a 44 px font: its box is there, not a page-wide one
    title = got.index(docs.INVOICE_TITLE)
    x0, y0, x1, y1 = boxes[title]
    assert 60 <= x0 <= 95 and 50 <= y0 <= 80 and 500 <= x1 <= 700 and 105 <= y1 <= 140


def test_upside_down_page(ocr) -> None:
    """The direction classifier turns each line: the text reads right (rows come bottom-up,
    since the page's top is now at the bottom)."""
    data, want = docs.invoice()
    flipped = Image.open(io.BytesIO(data)).rotate(180)
    buf = io.BytesIO()
    flipped.save(buf, "PNG")
    got, _ = _run(ocr, buf.getvalue())
    rate = docs.cer(sorted(got), sorted(want))
    print(f"upside-down invoice CER {rate:.4f}")
    assert rate <= 2 * INVOICE_MAX_CER, got


def test_blank_page_reads_nothing(ocr) -> None:
    out = ocr.run({"input": np.array([docs.blank_page()], dtype=object)})
    assert out["lines"].shape == (0,) and out["lines"].dtype == object
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == np.float32


def test_same_answer_twice(ocr) -> None:
    data, _ = docs.scanned_page()
    a = ocr.run({"input": np.array([data], dtype=object)})
    b = ocr.run({"input": np.array([data], dtype=object)})
    assert list(a["lines"]) == list(b["lines"])
    assert np.array_equal(a["boxes"], b["boxes"])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` (valid CRCs) with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"%PDF-1.7 this is not an image", InvalidInput, "not a JPEG or PNG"),
        (b"", InvalidInput, "empty"),
        (_png_header(100_000, 100_000), PayloadTooLarge, "pixels"),
    ],
    ids=["not-an-image", "empty", "png-100000x100000"],
)
def test_bad_images(ocr, data: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as info:
        ocr.run({"input": np.array([data], dtype=object)})
    assert "input" in str(info.value) or "image" in str(info.value)


def test_truncated_jpeg(ocr) -> None:
    data, _ = docs.scanned_page()
    with pytest.raises(InvalidInput, match=r"truncated|damaged|cannot be read"):
        ocr.run({"input": np.array([data[: len(data) // 2]], dtype=object)})


def test_input_shape_and_type(ocr) -> None:
    data, _ = docs.invoice()
    with pytest.raises(PayloadTooLarge, match="'input'"):
        ocr.run({"input": np.array([data, data], dtype=object)})
    with pytest.raises(InvalidInput, match="'input' must be BYTES"):
        ocr.run({"input": np.zeros(4, np.float32)})
    with pytest.raises(InvalidInput, match="'input' is empty"):
        ocr.run({"input": np.array([], dtype=object)})


def test_line_count_bound(bundle_dir) -> None:
    small = load_dir(bundle_dir("ocr"), PipelineLimits(max_text_lines=5))
    data, _ = docs.invoice()
    with pytest.raises(PayloadTooLarge, match="at most 5 lines"):
        small.run({"input": np.array([data], dtype=object)})


@pytest.mark.slow
def test_invoice_latency(ocr) -> None:
    data, _ = docs.invoice()
    feed = {"input": np.array([data], dtype=object)}
    ocr.run(feed)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        ocr.run(feed)
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99])
    print(f"invoice latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (20 runs)")
    assert p50 < 10.0


# --- post-processing on synthetic data (no weights) ---


def _rect_map(shape, centre, size, angle_deg) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.deg2rad(angle_deg)
    u = (xx - centre[0]) * np.cos(a) + (yy - centre[1]) * np.sin(a)
    v = -(xx - centre[0]) * np.sin(a) + (yy - centre[1]) * np.cos(a)
    inside = (np.abs(u) <= size[0] / 2) & (np.abs(v) <= size[1] / 2)
    return inside.astype(np.float32) * 0.9


def test_db_regions_rotated_rectangle() -> None:
    prob = _rect_map((200, 400), (200.0, 100.0), (300.0, 12.0), 5.0)
    found = db_regions(prob, thresh=0.3, box_thresh=0.5, unclip_ratio=0.0, min_side=3)
    assert found.quads.shape == (1, 4, 2)
    tl, tr, _, bl = found.quads[0]
    angle = np.degrees(np.arctan2(tr[1] - tl[1], tr[0] - tl[0]))
    assert abs(angle - 5.0) < 0.5
    assert abs(np.hypot(*(tr - tl)) - 300) < 4 and abs(np.hypot(*(bl - tl)) - 12) < 3
    assert abs(found.quads[0].mean(axis=0) - [200.5, 100.5]).max() < 1.5
    grown = db_regions(prob, thresh=0.3, box_thresh=0.5, unclip_ratio=2.0, min_side=3)
    w0, h0 = np.hypot(*(tr - tl)), np.hypot(*(bl - tl))
    gtl, gtr, _, gbl = grown.quads[0]
    # unclip: every side moves out by area * ratio / perimeter
    d = w0 * h0 * 2.0 / (2 * (w0 + h0))
    assert abs(np.hypot(*(gtr - gtl)) - (w0 + 2 * d)) < 1e-6
    assert abs(np.hypot(*(gbl - gtl)) - (h0 + 2 * d)) < 1e-6


def test_db_regions_filters_weak_and_thin() -> None:
    prob = _rect_map((100, 200), (100.0, 30.0), (120.0, 10.0), 0.0) * (0.4 / 0.9)
    prob += _rect_map((100, 200), (100.0, 80.0), (120.0, 1.0), 0.0)  # one pixel thin
    found = db_regions(prob, thresh=0.3, box_thresh=0.5, unclip_ratio=1.5, min_side=3)
    assert found.quads.shape == (0, 4, 2)
    assert db_regions(np.zeros((64, 64), np.float32), thresh=0.3, box_thresh=0.5,
                      unclip_ratio=1.5, min_side=3).quads.shape == (0, 4, 2)  # fmt: skip


def test_reading_order_rows() -> None:
    def quad(x0, y0, x1, y1, dy=0.0):
        return [[x0, y0], [x1, y0 + dy], [x1, y1 + dy], [x0, y1]]

    quads = np.array(
        [
            quad(600, 12, 900, 40, dy=6),  # right half of row 1, the row slopes down
            quad(10, 60, 500, 90, dy=8),  # row 2
            quad(10, 10, 500, 38, dy=8),  # left half of row 1
            quad(10, 110, 300, 140),  # row 3
        ],
        dtype=np.float64,
    )
    assert reading_order(quads) == [2, 0, 1, 3]


def test_ctc_greedy() -> None:
    charset = ("", "a", "b", " ")
    steps = [1, 1, 0, 1, 2, 2, 0, 3, 2]  # a a _ a b b _ ' ' b -> "aab b"
    probs = np.full((len(steps), 4), 0.02, np.float32)
    probs[np.arange(len(steps)), steps] = 0.94
    text, score = ctc_greedy(probs, charset)
    assert text == "aab b" and abs(score - 0.94) < 1e-6
    assert ctc_greedy(np.eye(4, dtype=np.float32)[[0, 0]], charset) == ("", 0.0)
