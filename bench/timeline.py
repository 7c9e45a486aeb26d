"""A joined client/server timeline of sequential inference calls: where the time between
``run_model`` and its return goes, on both sides of the TLS connection.

    .venv/bin/python -m bench.timeline --model resnet18 --calls 60

The server is ``blindinfer serve`` run through ``bench/_timeline_server.py`` (marks around its
parser callbacks and the run), the client is this process (marks around the SDK's send and its
first read); both take ``time.perf_counter_ns`` (CLOCK_MONOTONIC), so their marks share one
clock. Each line is the median over the calls of the first such mark in a call, in
microseconds from the call's start; then the median call against in-process onnxruntime
(blocks of runs in this process between blocks of calls) and against the server's own run.
Not a test: nothing here asserts a time.
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
from bench.run import connect, ort_session, server, upload_all
from blindinfer._client import transport

ROOT = Path(__file__).resolve().parent.parent
# Calls and in-process runs alternate in blocks of this many (one by one, each in-process run
# would leave the client's caches colder for the next call than a loop of calls does).
_BLOCK = 10
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
            session = ort_session(model, args.intra_op)
            client.clear()
            calls = []
            engine: list[int] = []  # in-process runs, in blocks between blocks of calls
            for i in range(args.calls):
                start = _now()
                conn.run_model(model.name, model.inputs)
                calls.append((start, _now()))
                if i % _BLOCK == _BLOCK - 1:
                    for _ in range(_BLOCK):
                        started = _now()
                        session.run(None, model.inputs)
                        engine.append(_now() - started)
            conn.close()
            srv.process.send_signal(signal.SIGUSR1)  # the server writes its marks and exits
            srv.process.wait(30)
        server_marks = [_parse(line) for line in out.read_text().splitlines()]
    _report(calls, client + server_marks)
    _summary(calls, server_marks, engine)
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


def _summary(calls: list[tuple[int, int]], marks: list[tuple[str, int]], engine: list[int]) -> None:
    """The call against in-process onnxruntime (this process, blocks of runs between blocks of
    calls) and against the server's own run: the server's engine may be faster or slower than
    this process's by itself (another process, other memory: +-0.4 ms on a ResNet-18 run
    here), which the ratio to in-process counts as overhead."""
    measured = [m for m in marks if m[1] >= calls[0][0]]
    runs = _spans(measured, "server run start", "server run end")
    call = statistics.median(end - start for start, end in calls) / 1e3
    local = statistics.median(engine) / 1e3
    served = statistics.median(runs) / 1e3 if runs else float("nan")
    print(
        f"\n  call {call:.1f} us; in-process run {local:.1f} us (call / in-process "
        f"{call / local:.3f}x, +{call - local:.1f} us); the server's run {served:.1f} us "
        f"(call - server's run: {call - served:.1f} us)"
    )


def _spans(marks: list[tuple[str, int]], first: str, last: str) -> list[int]:
    """Durations from each ``first`` mark to the next ``last`` mark."""
    spans, opened = [], None
    for name, t in sorted(marks, key=lambda m: m[1]):
        if name == first:
            opened = t
        elif name == last and opened is not None:
            spans.append(t - opened)
            opened = None
    return spans


if __name__ == "__main__":
    raise SystemExit(main())
