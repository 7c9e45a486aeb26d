"""A joined client/server timeline of sequential inference calls: where the time between
``run_model`` and its return goes, on both sides of the TLS connection.

    .venv/bin/python -m bench.timeline --model resnet18 --calls 60

The server is ``blindinfer serve`` run through ``bench/_timeline_server.py`` (marks around its
parser callbacks and the run), the client is this process (marks around the SDK's send and its
first read); both take ``time.perf_counter_ns`` (CLOCK_MONOTONIC), so their marks share one
clock. Each line is the median over the calls of the first such mark in a call, in
microseconds from the call's start. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from tests._server import free_port, is_ready

import blindinfer
from bench.models import ensure_model
from bench.run import TOKEN, upload_all
from blindinfer._client import transport

ROOT = Path(__file__).resolve().parent.parent
_now = time.perf_counter_ns


def _mark_client(marks: list[tuple[str, int]]) -> None:
    send, first = transport._Conn.send, transport._Conn._first

    def marked_send(self: Any, *args: Any) -> None:
        marks.append(("client send start", _now()))
        send(self, *args)
        marks.append(("client send end", _now()))

    def marked_first(self: Any) -> memoryview:
        data = first(self)
        marks.append(("client first reply bytes", _now()))
        return data

    transport._Conn.send = marked_send  # type: ignore[method-assign]
    transport._Conn._first = marked_first  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--intra-op", type=int, default=1)
    ap.add_argument("--serve-args", default="", help="more `serve` flags, space-separated")
    args = ap.parse_args(argv)
    model = ensure_model(args.model)
    client: list[tuple[str, int]] = []
    _mark_client(client)
    with tempfile.TemporaryDirectory() as tmp:
        out, port = Path(tmp) / "marks.txt", free_port()
        cmd = [
            sys.executable, "-m", "bench._timeline_server", "--data-dir", f"{tmp}/data",
            "--port", str(port), "--owner-token", TOKEN, "--log-level", "warning",
            "--no-demo-model", "--intra-op-threads", str(args.intra_op), *args.serve_args.split(),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
        env["BLINDINFER_TIMELINE_OUT"] = str(out)
        env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"https://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while not is_ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
            upload_all(url, [model])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", blindinfer.InsecureSimulationWarning)
                conn = blindinfer.connect(url, simulation_mode=True, token=TOKEN)
            for _ in range(20):
                conn.run_model(model.name, model.inputs)
            client.clear()
            calls = []
            for _ in range(args.calls):
                start = _now()
                conn.run_model(model.name, model.inputs)
                calls.append((start, _now()))
            conn.close()
        finally:
            proc.send_signal(signal.SIGUSR1)
            proc.wait(30)
        server = [
            (line.split(" ", 1)[1], int(line.split(" ", 1)[0]))
            for line in out.read_text().splitlines()
        ]
    _report(calls, client + server)
    return 0


def _parse(line: str) -> tuple[str, int]:
    t, name = line.split(" ", 1)
    return name, int(t)


def _report(calls: list[tuple[int, int]], marks: list[tuple[str, int]]) -> None:
    offsets: dict[str, list[float]] = {}
    for start, end in calls:
        seen: set[str] = set()
        for name, t in sorted(marks, key=lambda m: m[1]):
            if start <= t <= end and name not in seen:
                seen.add(name)
                offsets.setdefault(name, []).append((t - start) / 1e3)
        offsets.setdefault("client call returned", []).append((end - start) / 1e3)
    rows = sorted(offsets.items(), key=lambda kv: statistics.median(kv[1]))
    for name, values in rows:
        print(f"{statistics.median(values):10.1f} us  {name}  (in {len(values)} of {len(calls)})")


if __name__ == "__main__":
    raise SystemExit(main())
