"""End to end: a real server process on loopback, the real SDK over attested TLS."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

import blindinfer
from blindinfer._client.tls import pinned_context
from blindinfer._engine.demo import demo_reference
from blindinfer._wire.tensors import DATATYPES
from tests._server import ServerProcess, running_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MAX_MODEL = 2_000_000
MAX_REQUEST = 1_000_000

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("e2e")
    args = ("--max-model-size", str(MAX_MODEL), "--max-request-size", str(MAX_REQUEST))
    with running_server(tmp, *args) as srv:
        yield srv


@pytest.fixture
def conn(server: ServerProcess) -> Iterator[blindinfer.Connection]:
    with blindinfer.connect(server.url, simulation_mode=True, token=server.owner_token) as c:
        yield c


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def test_demo_model_is_preloaded_and_correct(conn: blindinfer.Connection) -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    out = conn.run_model("demo", x)
    np.testing.assert_allclose(out["probabilities"], demo_reference(x), rtol=1e-6)


def test_upload_run_by_id_name_sha_then_delete(conn: blindinfer.Connection) -> None:
    path = FIXTURES / "mlp.onnx"
    info = conn.upload_model(path, name="mlp-e2e")
    assert info.sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert [t.name for t in info.inputs] == ["x", "scale"]
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.standard_normal((5, 8)).astype(np.float32),
        "scale": np.array([0.5], np.float32),
    }
    want = reference(path, feeds)
    for ref in (info.model_id, "mlp-e2e", info.sha256, info.sha256.upper()):
        got = conn.run_model(ref, feeds)
        assert set(got) == {"y", "label"}
        np.testing.assert_array_equal(got["y"], want["y"])
        np.testing.assert_array_equal(got["label"], want["label"])
    # positional list in the model's input order, and one output selected
    got = conn.run_model(info.model_id, [feeds["x"], feeds["scale"]], outputs=["label"])
    assert list(got) == ["label"]
    np.testing.assert_array_equal(got["label"], want["label"])
    assert any(m.model_id == info.model_id for m in conn.list_models())

    deleted = conn.delete_model(info.model_id)
    assert deleted.model_id == info.model_id
    with pytest.raises(blindinfer.ModelNotFound):
        conn.run_model(info.model_id, feeds)
    with pytest.raises(blindinfer.ModelNotFound) as exc:
        conn.model_metadata("mlp-e2e")
    assert exc.value.status == 404


def test_every_datatype_round_trips(conn: blindinfer.Connection) -> None:
    info = conn.upload_model(FIXTURES / "all_dtypes.onnx", name="dtypes", replace=True)
    rng = np.random.default_rng(3)
    feeds = {}
    for name, dt in DATATYPES.items():
        if name == "BOOL":
            feeds[f"in_{name}"] = rng.integers(0, 2, (2, 3)).astype(bool)
        elif dt.kind == "f":
            feeds[f"in_{name}"] = rng.standard_normal((2, 3)).astype(dt)
        else:
            info_ = np.iinfo(dt)
            feeds[f"in_{name}"] = rng.integers(
                info_.min, info_.max, (2, 3), dtype=dt, endpoint=True
            )
    out = conn.run_model(info.model_id, feeds)
    assert len(out) == 12
    for name in DATATYPES:
        np.testing.assert_array_equal(out[f"out_{name}"], feeds[f"in_{name}"])
        assert out[f"out_{name}"].dtype == feeds[f"in_{name}"].dtype.newbyteorder("=")


def test_torch_tensor_input(conn: blindinfer.Connection) -> None:
    import torch

    x = torch.rand(3, 4)
    out = conn.run_model("demo", x)
    np.testing.assert_allclose(out["probabilities"], demo_reference(x.numpy()), rtol=1e-6)


def test_flat_list_with_dtype_and_shape(conn: blindinfer.Connection) -> None:
    out = conn.run_model("demo", [5.1, 3.5, 1.4, 0.2] * 2, dtype="FP32", shape=[2, 4])
    x = np.array([[5.1, 3.5, 1.4, 0.2]] * 2, np.float32)
    np.testing.assert_allclose(out["probabilities"], demo_reference(x), rtol=1e-6)


def _raw(
    server: ServerProcess, conn: blindinfer.Connection, token: str | None = None
) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=server.url, verify=pinned_context(conn.certificate_der), headers=headers
    )


def test_oip_json_and_metadata(server: ServerProcess, conn: blindinfer.Connection) -> None:
    with _raw(server, conn) as http:
        assert http.get("/v2/health/live").json() == {"live": True}
        assert http.get("/v2/health/ready").json() == {"ready": True}
        meta = http.get("/v2").json()
        assert meta["name"] == "blindinfer" and meta["insecure"] is True
        assert "binary_tensor_data" in meta["extensions"]
        model = http.get("/v2/models/demo").json()
        assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
        assert http.get("/v2/models/demo/ready").json()["ready"] is True
        body = {
            "id": "req-1",
            "inputs": [
                {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
            ],
        }
        resp = http.post("/v2/models/demo/infer", json=body)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert doc["id"] == "req-1" and doc["model_name"] == "demo"
        (out,) = doc["outputs"]
        assert out["name"] == "probabilities" and out["shape"] == [1, 3]
        want = demo_reference(np.array([[1, 2, 3, 4]], np.float32)).reshape(-1)
        np.testing.assert_allclose(out["data"], want, rtol=1e-6)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"inputs": "x"}).encode(), "'inputs' list"),
        (json.dumps({"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32",
                                  "data": [1, 2, 3, 4]}]}).encode(), "missing input"),
        (json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "INT64",
                                  "data": [1, 2, 3, 4]}]}).encode(), "must be FP32, got INT64"),
        (json.dumps({"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32",
                                  "data": [1, 2, 3, 4, 5]}]}).encode(), "must have shape"),
        (json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                  "data": [1, 2]}]}).encode(), "2 values given"),
        (json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "COMPLEX",
                                  "data": [1, 2, 3, 4]}]}).encode(), "unsupported datatype"),
    ],
)  # fmt: skip
def test_malformed_requests_get_400_and_server_keeps_serving(
    server: ServerProcess, conn: blindinfer.Connection, body: bytes, fragment: str
) -> None:
    with _raw(server, conn) as http:
        resp = http.post("/v2/models/demo/infer", content=body)
        assert resp.status_code == 400, resp.text
        assert fragment in resp.json()["error"]
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(
        conn.run_model("demo", x)["probabilities"], demo_reference(x), rtol=1e-6
    )


def test_binary_extension_errors(server: ServerProcess, conn: blindinfer.Connection) -> None:
    spec = {"name": "features", "shape": [1, 4], "datatype": "FP32"}
    header = json.dumps({"inputs": [{**spec, "parameters": {"binary_data_size": 16}}]}).encode()
    with _raw(server, conn) as http:
        short = http.post(
            "/v2/models/demo/infer",
            content=header + b"\0" * 8,
            headers={"inference-header-content-length": str(len(header))},
        )
        assert short.status_code == 400 and "runs past the end" in short.json()["error"]
        bad_len = http.post(
            "/v2/models/demo/infer",
            content=header,
            headers={"inference-header-content-length": "99999"},
        )
        assert bad_len.status_code == 400


def test_unknown_model_is_404(conn: blindinfer.Connection) -> None:
    with pytest.raises(blindinfer.ModelNotFound, match="no model 'ghost'"):
        conn.run_model("ghost", np.ones((1, 4), np.float32))


def test_owner_credential_required(server: ServerProcess, conn: blindinfer.Connection) -> None:
    data = (FIXTURES / "mlp.onnx").read_bytes()
    with _raw(server, conn) as anon:
        resp = anon.post("/blindinfer/v1/models", content=data)
        assert resp.status_code == 401 and "owner" in resp.json()["error"]
        assert anon.delete("/blindinfer/v1/models/demo").status_code == 401
    with _raw(server, conn, token="wrong") as wrong:
        assert wrong.post("/blindinfer/v1/models", content=data).status_code == 403
        assert wrong.delete("/blindinfer/v1/models/demo").status_code == 403
    # SDK without a token gets the typed error; the demo model is still there
    with blindinfer.connect(server.url, simulation_mode=True) as no_token:
        with pytest.raises(blindinfer.Unauthorized):
            no_token.upload_model(data, name="x")
        assert any(m.name == "demo" for m in no_token.list_models())


@pytest.mark.parametrize(
    ("fixture", "fragment"),
    [
        ("external_data.onnx", "external data"),
        ("not_onnx.onnx", "not a valid ONNX model"),
    ],
)
def test_invalid_models_rejected(conn: blindinfer.Connection, fixture: str, fragment: str) -> None:
    before = {m.model_id for m in conn.list_models()}
    with pytest.raises(blindinfer.InvalidModel, match=fragment):
        conn.upload_model(FIXTURES / fixture, name="bad")
    assert {m.model_id for m in conn.list_models()} == before


def test_size_limits(conn: blindinfer.Connection) -> None:
    with pytest.raises(blindinfer.PayloadTooLarge, match="over the server limit"):
        conn.upload_model(b"\0" * (MAX_MODEL + 1), name="huge")
    big = np.zeros((MAX_REQUEST // 16 + 1, 4), np.float32)
    with pytest.raises(blindinfer.PayloadTooLarge):
        conn.run_model("demo", big)
    x = np.ones((1, 4), np.float32)
    assert conn.run_model("demo", x)["probabilities"].shape == (1, 3)


def test_name_conflict_and_replace(conn: blindinfer.Connection) -> None:
    first = conn.upload_model(FIXTURES / "mlp.onnx", name="dup")
    with pytest.raises(blindinfer.ServerError) as exc:
        conn.upload_model(FIXTURES / "mlp.onnx", name="dup")
    assert exc.value.status == 409
    second = conn.upload_model(FIXTURES / "all_dtypes.onnx", name="dup", replace=True)
    assert second.model_id != first.model_id
    assert conn.model_metadata("dup")["model_id"] == second.model_id
    with pytest.raises(blindinfer.ModelNotFound):
        conn.model_metadata(first.model_id)


def test_models_survive_restart(tmp_path: Path) -> None:
    feeds = {"x": np.ones((2, 8), np.float32), "scale": np.array([2.0], np.float32)}
    with running_server(tmp_path) as srv:
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as c:
            info = c.upload_model(FIXTURES / "mlp.onnx", name="persisted")
            before = c.run_model("persisted", feeds)
        port = srv.port
    stored = list((tmp_path / "data" / "models").iterdir())
    assert len(stored) == 1 and b"MatMul" not in stored[0].read_bytes()  # sealed at rest
    with running_server(tmp_path, port=port) as srv2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c2 = blindinfer.connect(srv2.url, simulation_mode=True)
        with c2:
            assert c2.model_metadata("persisted")["model_id"] == info.model_id
            after = c2.run_model(info.sha256, feeds)
    np.testing.assert_array_equal(after["y"], before["y"])


def test_run_token_and_restricted_models(tmp_path: Path) -> None:
    x = np.ones((1, 4), np.float32)
    with running_server(tmp_path, "--run-token", "run-secret") as srv:
        with blindinfer.connect(srv.url, simulation_mode=True) as anon:
            with pytest.raises(blindinfer.Unauthorized) as exc:
                anon.run_model("demo", x)
            assert exc.value.status == 401
        with blindinfer.connect(srv.url, simulation_mode=True, token="run-secret") as user:
            assert user.run_model("demo", x)["probabilities"].shape == (1, 3)
            with pytest.raises(blindinfer.Unauthorized):  # a run token is not an owner token
                user.upload_model(FIXTURES / "mlp.onnx", name="nope")


def test_restricted_model_needs_a_token(server: ServerProcess) -> None:
    feeds = {"x": np.ones((1, 8), np.float32), "scale": np.ones(1, np.float32)}
    with blindinfer.connect(server.url, simulation_mode=True, token=server.owner_token) as owner:
        info = owner.upload_model(FIXTURES / "mlp.onnx", name="private", restricted=True)
        assert owner.run_model("private", feeds)["y"].shape == (1, 3)
        with (
            blindinfer.connect(server.url, simulation_mode=True) as anon,
            pytest.raises(blindinfer.Unauthorized, match="restricted"),
        ):
            anon.run_model("private", feeds)
        owner.delete_model(info.model_id)


def test_inputs_outputs_and_tokens_never_reach_the_log(tmp_path: Path) -> None:
    marker = "S3CR3T-MARKER"
    with running_server(tmp_path, "--log-level", "debug") as srv:
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as conn:
            x = np.array([[1.23456, 2.34567, 0.98765, 0.45678]], np.float32)
            out = conn.run_model("demo", x)
            info = conn.upload_model(FIXTURES / "mlp.onnx", name="logged-name")
            conn.delete_model(info.model_id)
            with _raw(srv, conn) as http:  # an error path that names the bad input
                bad = {"inputs": [{"name": "features", "shape": [1, 1], "datatype": "INT8",
                                   "data": [marker]}]}  # fmt: skip
                resp = http.post("/v2/models/demo/infer", json=bad)
                assert resp.status_code == 400 and "INT8" in resp.json()["error"]
        log = srv.log()
    assert "logged-name" in log  # the log is really captured, at debug level
    probs = [f"{p:.5f}" for p in out["probabilities"][0]]
    for secret in (marker, srv.owner_token, "1.23456", "2.34567", *probs):
        assert secret not in log


def test_killed_mid_upload_loses_nothing_already_stored(tmp_path: Path) -> None:
    import signal
    import threading

    feeds = {"x": np.ones((1, 8), np.float32), "scale": np.ones(1, np.float32)}
    with running_server(tmp_path, "--max-model-size", str(64 * 1024 * 1024)) as srv:
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as c:
            kept = c.upload_model(FIXTURES / "mlp.onnx", name="kept")
            want = c.run_model("kept", feeds)
            big = (FIXTURES / "mlp.onnx").read_bytes() + b"\0" * (48 * 1024 * 1024)
            started = threading.Event()

            def progress(done: int, total: int) -> None:
                started.set()
                if done > total // 2:
                    srv.process.send_signal(signal.SIGKILL)  # the operator pulls the plug

            with pytest.raises(blindinfer.BlindInferError):
                c.upload_model(big, name="kept", replace=True, progress=progress)
        srv.process.wait(10)
        port = srv.port
    assert started.is_set()
    with (
        running_server(tmp_path, port=port) as again,
        blindinfer.connect(again.url, simulation_mode=True) as c2,
    ):
        # The upload was being sealed as it arrived: its temporary file is removed at start.
        assert not list((tmp_path / "data" / "models").glob("*.tmp"))
        assert c2.model_metadata("kept")["model_id"] == kept.model_id
        np.testing.assert_array_equal(c2.run_model("kept", feeds)["y"], want["y"])


def test_concurrent_inference_during_uploads_and_deletes(server: ServerProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(5).standard_normal((4, 4)).astype(np.float32)
    want = demo_reference(x)
    feeds = {"x": np.ones((2, 8), np.float32), "scale": np.ones(1, np.float32)}
    mlp_want = reference(FIXTURES / "mlp.onnx", feeds)

    def runner(_: int) -> int:
        with blindinfer.connect(server.url, simulation_mode=True) as c:
            for _ in range(60):
                np.testing.assert_allclose(c.run_model("demo", x)["probabilities"], want, rtol=1e-6)
        return 60

    def churner(_: int) -> int:
        with blindinfer.connect(server.url, simulation_mode=True, token=server.owner_token) as c:
            for i in range(8):
                info = c.upload_model(FIXTURES / "mlp.onnx", name=f"churn-{i}")
                np.testing.assert_array_equal(c.run_model(info.model_id, feeds)["y"], mlp_want["y"])
                c.delete_model(info.model_id)
        return 8

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(churner, 0)] + [pool.submit(runner, i) for i in range(3)]
        done = [f.result() for f in futures]
    assert done == [8, 60, 60, 60]
    with blindinfer.connect(server.url, simulation_mode=True) as c:
        assert not [m for m in c.list_models() if m.name.startswith("churn-")]


def test_chunked_upload_without_content_length(
    server: ServerProcess, conn: blindinfer.Connection
) -> None:
    data = (FIXTURES / "mlp.onnx").read_bytes()

    def chunks(payload: bytes) -> Iterator[bytes]:
        for i in range(0, len(payload), 100):
            yield payload[i : i + 100]

    with _raw(server, conn, token=server.owner_token) as http:
        ok = http.post("/blindinfer/v1/models?name=chunked", content=chunks(data))
        assert ok.status_code == 201, ok.text
        assert ok.json()["sha256"] == __import__("hashlib").sha256(data).hexdigest()
        big = http.post("/blindinfer/v1/models?name=big", content=chunks(b"\0" * (MAX_MODEL + 1)))
        assert big.status_code == 413
        assert http.delete(f"/blindinfer/v1/models/{ok.json()['model_id']}").status_code == 200
