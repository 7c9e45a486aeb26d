"""Interoperability: the stock Triton/KServe OIP v2 client talks to the native port."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from blindinfer._client import attest
from blindinfer._engine.demo import demo_reference
from tests._server import ServerProcess, running_server

SCRIPT = Path(__file__).with_name("tritonclient_script.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("oip")) as srv:
        yield srv


@pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")
def test_tritonclient_after_attestation(server: ServerProcess, tmp_path: Path) -> None:
    claims, cert = attest(server.url, simulation_mode=True)  # verify first, then pin
    assert claims.kind == "simulation"
    cert_path = tmp_path / "attested.der"
    cert_path.write_bytes(cert)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), f"127.0.0.1:{server.port}", str(cert_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["live"] and out["ready"] and out["model_ready"] and out["server"] == "blindinfer"
    assert out["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    want = demo_reference(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32))
    np.testing.assert_allclose(out["binary"], want, rtol=1e-6)
    np.testing.assert_allclose(out["json"], want, rtol=1e-6)
    status, message = out["wrong_version"]
    assert status == "404" or status == 404
    assert "only version is 1" in message


def test_tritonclient_refuses_another_certificate(server: ServerProcess, tmp_path: Path) -> None:
    from blindinfer._server.tls import generate_identity

    other = tmp_path / "other.der"
    other.write_bytes(generate_identity().certificate_der)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), f"127.0.0.1:{server.port}", str(other)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert (
        "CERTIFICATE_VERIFY_FAILED" in result.stderr or "certificate verify failed" in result.stderr
    )
