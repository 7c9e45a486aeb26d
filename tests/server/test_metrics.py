"""Metrics: counts that add up, per-model OIP statistics, and nothing secret on the scrape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer._server.metrics import ROUTES, Metrics, route_of
from blindinfer._tee.simulation import create as create_simulation
from tests._inproc import inprocess_server

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# Distinctive values: none of them may ever appear in the exposition.
SECRET_INPUT = 4242.125


def test_route_classes_are_a_closed_set() -> None:
    paths = ["/v2/models/x/infer", "/v2/models/%2e%2e/ready", "/etc/passwd", "/v2", "/x" * 100]
    for method in ("GET", "POST", "DELETE"):
        for path in paths:
            assert route_of({"path": path, "method": method}) in ROUTES


def test_live_server_counts_and_discloses_nothing(tmp_path: Path) -> None:
    backend = create_simulation("simulation", tmp_path)
    with inprocess_server(tmp_path / "data", backend) as srv:
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as conn:
            conn.upload_model(FIXTURES / "mlp.onnx", name="secret-model-name-xyz")
            x = np.full((2, 8), SECRET_INPUT, np.float32)
            for _ in range(5):
                conn.run_model(
                    "secret-model-name-xyz", {"x": x, "scale": np.array([0.5], np.float32)}
                )
            with pytest.raises(blindinfer.InvalidInput):
                conn.run_model("secret-model-name-xyz", {"x": x})  # a missing input: a failure
            reply = conn._transport.request("GET", "/v2/models/secret-model-name-xyz/stats")
            stats = json.loads(reply.body)["model_stats"][0]
            everything = json.loads(conn._transport.request("GET", "/v2/models/stats").body)
        text = srv.state.metrics.exposition(srv.state.update_gauges).decode()
    assert stats["name"] == "secret-model-name-xyz" and stats["inference_count"] == 5
    assert stats["inference_stats"]["success"]["count"] == 5
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["inference_stats"]["success"]["ns"] > 0 and stats["last_inference"] > 0
    assert {s["name"] for s in everything["model_stats"]} >= {"secret-model-name-xyz", "demo"}
    lines = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln[:1] != "#"}
    assert lines['blindinfer_requests_total{api="native",route="infer",status="2xx"}'] == 5
    assert lines['blindinfer_requests_total{api="native",route="infer",status="4xx"}'] == 1
    assert lines['blindinfer_requests_total{api="native",route="upload",status="2xx"}'] == 1
    assert lines["blindinfer_models_loaded"] == 2
    assert lines['blindinfer_bytes_total{api="native",direction="in"}'] > 2 * 8 * 4 * 5
    assert lines["blindinfer_inference_queue_depth"] == 0
    # Nothing a client sent or owns: no model name, no token, no input value in any encoding.
    assert "secret-model-name-xyz" not in text
    assert srv.owner_token not in text
    assert str(SECRET_INPUT) not in text and f"{SECRET_INPUT:e}" not in text


def test_metrics_object_counts_failures_per_model() -> None:
    m = Metrics()
    m.record_run("a", 0.001, ok=True)
    m.record_run("a", 0.002, ok=False)
    assert m.model_stats("a").success.count == 1 and m.model_stats("a").fail.count == 1
    m.forget("a")
    assert m.model_stats("a").success.count == 0


def test_metrics_port_on_a_real_server_process(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from tests._server import free_port, running_server

    port = free_port()
    with running_server(tmp_path, "--metrics-port", str(port)) as srv:
        with blindinfer.connect(srv.url, simulation_mode=True) as conn:
            for _ in range(3):
                conn.run_model("demo", np.full((1, 4), SECRET_INPUT, np.float32))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
            text = resp.read().decode()
        for path in ("/v2", "/blindinfer/v1/attestation", "/v2/models/demo/infer"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
            assert err.value.code == 404
    assert 'blindinfer_requests_total{api="native",route="infer",status="2xx"} 3.0' in text
    assert "blindinfer_evidence_age_seconds" in text and str(SECRET_INPUT) not in text
