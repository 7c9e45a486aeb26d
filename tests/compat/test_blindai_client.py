"""The unmodified blindai==0.6.3 client, in its own virtual environment, against a real server.

The venv is made by scripts/blindai-venv.sh (cached in .cache/blindai-venv). The client runs in a
subprocess (tests/compat/blindai_harness.py) with REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE removed
from its environment; its outputs are compared with in-process onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from blindinfer._engine.demo import demo_model_bytes
from blindinfer._server.state import Listener
from tests._server import ServerProcess, free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
HARNESS = Path(__file__).resolve().parent / "blindai_harness.py"

# BlindAI datum type name -> numpy dtype, in the client's enum order.
DATUMS = {
    "F32": "float32", "F64": "float64", "I32": "int32", "I64": "int64", "U32": "uint32",
    "U64": "uint64", "U8": "uint8", "U16": "uint16", "I8": "int8", "I16": "int16", "Bool": "bool",
}  # fmt: skip
ONNX_ELEM = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "int32": TensorProto.INT32,
    "int64": TensorProto.INT64, "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64,
    "uint8": TensorProto.UINT8, "uint16": TensorProto.UINT16, "int8": TensorProto.INT8,
    "int16": TensorProto.INT16, "bool": TensorProto.BOOL,
}  # fmt: skip


@pytest.fixture(scope="session")
def blindai_python() -> Path:
    """The Python of the venv holding blindai==0.6.3 (created once, then cached)."""
    venv = Path(os.environ.get("BLINDAI_VENV", ROOT / ".cache" / "blindai-venv"))
    script = ROOT / "scripts" / "blindai-venv.sh"
    proc = subprocess.run(
        ["bash", str(script), str(venv), sys.executable],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"could not build the blindai venv:\n{proc.stdout}\n{proc.stderr}"
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, ports: tuple[int, int, int]
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("compat")
    flag = ",".join(str(p) for p in ports)
    with running_server(tmp, "--blindai-compat", "--blindai-ports", flag) as srv:
        yield srv


def client_env() -> dict[str, str]:
    drop = {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONPATH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def harness(python: Path, steps: list[dict[str, Any]], env: dict[str, str] | None = None) -> list:
    proc = subprocess.run(
        [str(python), str(HARNESS)],
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        timeout=300,
        env=env or client_env(),
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)["results"]
    return results


def connect_step(ports: tuple[int, int, int], **kw: Any) -> dict[str, Any]:
    return {"op": "connect", "addr": "127.0.0.1", "ports": list(ports), **kw}


def reference(model: bytes | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    src = str(model) if isinstance(model, Path) else model
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def tensor_spec(array: np.ndarray, name: str | None = None) -> dict[str, Any]:
    datum = next(k for k, v in DATUMS.items() if v == str(array.dtype))
    return {
        "name": name,
        "dtype": str(array.dtype),
        "datum": datum,
        "shape": list(array.shape),
        "data": array.flatten().tolist(),
    }


def outputs_of(result: dict[str, Any]) -> dict[str, np.ndarray]:
    assert result["ok"], result
    out = {}
    for o in result["outputs"]:
        arr = np.array(o["data"], dtype=o["dtype"]).reshape(o["shape"])
        assert DATUMS[o["datum"]] == o["dtype"]
        out[o["name"]] = arr
    return out


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        np.testing.assert_array_equal(got[name], arr)


def test_full_client_workflow_two_models(
    blindai_python: Path, server: ServerProcess, ports: tuple[int, int, int], tmp_path: Path
) -> None:
    mlp = FIXTURES / "mlp.onnx"
    demo = tmp_path / "demo.onnx"
    demo.write_bytes(demo_model_bytes())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    scale = np.array([0.75], np.float32)
    feats = rng.standard_normal((3, 4)).astype(np.float32)
    want_mlp = reference(mlp, {"x": x, "scale": scale})
    want_demo = reference(demo, {"features": feats})
    mlp_numpy = {"style": "numpy", "tensors": [tensor_spec(x), tensor_spec(scale)]}
    # named inputs, deliberately not in the model's order
    mlp_named = {
        "style": "numpy_dict",
        "tensors": [tensor_spec(scale, "scale"), tensor_spec(x, "x")],
    }
    mlp_flat = {"style": "flat", "tensors": [tensor_spec(x), tensor_spec(scale)]}
    steps = [
        connect_step(ports, simulation_mode=True, hazmat_http=True),
        {"op": "upload", "path": str(mlp), "save_as": "mlp"},
        {"op": "upload", "path": str(demo), "save_as": "demo"},
        {"op": "run", "model": "mlp", "by": "id", **mlp_numpy},
        {"op": "run", "model": "mlp", "by": "hash", **mlp_numpy},
        {"op": "run", "model": "mlp", "by": "id", **mlp_flat},
        {"op": "run", "model": "mlp", "by": "id", **mlp_named},
        {"op": "run", "model": "demo", "by": "id", "tensors": [tensor_spec(feats)]},
        {
            "op": "run",
            "model": "demo",
            "by": "hash",
            "style": "flat",
            "tensors": [tensor_spec(feats)],
        },
        {"op": "delete", "model": "mlp"},
        {"op": "run", "model": "mlp", "by": "id", **mlp_numpy},
        {"op": "run", "model": "mlp", "by": "hash", **mlp_numpy},
        {"op": "run", "model": "demo", "by": "id", "tensors": [tensor_spec(feats)]},
        {"op": "delete", "model": "demo"},
    ]
    r = harness(blindai_python, steps)
    assert r[0] == {"ok": True, "connected": True}
    import hashlib

    assert r[1]["ok"] and r[1]["hash"] == hashlib.sha256(mlp.read_bytes()).hexdigest()
    assert r[2]["ok"] and r[2]["hash"] == hashlib.sha256(demo.read_bytes()).hexdigest()
    assert r[1]["model_id"] != r[2]["model_id"]
    for i in (3, 4, 5, 6):
        assert_same(outputs_of(r[i]), want_mlp)
    for i in (7, 8):
        assert_same(outputs_of(r[i]), want_demo)
    assert r[9]["ok"]
    for i in (10, 11):  # deleted: by id and by hash, a clear 404 raised as HTTPError
        assert r[i]["ok"] is False and r[i]["error"] == "HTTPError", r[i]
        assert r[i]["status"] == 404 and "no model" in r[i]["body"]
    assert_same(outputs_of(r[12]), want_demo)  # the other model is untouched
    assert r[13]["ok"]


def test_every_blindai_datum_type_round_trips(
    blindai_python: Path, server: ServerProcess, ports: tuple[int, int, int], tmp_path: Path
) -> None:
    """One Identity per BlindAI datum type: checks the enum order and the output type names."""
    names = list(DATUMS)
    nodes = [helper.make_node("Identity", [f"in_{n}"], [f"out_{n}"]) for n in names]
    ins = [helper.make_tensor_value_info(f"in_{n}", ONNX_ELEM[DATUMS[n]], [2, 3]) for n in names]
    outs = [helper.make_tensor_value_info(f"out_{n}", ONNX_ELEM[DATUMS[n]], [2, 3]) for n in names]
    model = helper.make_model(
        helper.make_graph(nodes, "blindai_dtypes", ins, outs),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    path = tmp_path / "dtypes.onnx"
    onnx.save_model(model, path)
    rng = np.random.default_rng(5)
    arrays = [(rng.standard_normal((2, 3)) * 50).astype(DATUMS[n]) for n in names]
    steps = [
        connect_step(ports),
        {"op": "upload", "path": str(path), "save_as": "m"},
        {"op": "run", "model": "m", "tensors": [tensor_spec(a) for a in arrays]},
        {"op": "run", "model": "m", "style": "flat", "tensors": [tensor_spec(a) for a in arrays]},
        {"op": "delete", "model": "m"},
    ]
    r = harness(blindai_python, steps)
    want = {f"out_{n}": a for n, a in zip(names, arrays, strict=True)}
    assert_same(outputs_of(r[2]), want)
    assert_same(outputs_of(r[3]), want)
    assert [o["datum"] for o in r[2]["outputs"]] == names
    assert r[4]["ok"]


def test_bad_requests_are_clear_http_errors(
    blindai_python: Path, server: ServerProcess, ports: tuple[int, int, int]
) -> None:
    x = np.zeros((1, 8), np.float32)
    steps = [
        connect_step(ports),
        {"op": "upload", "path": str(FIXTURES / "not_onnx.onnx")},
        {"op": "run", "model_hash": "zz" * 32, "by": "hash", "tensors": [tensor_spec(x)]},
        {"op": "run", "model_id": "demo", "tensors": [tensor_spec(x)]},  # wrong shape
        {"op": "run", "model_id": "demo", "tensors": [tensor_spec(x.astype(np.float64))]},
        {"op": "run", "model_id": "demo", "tensors": [tensor_spec(x), tensor_spec(x)]},
        {"op": "delete", "model_id": "00000000-0000-4000-8000-000000000000"},
    ]
    r = harness(blindai_python, steps)
    assert r[0]["ok"]
    expect = [(422, "not a valid ONNX"), (400, "64 hex digits"), (400, "shape"),
              (400, "FP32"), (400, "takes 1 input"), (404, "no model")]  # fmt: skip
    for res, (status, text) in zip(r[1:], expect, strict=True):
        assert res["ok"] is False and res["error"] == "HTTPError", res
        assert res["status"] == status and text in res["body"], res


def test_non_simulation_connect_is_refused_by_the_client(
    blindai_python: Path, server: ServerProcess, ports: tuple[int, int, int]
) -> None:
    r = harness(blindai_python, [connect_step(ports, simulation_mode=False)])
    assert r[0]["ok"] is False
    assert r[0]["error"] == "AttestationError" and "mock" in r[0]["message"]


def test_models_are_shared_with_the_native_api(
    blindai_python: Path, server: ServerProcess, ports: tuple[int, int, int]
) -> None:
    """The preloaded demo model (native registry) runs by name through the BlindAI port."""
    feats = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    r = harness(
        blindai_python,
        [connect_step(ports), {"op": "run", "model_id": "demo", "tensors": [tensor_spec(feats)]}],
    )
    assert_same(outputs_of(r[1]), reference(demo_model_bytes(), {"features": feats}))


def test_unattested_port_serves_certificate_with_mock_header(
    server: ServerProcess, ports: tuple[int, int, int]
) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/", timeout=10) as resp:
        der = cbor2.loads(resp.read())
        assert "mock" in resp.headers["Server"]
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "blindai-srv" in san.get_values_for_type(x509.DNSName)


@pytest.mark.skipif(
    "http_protocol" not in {f.name for f in dataclasses.fields(Listener)},
    reason="the runner does not yet pass Listener.http_protocol to uvicorn (HTTPS sniffing)",
)
def test_default_https_unattested_port(
    blindai_python: Path, server: ServerProcess, ports: tuple[int, int, int], tmp_path: Path
) -> None:
    """Without the hazmat flag the client fetches the certificate over HTTPS, verified with
    its CA bundle: here we give it our certificate through REQUESTS_CA_BUNDLE on purpose."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/", timeout=10) as resp:
        der = cbor2.loads(resp.read())
    pem = tmp_path / "server.pem"
    pem.write_text(ssl.DER_cert_to_PEM_cert(der))
    env = {**client_env(), "REQUESTS_CA_BUNDLE": str(pem)}
    feats = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    steps = [
        connect_step(ports, hazmat_http=False),
        {"op": "run", "model_id": "demo", "tensors": [tensor_spec(feats)]},
    ]
    r = harness(blindai_python, steps, env)
    assert r[0]["ok"], r[0]
    assert_same(outputs_of(r[1]), reference(demo_model_bytes(), {"features": feats}))


