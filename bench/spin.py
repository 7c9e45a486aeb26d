"""What polling instead of sleeping buys: server ``--spin-us`` and SDK ``spin_us``, each on and
off, all four pairs measured in short interleaved rounds, each pair with its own server of
this tree (a server polls only for the only connection on its port).

    .venv/bin/python -m bench.spin --models mlp,resnet18 --calls 100 --rounds 12

Each round runs ``calls`` sequential calls per model and pair; the table shows the median of
the rounds' medians (the machine drifts by more than the effect between rounds, so a pair is
only ever compared with the others of its own round). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import blindinfer
from bench.models import ensure_model
from bench.run import connect, server, upload_all

PAIRS = (("off", "off"), ("on", "off"), ("off", "on"), ("on", "on"))  # (server, client)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mlp,resnet18")
    ap.add_argument("--calls", type=int, default=100, help="sequential calls per round and pair")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--spin-us", type=int, default=200, help="the 'on' setting, both sides")
    ap.add_argument("--intra-op", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    models = [ensure_model(n) for n in args.models.split(",")]
    rounds: dict[str, dict[str, list[float]]] = {m.name: {} for m in models}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        # One server per pair: a server polls only for the only connection on its port.
        conns = {}
        for pair in PAIRS:
            spin = str(args.spin_us if pair[0] == "on" else 0)
            srv = stack.enter_context(server(Path(tmp), args.intra_op, args=["--spin-us", spin]))
            upload_all(srv.url, models)
            spin_us = args.spin_us if pair[1] == "on" else 0
            conns[pair] = conn = connect(srv.url, spin_us=spin_us)
            stack.callback(conn.close)
            for m in models:
                for _ in range(20):
                    conn.run_model(m.name, m.inputs)
        for _ in range(args.rounds):
            for m in models:
                for pair, conn in conns.items():
                    ms = _median_ms(conn, m.name, m.inputs, args.calls)
                    rounds[m.name].setdefault(_label(pair), []).append(ms)
    report = {
        name: {label: statistics.median(v) for label, v in per.items()}
        for name, per in rounds.items()
    }
    if args.json:
        print(json.dumps({"median_ms": report, "rounds_ms": rounds}, indent=2))
    else:
        _table(report)
    return 0


def _median_ms(conn: blindinfer.Connection, name: str, inputs: Any, calls: int) -> float:
    out = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        conn.run_model(name, inputs)
        out.append(time.perf_counter_ns() - start)
    return statistics.median(out) / 1e6


def _label(pair: tuple[str, str]) -> str:
    return f"server {pair[0]}, SDK {pair[1]}"


def _table(report: dict[str, dict[str, float]]) -> None:
    labels = [_label(p) for p in PAIRS]
    print(f"{'model':10}" + "".join(f"{label:>22}" for label in labels))
    for name, per in report.items():
        print(f"{name:10}" + "".join(f"{per[label]:>20.3f}ms" for label in labels))


if __name__ == "__main__":
    raise SystemExit(main())
