"""Before/after of the whole request path, client SDK included, measured interleaved.

``bench.run --baseline`` runs a second *server* beside this one but drives both with this tree's
SDK, so a client-side change shows in neither. Here each tree gets its own client process (its
own SDK, its own ``blindinfer serve``), and the parent hands the two processes and in-process
onnxruntime short slices in turn, so the machine's drift hits all three alike.

    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.ab --before /tmp/before --models resnet18,bert,mlp

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench.models import ensure_model
from bench.run import ort_session

ROOT = Path(__file__).resolve().parent.parent

# Runs in the tree under test (its own bench.run, SDK and server): reads "model count" lines,
# answers each with the latencies (ns) of that many sequential calls.
_CLIENT = """
import json, sys, tempfile, time, warnings
from pathlib import Path
from bench.models import ensure_model
from bench.run import connect, server, upload_all
models = {n: ensure_model(n) for n in sys.argv[1].split(",")}
with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), int(sys.argv[2])) as srv:
    upload_all(srv.url, list(models.values()))
    conn = connect(srv.url)
    print("ready", flush=True)
    for line in sys.stdin:
        name, count = line.split()
        m, out = models[name], []
        for _ in range(int(count)):
            start = time.perf_counter_ns()
            conn.run_model(m.name, m.inputs)
            out.append(time.perf_counter_ns() - start)
        print(json.dumps(out), flush=True)
"""


class Client:
    """One tree's client process (and, through it, that tree's server)."""

    def __init__(self, tree: Path, models: list[str], intra_op: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
        env["PYTHONPATH"] = f"{tree / 'src'}{os.pathsep}{tree}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CLIENT, ",".join(models), str(intra_op)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=tree,
            text=True,
        )
        if self._line() != "ready":
            raise RuntimeError(f"the client for {tree} did not start")

    def _line(self) -> str:
        out: IO[str] = self.proc.stdout  # type: ignore[assignment]
        return out.readline().strip()

    def run(self, model: str, count: int) -> list[int]:
        stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        stdin.write(f"{model} {count}\n")
        stdin.flush()
        return list(json.loads(self._line()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


def _p50_ms(samples: list[int]) -> float:
    return float(np.median(samples)) / 1e6


def measure(
    before: Path, models: list[str], seconds: float, rounds: int, intra_op: int
) -> dict[str, dict[str, float]]:
    clients = {"before": Client(before, models, intra_op), "after": Client(ROOT, models, intra_op)}
    out: dict[str, dict[str, float]] = {}
    try:
        for name in models:
            m = ensure_model(name)
            session = ort_session(m, intra_op)

            def in_process(count: int, m: Any = m, session: Any = session) -> list[int]:
                samples = []
                for _ in range(count):
                    start = time.perf_counter_ns()
                    session.run(None, m.inputs)
                    samples.append(time.perf_counter_ns() - start)
                return samples

            runners = {
                "onnxruntime": in_process,
                "before": lambda c, n=name: clients["before"].run(n, c),
                "after": lambda c, n=name: clients["after"].run(n, c),
            }
            # Calls per slice: what fits in seconds / rounds / 3 at the warm-up speed.
            counts = {}
            for label, fn in runners.items():
                warm = fn(5)
                per = max(_p50_ms(warm) / 1e3, 1e-6)
                counts[label] = max(3, int(seconds / rounds / per))
            samples: dict[str, list[int]] = {label: [] for label in runners}
            labels = list(runners)
            for r in range(rounds):
                for label in labels[r % 3 :] + labels[: r % 3]:
                    samples[label] += runners[label](counts[label])
            out[name] = {label: _p50_ms(s) for label, s in samples.items()}
            out[name]["n_after"] = len(samples["after"])
    finally:
        for client in clients.values():
            client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout (its root)")
    ap.add_argument("--models", default="resnet18,bert,mlp")
    ap.add_argument("--seconds", type=float, default=6.0, help="per variant and model")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--intra-op", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    results = measure(args.before, models, args.seconds, args.rounds, args.intra_op)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'model':10} {'in-process':>11} {'before':>9} {'after':>9}   before / after (added ms)")
    for name, r in results.items():
        base = r["onnxruntime"]
        print(
            f"{name:10} {base:9.3f}ms {r['before']:7.3f}ms {r['after']:7.3f}ms   "
            f"{r['before'] / base:.3f}x / {r['after'] / base:.3f}x "
            f"({r['before'] - base:.3f} / {r['after'] - base:.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