def test_sniffing_protocol_serves_http_and_https_on_one_port(tmp_path: Path) -> None:
    """In process, on asyncio and uvloop: the unattested app behind the TLS sniffer."""
    import uvicorn

    from blindinfer._server._internals import http_protocol_class
    from blindinfer._server.compat import build_compat_apps
    from blindinfer._server.compat import sniffing_protocol as sniff
    from blindinfer._server.config import Settings
    from blindinfer._server.runner import build_state

    state, _ = build_state(Settings(data_dir=tmp_path, owner_token="t", demo_model=False))
    try:
        for loop in ("asyncio", "uvloop"):
            port = free_port()
            config = uvicorn.Config(
                build_compat_apps(state)[0],
                host="127.0.0.1",
                port=port,
                http=sniff(http_protocol_class(), state.tls.server_context()),
                lifespan="off",
                log_level="warning",
                loop=loop,
            )
            srv = uvicorn.Server(config)
            thread = threading.Thread(target=srv.run, daemon=True)
            thread.start()
            while not srv.started:
                assert thread.is_alive()
                time.sleep(0.02)
            try:
                ctx = ssl.create_default_context(cadata=state.tls.certificate_pem.decode())
                ctx.check_hostname = False
                for url, kw in ((f"http://127.0.0.1:{port}/", {}),
                                (f"https://127.0.0.1:{port}/", {"context": ctx})):  # fmt: skip
                    for _ in range(2):
                        with urllib.request.urlopen(url, timeout=10, **kw) as resp:
                            assert cbor2.loads(resp.read()) == state.tls.certificate_der
            finally:
                srv.should_exit = True
                thread.join(10)
    finally:
        state.executor.shutdown(wait=False)
