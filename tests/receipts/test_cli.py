"""`blindinfer run --receipt FILE` and `blindinfer receipt verify FILE`: exit 0 only when every
check passes, 3 with the named reason otherwise (--json on stdout either way)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests._server import ServerProcess, running_server
from tests.test_cli import cli

FEATURES = [[0.5, 0.25, -1.0, 2.0]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("receipt-cli")) as srv:
        yield srv


@pytest.fixture(scope="module")
def receipt(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A receipt written by `blindinfer run --receipt`, and its run's outputs (JSON)."""
    path = tmp_path_factory.mktemp("receipt") / "run.receipt"
    run = cli(
        "run", server.url, "demo", "--input", json.dumps(FEATURES), "--simulation",
        "--receipt", str(path), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert path.stat().st_size > 0
    path.with_suffix(".json").write_text(run.stdout)
    return path


def verify(*args: str) -> tuple[int, dict]:
    result = cli("receipt", "verify", *args, "--json")
    return result.returncode, json.loads(result.stdout)


def outputs_npz(receipt: Path, tmp_path: Path, delta: float = 0.0) -> Path:
    doc = json.loads(receipt.with_suffix(".json").read_text())
    arrays = {k: np.asarray(v["data"], np.float32) + np.float32(delta) for k, v in doc.items()}
    path = tmp_path / f"outputs{delta}.npz"
    np.savez(path, **arrays)
    return path


def test_receipt_verify_ok_with_inputs_outputs_and_model(
    server: ServerProcess, receipt: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, features=np.asarray(FEATURES, np.float32))
    models = json.loads(cli("models", server.url, "--simulation", "--json").stdout)
    sha = next(m["sha256"] for m in models if m["name"] == "demo")
    policy = tmp_path / "policy.toml"
    made = cli("policy", server.url, "--simulation", "--output", str(policy))
    assert made.returncode == 0, made.stderr
    code, doc = verify(
        str(receipt), "--simulation", "--policy", str(policy), "--inputs", str(inputs),
        "--outputs", str(outputs_npz(receipt, tmp_path)), "--model-sha256", sha,
    )  # fmt: skip
    assert code == 0, doc
    assert doc["verified"] is True
    assert doc["checks"] == [
        "signature", "evidence", "binding", "policy", "model", "inputs", "outputs"
    ]  # fmt: skip
    assert doc["receipt"]["model_sha256"] == sha and doc["claims"]["kind"] == "simulation"
    # Human-readable form: the same verdict, exit 0.
    plain = cli("receipt", "verify", str(receipt), "--simulation")
    assert plain.returncode == 0 and "verified" in plain.stderr


def test_receipt_verify_refusals_exit_3_with_the_reason(receipt: Path, tmp_path: Path) -> None:
    code, doc = verify(str(receipt))  # no simulation opt-in
    assert (code, doc["verified"], doc["reason"]) == (3, False, "PolicyError")
    wrong = outputs_npz(receipt, tmp_path, delta=0.5)
    code, doc = verify(str(receipt), "--simulation", "--outputs", str(wrong))
    assert (code, doc["reason"]) == (3, "ReceiptMismatch") and "outputs" in doc["message"]
    code, doc = verify(str(receipt), "--simulation", "--model-sha256", "cd" * 32)
    assert (code, doc["reason"]) == (3, "ReceiptMismatch")
    code, doc = verify(str(receipt), "--simulation", "--at", "2000-01-01T00:00:00Z")
    assert (code, doc["reason"]) == (3, "EvidenceError")
    tampered = tmp_path / "tampered.receipt"
    data = bytearray(receipt.read_bytes())
    data[-5] ^= 0x01  # inside the signature
    tampered.write_bytes(bytes(data))
    code, doc = verify(str(tampered), "--simulation")
    assert (code, doc["reason"]) == (3, "ReceiptSignatureError")
    not_npz = tmp_path / "bad.npz"
    not_npz.write_bytes(b"not a zip")
    result = cli("receipt", "verify", str(receipt), "--simulation", "--inputs", str(not_npz))
    assert result.returncode == 2 and "--inputs" in result.stderr
