"""Benchmark the example pipelines: in process vs through the attested server, side by side.

    .venv/bin/python -m bench.pipelines [--names ocr,minilm-embed] [--seconds 6] [--rounds 6]
                                        [--out bench/results/pipelines.json]

Each pipeline runs on the same input in this process (the bundle loaded exactly as the server
loads it) and through a real ``blindinfer serve`` process on loopback (attested TLS, the SDK,
the OIP binary extension), interleaved in rounds; the ratio is server p50 / in-process p50.
For the plain ONNX networks of two pipelines (the MiniLM encoder, the face-recognition ResNet)
tract, BlindAI's engine, is timed too where it loads. BlindAI's own published overheads over
native onnxruntime are printed beside ours. Each pipeline's accuracy on the test inputs
(clear-rights data made at run time, as in tests/pipelines/) is printed too. Needs
``make examples`` first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from convert._driver import CONVERTERS, OUT

from bench.run import connect, interleaved, server, tract_status
from blindinfer._pipelines.bundle import load_dir, read_dir

# BlindAI's published end-to-end overheads over native onnxruntime (its benchmarks page).
BLINDAI = {"BERT": 1.38, "wav2vec2": 4.16, "facenet": 2.38}
PEER = {"minilm-embed": "BERT", "whisper-tiny-en": "wav2vec2", "face-embed": "facenet"}


def request_for(name: str) -> dict[str, Any]:
    from tests.pipelines.test_served import _request

    return _request(name)


def _feeds(request: dict[str, Any]) -> dict[str, np.ndarray]:
    value = request["input"]
    items = value if isinstance(value, list) else [value]
    return {"input": np.array([v.encode() if isinstance(v, str) else v for v in items], object)}


def tract_graph(name: str, folder: Path) -> dict[str, Any]:
    """tract on the pipeline's main ONNX network with an input of the shape the pipeline feeds
    it (random data: only the timing matters), against onnxruntime on the same graph."""
    tract, info = tract_status()
    if tract is None:
        return info
    role = {"minilm-embed": "encoder", "face-embed": "embed", "whisper-tiny-en": "encoder"}.get(
        name
    )
    bundle = read_dir(folder)
    graphs = bundle.manifest.get("graphs", {})
    if role not in graphs:
        return {"available": False, "reason": f"no {role!r} graph in the bundle"}
    path = folder / graphs[role]
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {
            i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], _np(i.type))
            for i in sess.get_inputs()
        }
        state = tract.onnx().load(str(path)).into_model().into_runnable().spawn_state()
        args = list(feeds.values())
        stats = interleaved(
            {"onnxruntime": lambda: sess.run(None, feeds), "tract": lambda: state.run(args)},
            4,
            4,
            0.5,
        )
    except Exception as exc:  # tract refuses some operators: reported, not fatal
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return {"available": True, **stats}


def _np(onnx_type: str) -> Any:
    return {"tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(onnx_type, np.float32)


def _items(texts: list[str]) -> dict[str, np.ndarray]:
    return {"input": np.array([t.encode() for t in texts], object)}


def _acc_text(p: Any) -> dict[str, Any]:
    from tests.pipelines.test_text import PARAPHRASES

    texts = [t for pair in PARAPHRASES for t in pair]
    e = p.run(_items(texts))["embedding"]
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    first = [int(np.argmax(sim[i])) == (i ^ 1) for i in range(len(texts))]
    return {"metric": "paraphrase ranked nearest", "value": float(np.mean(first)),
            "n": len(texts)}  # fmt: skip


def _acc_image(p: Any) -> dict[str, Any]:
    from tests.pipelines import _inputs
    from tests.pipelines.test_image import CATS

    truth = {"chelsea": CATS, "coffee": {"espresso", "cup", "coffee mug"}, "camera": {"tripod"}}
    top1 = 0
    for photo, labels in truth.items():
        out = p.run({"input": np.array([_inputs.photo(photo)], object)})["labels"]
        top1 += out[0].decode() in labels
    return {"metric": "top-1 on labelled skimage photos", "value": top1 / len(truth),
            "n": len(truth)}  # fmt: skip


def _acc_face(p: Any) -> dict[str, Any]:
    from tests.pipelines import _inputs

    emb = {}
    for name in ("astronaut", "camera"):
        for fmt in ("JPEG", "PNG"):
            out = p.run({"input": np.array([_inputs.photo(name, fmt)], object)})["embeddings"]
            emb[(name, fmt)] = out[0]
    same = max(float(np.linalg.norm(emb[(n, "JPEG")] - emb[(n, "PNG")])) for n in
               ("astronaut", "camera"))  # fmt: skip
    diff = float(np.linalg.norm(emb[("astronaut", "JPEG")] - emb[("camera", "JPEG")]))
    return {"metric": "distance same (max) / different", "value": f"{same:.3f} / {diff:.3f}",
            "threshold": 0.4}  # fmt: skip


def _acc_ocr(p: Any) -> dict[str, Any]:
    from tests.pipelines import _documents

    page, want = _documents.invoice()
    lines = [b.decode() for b in p.run({"input": np.array([page], object)})["lines"]]
    return {"metric": "CER, rendered invoice", "value": _documents.cer(lines, want)}


def _acc_speech(p: Any) -> dict[str, Any]:
    from tests.pipelines import _inputs
    from tests.pipelines._documents import levenshtein
    from tests.pipelines.test_served import SENTENCE

    def words(t: str) -> list[str]:
        return "".join(c for c in t.lower() if c.isalnum() or c.isspace()).split()

    got = p.run({"input": np.array([_inputs.speech(SENTENCE)], object)})["text"][0].decode()
    ref, hyp = words(SENTENCE), words(got)
    # Word-level edit distance: levenshtein over word tokens mapped to characters.
    vocab = {w: chr(0x4E00 + i) for i, w in enumerate(dict.fromkeys(ref + hyp))}
    errors = levenshtein("".join(vocab[w] for w in ref), "".join(vocab[w] for w in hyp))
    return {"metric": "WER, espeak-ng sentence", "value": errors / len(ref)}


ACCURACY = {
    "minilm-embed": _acc_text,
    "mobilenet-imagenet": _acc_image,
    "face-embed": _acc_face,
    "ocr": _acc_ocr,
    "whisper-tiny-en": _acc_speech,
}


def run(names: list[str], seconds: float, rounds: int, folder: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), 1) as srv:
        conn = connect(srv.url)
        for name in names:
            print(f"pipelines: {name} ...", file=sys.stderr, flush=True)
            conn.upload_model(folder / name, name)
            local = load_dir(folder / name)
            request = request_for(name)
            feeds = _feeds(request)
            stats = interleaved(
                {
                    "in_process": lambda local=local, feeds=feeds: local.run(feeds),
                    "server": lambda name=name, request=request: conn.run_model(name, request),
                },
                seconds,
                rounds,
                warmup_s=1.0,
            )
            stats["ratio_p50"] = stats["server"]["p50_ms"] / stats["in_process"]["p50_ms"]
            stats["ratio_p99"] = stats["server"]["p99_ms"] / stats["in_process"]["p99_ms"]
            if name in ("minilm-embed", "face-embed", "whisper-tiny-en"):
                stats["tract"] = tract_graph(name, folder / name)
            if name in ACCURACY:
                stats["accuracy"] = ACCURACY[name](local)
            results[name] = stats
        conn.close()
    return results


def print_report(results: dict[str, Any]) -> None:
    print(f"{'pipeline':20} {'in-process p50/p99 ms':>22} {'server p50/p99 ms':>20} "
          f"{'ratio p50':>9}  BlindAI (its peer)")  # fmt: skip
    for name, r in results.items():
        peer = PEER.get(name)
        blindai = f"{BLINDAI[peer]:.2f}x ({peer})" if peer else "-"
        ip, sv = r["in_process"], r["server"]
        print(
            f"{name:20} {ip['p50_ms']:10.2f} / {ip['p99_ms']:8.2f} {sv['p50_ms']:9.2f} / "
            f"{sv['p99_ms']:8.2f} {r['ratio_p50']:8.3f}x  {blindai}"
        )
        tract = r.get("tract")
        if tract and tract.get("available"):
            print(
                f"{'':20} network alone: onnxruntime {tract['onnxruntime']['p50_ms']:.2f} ms, "
                f"tract {tract['tract']['p50_ms']:.2f} ms"
            )
        elif tract:
            print(f"{'':20} tract: {tract.get('reason')}")
        acc = r.get("accuracy")
        if acc:
            value = acc["value"]
            shown = f"{value:.3f}" if isinstance(value, float) else value
            print(f"{'':20} accuracy: {acc['metric']}: {shown}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipelines", description=__doc__)
    ap.add_argument("--names", default=",".join(CONVERTERS))
    ap.add_argument("--seconds", type=float, default=6.0, help="per variant, all rounds")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--examples-dir", type=Path, default=OUT)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    names = [n for n in args.names.split(",") if n]
    results = run(names, args.seconds, args.rounds, args.examples_dir)
    print_report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
