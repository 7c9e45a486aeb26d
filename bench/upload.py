"""Model upload throughput and peak server memory, end to end through the SDK.

Builds an ONNX model of the requested size (one big float initializer feeding an Add), starts a
real ``blindinfer serve`` process (simulation TEE, loopback), uploads the model with
``blindinfer.connect(...).upload_model(path)`` and reports MB/s and the server's peak RSS
(``VmHWM`` from /proc/PID/status, read after the upload) against the model's size.

    .venv/bin/python -m bench.upload --size-mb 435
    # before/after: the server of another checkout runs side by side
    git worktree add /tmp/wt_up <commit> && \\
        .venv/bin/python -m bench.upload --size-mb 435 --baseline /tmp/wt_up/src

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests._server import start_server

import blindinfer

MB = 1000 * 1000


def build_model(path: Path, size_mb: int) -> int:
    n = size_mb * MB // 4
    w = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path.stat().st_size


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(model: Path, work: Path, src: str | None) -> dict[str, float]:
    """One server (``src``: its package directory on PYTHONPATH, else this checkout)."""
    old = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = src
    try:
        srv = start_server(work / "data", "--max-model-size", "2GiB", timeout=120)
    finally:
        if src is not None:
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old
    try:
        pid = srv.process.pid
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as conn:
            before = _status(pid, "VmRSS")
            start = time.perf_counter()
            info = conn.upload_model(model, name="big")
            seconds = time.perf_counter() - start
            peak = _status(pid, "VmHWM")
            after = _status(pid, "VmRSS")
            conn.delete_model(info.model_id)
        return {"seconds": seconds, "before": before, "peak": peak, "after": after}
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=435, help="model size in MB (10^6 bytes)")
    ap.add_argument("--baseline", help="a checkout's src/ directory to compare with (before)")
    ap.add_argument("--runs", type=int, default=1, help="uploads, each on a fresh server")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        root = Path(tmp)
        model = root / "big.onnx"
        size = build_model(model, args.size_mb)
        servers = [("before", args.baseline)] if args.baseline else []
        servers.append(("after" if args.baseline else "this", None))
        print(f"model: {size / MB:.0f} MB")
        for label, src in servers:
            runs = [measure(model, root / f"{label}{i}", src) for i in range(args.runs)]
            best = min(runs, key=lambda r: r["seconds"])
            grown = best["peak"] - best["before"]
            median = sorted(r["seconds"] for r in runs)[len(runs) // 2]
            print(
                f"{label:>6}: {size / MB / best['seconds']:6.1f} MB/s best "
                f"({best['seconds']:.2f} s), {size / MB / median:6.1f} MB/s median of {len(runs)}  "
                f"peak RSS {best['peak'] / MB:6.0f} MB = {best['peak'] / size:.2f}x the model "
                f"(+{grown / MB:.0f} MB = {grown / size:.2f}x over idle {best['before'] / MB:.0f}"
                f" MB; bound 2x+150 MB = {(2 * size + 150 * MB) / MB:.0f} MB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
