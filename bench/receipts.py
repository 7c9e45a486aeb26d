"""What a signed receipt costs per request: the same small model through the real server, with
and without ``receipt=True``, interleaved in rounds.

    .venv/bin/python -m bench.receipts [--model mlp] [--seconds 6] [--rounds 6]
                                       [--out bench/results/receipts.json]

A real ``blindinfer serve`` process on loopback (simulation TEE), one attested ``connect()``,
then ``run_model`` on the kept-alive connection. With a receipt the server hashes the inputs
and outputs, signs one ES256 COSE_Sign1 with its TLS key and sends the bundle (certificate,
evidence, collateral: base64 in the response's parameters), and the SDK decodes it. Also timed
in process: ``verify_receipt`` of one bundle (offline, as an auditor would). Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.models import NAMES, ensure_model
from bench.run import connect, interleaved, server, summarize
from blindinfer._receipts import verify_receipt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="mlp", choices=NAMES)
    parser.add_argument("--seconds", type=float, default=6.0, help="budget per variant")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench/results/receipts.json"))
    args = parser.parse_args(argv)
    model = ensure_model(args.model)
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), 1) as srv:
        conn = connect(srv.url)
        with conn:
            conn.upload_model(model.path, model.name)
            signed = conn.run_model(model.name, model.inputs, receipt=True)
            stats = interleaved(
                {
                    "without receipt": lambda: conn.run_model(model.name, model.inputs),
                    "with receipt": lambda: conn.run_model(model.name, model.inputs, receipt=True),
                },
                args.seconds,
                args.rounds,
                0.5,
            )
    samples: list[int] = []
    for _ in range(200):
        start = time.perf_counter_ns()
        verify_receipt(signed.receipt, simulation=True, inputs=model.inputs, outputs=dict(signed))
        samples.append(time.perf_counter_ns() - start)
    base, with_receipt = stats["without receipt"], stats["with receipt"]
    doc = {
        "model": args.model,
        "receipt_bytes": len(signed.receipt),
        "server": stats,
        "added_p50_ms": with_receipt["p50_ms"] - base["p50_ms"],
        "ratio_p50": with_receipt["p50_ms"] / base["p50_ms"],
        "verify_receipt": summarize(samples),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for name, s in stats.items():
        print(f"{name:16} p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  n={s['n']}")
    print(
        f"receipt: +{doc['added_p50_ms']:.3f} ms p50 (x{doc['ratio_p50']:.2f}), "
        f"{doc['receipt_bytes']} bytes; verify_receipt p50 "
        f"{doc['verify_receipt']['p50_ms']:.3f} ms (written to {args.out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
