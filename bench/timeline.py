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
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.models import ensure_model
from bench.run import connect, server, upload_all
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
        out = Path(tmp) / "marks.txt"
        env = {
            "BLINDINFER_TIMELINE_OUT": str(out),
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        }
        with server(
            Path(tmp),
            args.intra_op,
            args=args.serve_args.split(),
            module="bench._timeline_server",
            env=env,
        ) as srv:
            upload_all(srv.url, [model])
            conn = connect(srv.url)
            for _ in range(20):
                conn.run_model(model.name, model.inputs)
            client.clear()
            calls = []
            for _ in range(args.calls):
                start = _now()
                conn.run_model(model.name, model.inputs)
                calls.append((start, _now()))
            conn.close()
            srv.process.send_signal(signal.SIGUSR1)  # the server writes its marks and exits
            srv.process.wait(30)
        server_marks = [_parse(line) for line in out.read_text().splitlines()]
    _report(calls, client + server_marks)
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
