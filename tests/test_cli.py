"""The command line, run as a user would: real processes, exit codes, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from tests._server import ServerProcess, running_server

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COMMANDS = ["serve", "attest", "verify", "policy", "upload", "run", "delete", "models", "measure"]


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
    if token:
        env["BLINDINFER_OWNER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "blindinfer", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("cli")) as srv:
        yield srv


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_serve_help_documents_settings() -> None:
    out = cli("serve", "--help").stdout
    for flag in ("--host", "--port", "--data-dir", "--tee", "--owner-token", "--blindai-compat"):
        assert flag in out


def test_attest_json_and_refusals(server: ServerProcess, tmp_path: Path) -> None:
    ok = cli("attest", server.url, "--simulation", "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["verified"] and doc["claims"]["kind"] == "simulation"
    assert doc["certificate_evidence"] is True  # the RA-TLS extension, verified by attest too
    assert "INSECURE" in ok.stderr or "NO hardware protection" in ok.stderr
    refused = cli("attest", server.url)
    assert refused.returncode == 3 and "SIMULATION" in refused.stderr
    pem = tmp_path / "attested.pem"
    saved = cli("attest", server.url, "--simulation", "--save-cert", str(pem))
    assert saved.returncode == 0 and pem.read_text().startswith("-----BEGIN CERTIFICATE-----")
    import ssl
    from datetime import UTC, datetime

    from blindinfer.attestation import verify_certificate

    der = ssl.PEM_cert_to_DER_cert(pem.read_text())  # the saved certificate proves itself
    assert verify_certificate(der, at=datetime.now(UTC)).kind == "simulation"
    unreachable = cli("attest", "https://127.0.0.1:1", "--simulation")
    assert unreachable.returncode == 5


def test_policy_written_then_enforced(server: ServerProcess, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    made = cli("policy", server.url, "--simulation", "-o", str(policy))
    assert made.returncode == 0, made.stderr
    text = policy.read_text()
    assert "[simulation]" in text and "measurement" in text
    assert cli("attest", server.url, "--simulation", "--policy", str(policy)).returncode == 0
    doc = tomllib.loads(text)
    doc["simulation"]["measurement"] = ["00" * 32]
    policy.write_text(tomli_w.dumps(doc))
    wrong = cli("attest", server.url, "--simulation", "--policy", str(policy))
    assert wrong.returncode == 3 and "simulation.measurement" in wrong.stderr


def test_model_commands(server: ServerProcess) -> None:
    up = cli("upload", server.url, str(FIXTURES / "mlp.onnx"), "--name", "cli-mlp",
             "--simulation", "--json", token=server.owner_token)  # fmt: skip
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    listed = cli("models", server.url, "--simulation", "--json")
    assert any(m["model_id"] == info["model_id"] for m in json.loads(listed.stdout))
    run = cli("run", server.url, "cli-mlp", "--simulation", "--json",
              "-i", "x=[[1,2,3,4,5,6,7,8]]", "-i", "scale=[1.0]")  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["y"]["shape"] == [1, 3] and out["label"]["datatype"] == "int64"
    anon = cli("delete", server.url, "cli-mlp", "--simulation")
    assert anon.returncode == 4 and "owner" in anon.stderr
    gone = cli("delete", server.url, "cli-mlp", "--simulation", token=server.owner_token)
    assert gone.returncode == 0, gone.stderr
    again = cli("run", server.url, "cli-mlp", "--simulation", "-i", "x=[[1,2,3,4,5,6,7,8]]")
    assert again.returncode == 4 and "no model" in again.stderr


def test_verify_simulation_evidence_file(server: ServerProcess, tmp_path: Path) -> None:
    import base64

    import httpx

    doc = httpx.get(f"{server.url}/blindinfer/v1/attestation", verify=False).json()
    evidence = tmp_path / "evidence.b64"
    evidence.write_text(doc["evidence"])
    cert = tmp_path / "cert.der"
    cert.write_bytes(base64.b64decode(doc["certificate"]))
    ok = cli("verify", "--evidence", str(evidence), "--cert", str(cert), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["checks"] == ["authenticity", "binding"]
    other = tmp_path / "other.der"
    other.write_bytes((FIXTURES / "mlp.onnx").read_bytes()[:0] + _other_cert())
    bad = cli("verify", "--evidence", str(evidence), "--cert", str(other))
    assert bad.returncode == 3 and "BindingError" in bad.stderr


def _other_cert() -> bytes:
    from blindinfer._server.tls import generate_identity

    return generate_identity().certificate_der


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("serve", "--tee", "quantum", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "unknown TEE backend" in result.stderr


# --- offline verification of the real vectors (../shared/vectors) -------------------------------


def test_verify_sgx_vector_inside_and_outside_its_window(vectors: Path, tmp_path: Path) -> None:
    quote, coll = vectors / "sgx" / "sgx_quote", vectors / "sgx" / "sgx_quote_collateral.json"
    base = ["verify", "--evidence", str(quote), "--collateral", str(coll), "--json"]
    inside = cli(*base, "--at", "2025-07-01T00:00:00Z")
    assert inside.returncode == 0, inside.stderr
    claims = json.loads(inside.stdout)["claims"]
    assert claims["kind"] == "sgx"  # detected from the bytes
    assert claims["measurements"]["mrenclave"] == (
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    )
    assert claims["tcb_status"] == "ConfigurationAndSWHardeningNeeded"  # reported, not judged
    today = cli(*base)
    assert today.returncode == 3 and "expired" in today.stderr
    policy = tmp_path / "p.toml"
    policy.write_text('[sgx]\nmrenclave = "' + "00" * 32 + '"\n')
    judged = cli(*base, "--at", "2025-07-01T00:00:00Z", "--policy", str(policy))
    assert judged.returncode == 3 and "sgx.mrenclave" in judged.stderr
    made = cli("policy", "--evidence", str(quote), "--collateral", str(coll),
               "--at", "2025-07-01T00:00:00Z", "-o", str(policy))  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert cli(*base, "--at", "2025-07-01T00:00:00Z", "--policy", str(policy)).returncode == 0


def test_verify_nitro_base64_document_with_its_certificate(vectors: Path) -> None:
    doc = vectors / "nitro" / "valid-attestation-doc-base64"
    cert = vectors / "nitro" / "valid-certificate.der"
    ok = cli("verify", "--evidence", str(doc), "--cert", str(cert), "--json",
             "--at", "2023-09-18T15:03:30Z")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["claims"]["kind"] == "nitro" and out["checks"] == ["authenticity", "binding"]
    assert cli("verify", "--evidence", str(doc)).returncode == 3  # leaf certificate expired


def test_verify_snp_report_with_vcek_and_chain(vectors: Path) -> None:
    snp = vectors / "snp"
    result = cli("verify", "--evidence", str(snp / "attestation.bin"),
                 "--collateral", str(snp / "vcek.testcer"),
                 "--collateral", str(snp / "ask_ark_milan.pem"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    claims = json.loads(result.stdout)["claims"]
    assert claims["kind"] == "snp"
    assert claims["report_data"].startswith("0102030405000000")


def test_verify_garbage_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage" * 20)
    result = cli("verify", "--evidence", str(junk))
    assert result.returncode == 3 and "unrecognised evidence" in result.stderr


def test_port_in_use_is_one_clear_error(server: ServerProcess, tmp_path: Path) -> None:
    result = cli("serve", "--port", str(server.port), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{server.port}" in result.stderr
    assert "Traceback" not in result.stderr
