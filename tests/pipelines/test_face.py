"""face-embed: MTCNN + dlib ResNet on scikit-image's public-domain photos (Eileen Collins in
``astronaut``, the man in ``camera``; ``coffee`` and ``chelsea`` have no face)."""

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
from blindinfer._pipelines.face import similarity
from blindinfer.errors import InvalidInput, PayloadTooLarge

NAME = "face-embed"


@pytest.fixture(scope="module")
def face(pipeline):
    return pipeline(NAME)


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, quality=92)
    return out.getvalue()


def _run(face, img: Image.Image, fmt: str = "JPEG") -> dict[str, np.ndarray]:
    return face.run({"input": np.array([_encode(img, fmt)], dtype=object)})


def _variants(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    out = {"original": img}
    for s in (0.5, 1.5):
        out[f"scale {s}"] = img.resize((int(w * s), int(h * s)), Image.Resampling.BICUBIC)
    for r in (-15, -10, 10, 15):
        out[f"rotated {r}"] = img.rotate(r, resample=Image.Resampling.BICUBIC)
    for b in (0.7, 1.3):
        pixels = np.clip(np.asarray(img, np.float32) * b, 0, 255).astype(np.uint8)
        out[f"brightness {b}"] = Image.fromarray(pixels)
    return out


@pytest.fixture(scope="module")
def embeddings(face) -> dict[str, dict[str, np.ndarray]]:
    """Each photo's variants -> the one face's embedding (exactly one face must be found)."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for name in ("astronaut", "camera"):
        found[name] = {}
        for label, img in _variants(_photo(name)).items():
            out = _run(face, img)
            assert out["embeddings"].shape == (1, 128), f"{name} {label}: {out['boxes']}"
            found[name][label] = out["embeddings"][0]
    return found


def _threshold(bundle_dir) -> float:
    import json

    manifest = json.loads((bundle_dir(NAME) / "pipeline.json").read_text())
    return float(manifest["config"]["match_distance"])


def test_contract(face) -> None:
    assert [s.name for s in face.inputs] == ["input"]
    assert face.inputs[0].datatype == "BYTES"
    assert [(s.name, s.datatype) for s in face.outputs] == [
        ("boxes", "FP32"),
        ("embeddings", "FP32"),
    ]
    out = _run(face, _photo("astronaut"), "PNG")
    assert out["boxes"].dtype == np.float32 and out["embeddings"].dtype == np.float32
    assert np.allclose(np.linalg.norm(out["embeddings"], axis=1), 1.0, atol=1e-5)


def test_same_person_matches(embeddings, bundle_dir) -> None:
    threshold = _threshold(bundle_dir)
    for name, by_label in embeddings.items():
        ref = by_label["original"]
        for label, emb in by_label.items():
            d = float(np.linalg.norm(emb - ref))
            assert d < threshold, f"{name} {label}: distance {d:.3f} >= {threshold}"
    # Measured (aligned crops): same person at most 0.185.
    worst = max(
        float(np.linalg.norm(a - b))
        for v in embeddings.values()
        for a in v.values()
        for b in v.values()
    )
    assert worst < threshold


def test_different_people_do_not_match(embeddings, bundle_dir) -> None:
    threshold = _threshold(bundle_dir)
    nearest = min(
        float(np.linalg.norm(a - b))
        for a in embeddings["astronaut"].values()
        for b in embeddings["camera"].values()
    )
    # Measured: 0.446 at the nearest pair of variants.
    assert nearest > threshold, f"astronaut vs camera: {nearest:.3f} <= {threshold}"


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_no_face(face, name: str) -> None:
    out = _run(face, _photo(name))
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == np.float32
    assert out["embeddings"].shape == (0, 128) and out["embeddings"].dtype == np.float32


@pytest.mark.parametrize(
    ("name", "face_xy"),
    [("astronaut", (225, 120)), ("camera", (225, 150))],  # a point on the face, by eye
)
def test_boxes_inside_image_and_on_the_face(face, name: str, face_xy: tuple[int, int]) -> None:
    img = _photo(name)
    boxes = _run(face, img)["boxes"]
    assert boxes.shape == (1, 4)
    x0, y0, x1, y1 = boxes[0]
    assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
    assert x0 < face_xy[0] < x1 and y0 < face_xy[1] < y1
    assert 30 < x1 - x0 < 200 and 30 < y1 - y0 < 200  # a face, not the whole picture


def test_two_faces_in_one_picture(face) -> None:
    a, c = _photo("astronaut"), _photo("camera")
    both = Image.new("RGB", (a.width + c.width, max(a.height, c.height)))
    both.paste(a, (0, 0))
    both.paste(c, (a.width, 0))
    out = _run(face, both)
    assert out["embeddings"].shape == (2, 128)
    assert sorted(float(b[0]) < a.width for b in out["boxes"]) == [False, True]


def test_face_count_bound(bundle_dir) -> None:
    a, c = _photo("astronaut"), _photo("camera")
    both = Image.new("RGB", (a.width + c.width, a.height))
    both.paste(a, (0, 0))
    both.paste(c, (a.width, 0))
    one = load_dir(bundle_dir(NAME), PipelineLimits(max_faces=1))
    out = one.run({"input": np.array([_encode(both)], dtype=object)})
    assert out["boxes"].shape == (1, 4) and out["embeddings"].shape == (1, 128)


def test_same_answer_twice(face) -> None:
    data = np.array([_encode(_photo("astronaut"))], dtype=object)
    first, second = face.run({"input": data}), face.run({"input": data})
    assert np.array_equal(first["embeddings"], second["embeddings"])
    assert np.array_equal(first["boxes"], second["boxes"])


def test_similarity_transform_recovers_known_one() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity(src, src @ rot.T + shift)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], shift)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(width: int, height: int) -> bytes:
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
        (b"GIF89a not one we take", InvalidInput, "not a JPEG or PNG"),
        (b"", InvalidInput, "empty"),
        (_png_header(100_000, 100_000), PayloadTooLarge, "100000x100000"),
    ],
    ids=["not-an-image", "empty", "png-100000x100000"],
)
def test_bad_images(face, data: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as info:
        face.run({"input": np.array([data], dtype=object)})
    assert "input" in str(info.value) or "image" in str(info.value)


def test_truncated_jpeg(face) -> None:
    data = _encode(_photo("astronaut"))
    with pytest.raises(InvalidInput, match=r"truncated|damaged|cannot be read"):
        face.run({"input": np.array([data[: len(data) // 2]], dtype=object)})


def test_input_shape_and_type(face) -> None:
    data = _encode(_photo("coffee"))
    with pytest.raises(PayloadTooLarge, match="'input'"):
        face.run({"input": np.array([data, data], dtype=object)})
    with pytest.raises(InvalidInput, match="'input' must be BYTES"):
        face.run({"input": np.zeros(4, np.float32)})
    with pytest.raises(InvalidInput, match="'input' is missing"):
        face.run({})


def test_astronaut_latency(face) -> None:
    data = np.array([_encode(_photo("astronaut"))], dtype=object)
    face.run({"input": data})
    times = []
    for _ in range(20):
        t = time.perf_counter()
        face.run({"input": data})
        times.append(time.perf_counter() - t)
    p50 = float(np.percentile(times, 50))
    print(f"face-embed astronaut 512x512: p50 {p50 * 1000:.0f} ms over 20 runs")
    assert p50 < 2.0
