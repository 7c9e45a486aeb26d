"""Fuzz a real server process: at least 20,000 mutated inference requests (OIP v2 JSON and
binary extension, BlindAI 0.6 CBOR) must get no 5xx, leave the server running, and leave the
answers to known-good requests unchanged. The driver is tests/server/fuzz_driver.py; each
finding in the report carries the index that regenerates its request byte for byte
(``Generator(seed, ports, models).request(index)``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests._server import OWNER_TOKEN, ServerProcess, free_port, running_server
from tests.server.fuzz_driver import (
    FuzzConfig,
    FuzzReport,
    Model,
    Pool,
    Ports,
    Request,
    run_fuzz,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# 40,000 requests take about 50 s on a shared 2-core machine. Longer or other runs:
# BLINDINFER_FUZZ_COUNT=200000 BLINDINFER_FUZZ_SEED=7 pytest tests/server/test_fuzz.py -s
MIN_COUNT = 20_000
COUNT = max(MIN_COUNT, int(os.environ.get("BLINDINFER_FUZZ_COUNT", "40000")))
SEED = int(os.environ.get("BLINDINFER_FUZZ_SEED", "20240601"))


def _model(pool: Pool, port: int, name: str) -> Model:
    r = pool.send(Request("get", port, f"/v2/models/{name}", (), b"", method="GET"))
    assert r.status == 200, r.body
    doc = json.loads(r.body)
    return Model(name, doc["model_id"], doc["sha256"])


def _upload(pool: Pool, port: int, name: str, path: Path) -> Model:
    auth = (("authorization", f"Bearer {OWNER_TOKEN}"),)
    r = pool.send(Request("upload", port, f"/blindinfer/v1/models?name={name}", auth,
                          path.read_bytes()))  # fmt: skip
    assert r.status == 201, r.body
    doc = json.loads(r.body)
    return Model(name, doc["model_id"], doc["sha256"])


def _internal_errors(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if "internal error" in line.lower()]


def _summary(report: FuzzReport, errors: list[str]) -> str:
    lines = [
        f"fuzz: {report.count} requests in {report.seconds:.1f} s (seed {report.seed}, "
        f"{report.checkpoints} probe checkpoints)",
        f"statuses: {dict(sorted(report.statuses.items()))}",
        f"by kind: {dict(sorted(report.by_kind.items()))}",
        f"server RSS: {report.rss_before_kib} KiB before, {report.rss_after_kib} KiB after",
        f"5xx: {report.server_error_count()}, no response: {report.statuses.get('None', 0)}, "
        f"probe mismatches: {len(report.probe_mismatches)}, alive: {report.server_alive}",
    ]
    lines += [f"  5xx #{f.index} {f.kind} {f.request.path}: {f.response[:200]!r}"
              for f in report.server_errors[:20]]  # fmt: skip
    lines += [f"  no response #{f.index} {f.kind}: {f.error}" for f in report.no_response[:20]]
    lines += [f"  server log: {line}" for line in errors[:20]]
    lines += [f"  probe: {m}" for m in report.probe_mismatches[:20]]
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fuzzed_requests_never_get_a_5xx(tmp_path: Path) -> None:
    blindai = (free_port(), free_port(), free_port())
    flag = ",".join(map(str, blindai))
    with running_server(tmp_path, "--blindai-compat", "--blindai-ports", flag) as server:
        setup = Pool(30.0)
        models = {
            "demo": _model(setup, server.port, "demo"),
            "mlp": _upload(setup, server.port, "mlp", FIXTURES / "mlp.onnx"),
            "all-dtypes": _upload(setup, server.port, "all-dtypes", FIXTURES / "all_dtypes.onnx"),
        }
        config = FuzzConfig(
            ports=Ports(server.port, blindai[1], blindai[2]),
            models=models,
            pid=server.process.pid,
            count=COUNT,
            seed=SEED,
        )
        report = run_fuzz(config, alive=lambda: server.process.poll() is None)
        errors = _internal_errors(server)
    doc = {**report.to_json(), "server_log_internal_errors": errors}
    out = tmp_path / "fuzz_report.json"
    out.write_text(json.dumps(doc, indent=1))
    summary = _summary(report, errors)
    print(f"{summary}\nreport: {out}")
    assert report.count >= MIN_COUNT
    assert report.server_alive, summary
    assert report.server_error_count() == 0, summary
    assert not report.probe_mismatches, summary
    assert report.statuses.get("None", 0) == 0, summary
