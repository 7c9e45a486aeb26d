"""The end-to-end ratio to in-process onnxruntime over several fresh processes.

One ``bench.run --latency-only`` compares one server process with one benchmark process, and
on the test VM onnxruntime itself runs ResNet-18 up to ~5% faster or slower in one process
than in another (same code, same options: bench/README.md, "Fourth pass"). This runs
``bench.run --latency-only`` ``--runs`` times, each with a fresh server and a fresh benchmark
process, and prints each model's ratio and added milliseconds per run, with their median.

    .venv/bin/python -m bench.spread --models resnet18,bert --runs 5 --seconds 5

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def one_run(models: str, seconds: float, intra_op: int, out: Path) -> dict[str, Any]:
    """The ratios of one ``bench.run --latency-only`` in its own process."""
    cmd = [
        sys.executable, "-m", "bench.run", "--latency-only", "--models", models,
        "--seconds", str(seconds), "--intra-op", str(intra_op), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace"))
        raise SystemExit(f"bench.run failed (exit {done.returncode})")
    ratios: dict[str, Any] = json.loads(out.read_text())["ratios"]
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.spread", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet18,bert")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="budget per model and run")
    ap.add_argument("--intra-op", type=int, default=1)
    args = ap.parse_args(argv)
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            ratios = one_run(args.models, args.seconds, args.intra_op, Path(tmp) / f"{i}.json")
            for key, row in ratios.items():
                pair = (row["server_over_inproc_p50"], row["added_ms_p50"])
                rows.setdefault(key, []).append(pair)
                print(f"run {i + 1}: {key:24s} {pair[0]:.3f}x  +{pair[1]:.3f} ms", flush=True)
    print()
    for key, pairs in rows.items():
        ratio = statistics.median(p[0] for p in pairs)
        added = statistics.median(p[1] for p in pairs)
        low, high = min(p[0] for p in pairs), max(p[0] for p in pairs)
        print(
            f"{key:24s} median {ratio:.3f}x (+{added:.3f} ms) over {len(pairs)} runs; "
            f"range {low:.3f}x-{high:.3f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
