"""Sentence embeddings (kind ``text-embedding``): a BERT-style encoder ONNX graph, its
``tokenizers`` tokenizer, then mean pooling over the attention mask and L2 normalisation.

Served contract::

    input  "input"      BYTES [k]       UTF-8 texts (k <= max_text_items)
    output "embedding"  FP32  [k, dim]  one L2-normalised vector per text, in input order

Bounds: at most ``max_text_items`` texts of at most ``max_text_bytes`` bytes each (checked
before tokenising); each text is truncated to ``max_tokens`` tokens (the model's own window), and
the encoder sees at most ``batch`` texts at a time, so one call's work and memory are bounded by
batch x max_tokens.

Manifest ``config`` (all optional): ``max_tokens`` (8-512, default 256), ``batch`` (1-256,
default 32), ``pooling`` ("mean" or "cls"), ``normalize`` (bool). Graph ``encoder`` takes
``input_ids``, ``attention_mask`` and (when it has it) ``token_type_ids``, int64 [batch, seq],
and returns ``last_hidden_state`` [batch, seq, dim] first. Asset ``tokenizer``: a
``tokenizer.json`` of the ``tokenizers`` library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from blindinfer._pipelines.base import BuildContext, PipelineLimits, bytes_items
from blindinfer._wire.models import TensorSpec
from blindinfer.errors import InvalidInput, InvalidModel

KIND: Final = "text-embedding"
_POOLINGS: Final = ("mean", "cls")


@dataclass(frozen=True)
class _Config:
    max_tokens: int = 256
    batch: int = 32
    pooling: str = "mean"
    normalize: bool = True

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> _Config:
        conf = cls(**{k: doc.get(k, v) for k, v in cls().__dict__.items()})
        for name, lo, hi in (("max_tokens", 8, 512), ("batch", 1, 256)):
            value = getattr(conf, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InvalidModel(f"pipeline.json: config.{name} must be an integer {lo}-{hi}")
        if conf.pooling not in _POOLINGS:
            raise InvalidModel(f"pipeline.json: config.pooling must be one of {_POOLINGS}")
        if not isinstance(conf.normalize, bool):
            raise InvalidModel("pipeline.json: config.normalize must be true or false")
        return conf


def _tokenizer(raw: bytes, max_tokens: int) -> Any:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # the library raises its own Exception type
        raise InvalidModel(
            f"pipeline.json: asset 'tokenizer' is not a tokenizer.json: {exc}"
        ) from None
    # Pad each batch to its own longest text (the file may ask for a fixed length).
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(pad_id=tok.padding["pad_id"] if tok.padding else 0)
    return tok


class TextEmbeddingPipeline:
    inputs = (TensorSpec("input", "BYTES", (-1,)),)

    def __init__(self, ctx: BuildContext) -> None:
        self._conf = _Config.parse(ctx.config)
        self._limits: PipelineLimits = ctx.limits
        self._tok = _tokenizer(ctx.asset("tokenizer"), self._conf.max_tokens)
        self._enc = ctx.session("encoder")
        names = [i.name for i in self._enc.get_inputs()]
        if not {"input_ids", "attention_mask"} <= set(names):
            raise InvalidModel("graph 'encoder' must take input_ids and attention_mask")
        self._with_types = "token_type_ids" in names
        self._out = self._enc.get_outputs()[0].name
        dim = self._enc.get_outputs()[0].shape[-1]
        if not isinstance(dim, int) or dim < 1:
            raise InvalidModel("graph 'encoder': the hidden size must be static")
        self.outputs = (TensorSpec("embedding", "FP32", (-1, dim)),)

    def texts(self, inputs: Mapping[str, np.ndarray]) -> list[str]:
        items = bytes_items(
            inputs,
            "input",
            max_items=self._limits.max_text_items,
            max_bytes=self._limits.max_text_bytes,
        )
        texts: list[str] = []
        for i, raw in enumerate(items):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input 'input': element {i} is not UTF-8 text") from None
            if not text.strip():
                raise InvalidInput(f"input 'input': element {i} has no text (only whitespace)")
            texts.append(text)
        return texts

    def run(
        self, inputs: Mapping[str, np.ndarray], run_options: Any | None = None
    ) -> dict[str, np.ndarray]:
        texts = self.texts(inputs)
        parts = [
            self._embed(texts[i : i + self._conf.batch], run_options)
            for i in range(0, len(texts), self._conf.batch)  # len(texts) <= max_text_items
        ]
        return {"embedding": np.concatenate(parts).astype(np.float32)}

    def _embed(self, texts: list[str], run_options: Any) -> np.ndarray:
        encodings = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], np.int64)
        mask = np.array([e.attention_mask for e in encodings], np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._with_types:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], np.int64)
        hidden = self._enc.run([self._out], feeds, run_options)[0].astype(np.float32)
        if self._conf.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        if self._conf.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        out: np.ndarray = pooled.astype(np.float32)
        return out


def build(ctx: BuildContext) -> TextEmbeddingPipeline:
    return TextEmbeddingPipeline(ctx)
