"""Receipts from a real server process (simulation TEE), verified offline from the file alone."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from blindinfer import Policy, connect, verify_receipt
from blindinfer._client.connection import Connection, Outputs
from blindinfer._receipts import parse_bundle, tensors_digest
from blindinfer._wire.tensors import bytes_array
from blindinfer.errors import (
    AttestationError,
    EvidenceError,
    InvalidInput,
    PolicyError,
    ReceiptError,
    ReceiptMismatch,
    ReceiptSignatureError,
)
from tests._server import ServerProcess, running_server

FEATURES = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]], np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("receipts")) as srv:
        yield srv


@pytest.fixture(scope="module")
def conn(server: ServerProcess) -> Iterator[Connection]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = connect(server.url, simulation_mode=True, token=server.owner_token)
    with c:
        yield c


@pytest.fixture(scope="module")
def policy(conn: Connection) -> Policy:
    """Pins this server's simulation measurement and signer key."""
    return Policy.from_claims(conn.claims)


@pytest.fixture(scope="module")
def signed(conn: Connection) -> Outputs:
    return conn.run_model("demo", FEATURES, receipt=True)


def json_infer(conn: Connection, **extra: object) -> dict:
    """POST a JSON (not binary) OIP request for the demo model; the parsed JSON reply."""
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    body = json.dumps({"inputs": [tensor], **extra}).encode()
    headers = {"content-type": "application/json"}
    reply = conn._request("POST", "/v2/models/demo/infer", body, headers)
    return dict(json.loads(reply.body))


def demo_sha256(conn: Connection) -> str:
    return str(conn.model_metadata("demo")["sha256"])


def test_receipt_from_a_real_server_verifies_offline_from_the_file_alone(
    conn: Connection, signed: Outputs, policy: Policy, tmp_path: Path
) -> None:
    path = tmp_path / "run.receipt"
    path.write_bytes(signed.receipt)
    verified = verify_receipt(
        path.read_bytes(),
        simulation=True,
        policy=policy,
        inputs={"features": FEATURES},
        outputs=dict(signed),
        model_sha256=demo_sha256(conn),
    )
    assert verified.checks == (
        "signature", "evidence", "binding", "policy", "model", "inputs", "outputs"
    )  # fmt: skip
    payload = verified.payload
    assert payload.tee == "simulation" and payload.request_id
    assert payload.model_sha256.hex() == demo_sha256(conn)
    assert payload.claims is not None
    assert payload.claims["measurements"] == dict(conn.claims.measurements)
    assert verified.verified_at == payload.time
    # The bundle carries the very certificate the SDK attested.
    assert parse_bundle(signed.receipt).certificate_der == conn.certificate_der


def test_no_receipt_unless_asked(conn: Connection) -> None:
    plain = conn.run_model("demo", FEATURES)
    assert type(plain) is dict and not hasattr(plain, "receipt")
    assert "parameters" not in json_infer(conn)


def test_json_request_receipt(conn: Connection, policy: Policy) -> None:
    """OIP JSON: ``"parameters": {"receipt": true}``; the receipt comes back base64 in the
    response's parameters, and the client-chosen id is the receipt's request id."""
    doc = json_infer(conn, id="req-42", parameters={"receipt": True})
    assert doc["id"] == "req-42"
    bundle = base64.b64decode(doc["parameters"]["receipt"])
    out = doc["outputs"][0]
    outputs = {out["name"]: np.array(out["data"], np.float32).reshape(out["shape"])}
    inputs = {"features": np.array([[1, 2, 3, 4]], np.float32)}
    verified = verify_receipt(
        bundle, simulation=True, policy=policy, inputs=inputs, outputs=outputs
    )
    assert verified.payload.request_id == "req-42"
    as_fp64 = {"features": inputs["features"].astype(np.float64)}  # same values, other type
    with pytest.raises(ReceiptMismatch, match="inputs"):
        verify_receipt(bundle, simulation=True, inputs=as_fp64)


def test_receipt_parameter_must_be_a_boolean(conn: Connection) -> None:
    with pytest.raises(InvalidInput, match="receipt"):
        json_infer(conn, parameters={"receipt": "yes"})


def test_every_flipped_byte_is_refused_with_a_named_reason(signed: Outputs, policy: Policy) -> None:
    bundle = signed.receipt
    verify_receipt(bundle, simulation=True, policy=policy)  # the untouched one passes
    step = max(1, len(bundle) // 97)
    positions = sorted(
        {*range(0, len(bundle), step), len(bundle) - 1, *range(len(bundle) - 70, len(bundle))}
    )
    reasons: set[str] = set()
    for pos in positions:
        for mask in (0x01, 0x80):
            tampered = bytearray(bundle)
            tampered[pos] ^= mask
            with pytest.raises(AttestationError) as info:
                verify_receipt(bytes(tampered), simulation=True, policy=policy)
            assert type(info.value).__name__ != "AttestationError"
            reasons.add(type(info.value).__name__)
    # The signature region, the signed payload and the carried parts each have their reason.
    assert {"ReceiptSignatureError", "ReceiptError", "ReceiptMismatch"} <= reasons


def test_truncated_or_extended_bundles_are_refused(signed: Outputs) -> None:
    for bad in (signed.receipt[:-1], signed.receipt + b"\x00", b"", b"\xa0"):
        with pytest.raises(ReceiptError):
            verify_receipt(bad, simulation=True)


def test_swapped_outputs_are_refused(conn: Connection, signed: Outputs) -> None:
    other = conn.run_model("demo", FEATURES[::-1].copy(), receipt=True)
    with pytest.raises(ReceiptMismatch, match="outputs"):
        verify_receipt(signed.receipt, simulation=True, outputs=dict(other))
    with pytest.raises(ReceiptMismatch, match="inputs"):
        verify_receipt(signed.receipt, simulation=True, inputs={"features": FEATURES[::-1]})
    # Another run's receipt does not vouch for this run's outputs either.
    with pytest.raises(ReceiptMismatch, match="outputs"):
        verify_receipt(other.receipt, simulation=True, outputs=dict(signed))


def test_another_models_sha256_is_refused(conn: Connection, signed: Outputs) -> None:
    with pytest.raises(ReceiptMismatch, match="model"):
        verify_receipt(signed.receipt, simulation=True, model_sha256="ab" * 32)
    with pytest.raises(ReceiptError, match="64 hex"):
        verify_receipt(signed.receipt, simulation=True, model_sha256="abc")
    verify_receipt(signed.receipt, simulation=True, model_sha256="sha256:" + demo_sha256(conn))


def test_time_outside_the_evidence_window_is_refused(signed: Outputs) -> None:
    """Simulation evidence has no collateral; its window opens when it was created: a time
    before that is refused by the evidence verifier (DCAP collateral windows:
    test_tee_kinds.py)."""
    created = parse_bundle(signed.receipt)
    at = verify_receipt(signed.receipt, simulation=True).claims.fields["created"]
    assert created.evidence.kind == "simulation"
    from datetime import datetime

    before = datetime.fromisoformat(str(at)) - timedelta(days=1)
    with pytest.raises(EvidenceError, match="after the verification time"):
        verify_receipt(signed.receipt, simulation=True, at=before)


def test_simulation_needs_the_opt_in_and_the_policy_is_judged(signed: Outputs) -> None:
    with pytest.raises(PolicyError, match="SIMULATION"):
        verify_receipt(signed.receipt)
    other = Policy.from_mapping({"simulation": {"measurement": "00" * 32}})
    with pytest.raises(PolicyError, match="measurement"):
        verify_receipt(signed.receipt, simulation=True, policy=other)
    with pytest.raises(PolicyError):  # a policy for another TEE kind only
        verify_receipt(signed.receipt, simulation=True, policy=Policy.from_mapping({"snp": {}}))


def test_receipts_for_pipeline_models_with_bytes_tensors(conn: Connection, policy: Policy) -> None:
    """A pipeline bundle (BYTES text in, embeddings out) gets receipts like an ONNX model."""
    from convert._driver import ensure

    info = conn.upload_model(ensure("minilm-embed"), name="minilm-receipts")
    texts = bytes_array(["a receipt for text", "ünïcode too"])
    out = conn.run_model(info.name, {"input": texts}, receipt=True)
    verified = verify_receipt(
        out.receipt,
        simulation=True,
        policy=policy,
        inputs={"input": texts},
        outputs=dict(out),
        model_sha256=info.sha256,
    )
    assert {"inputs", "outputs", "model"} <= set(verified.checks)
    with pytest.raises(ReceiptMismatch, match="inputs"):
        verify_receipt(
            out.receipt,
            simulation=True,
            inputs={"input": bytes_array(["another text", "ünïcode too"])},
        )


def test_canonical_tensor_digest() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = bytes_array([b"x", b"yz"])
    base = tensors_digest({"a": a, "b": b})
    assert tensors_digest({"b": b, "a": a}) == base  # names sorted, not insertion order
    assert tensors_digest({"a": a.astype(">f4"), "b": b}) == base  # little-endian on the wire
    assert tensors_digest({"a": np.asfortranarray(a), "b": b}) == base  # C order
    for changed in (
        {"a": a.reshape(3, 2), "b": b},  # shape
        {"a": a.astype(np.float64), "b": b},  # datatype
        {"a": a, "b": bytes_array([b"xy", b"z"])},  # BYTES element boundaries
        {"c": a, "b": b},  # name
        {"a": a},  # a tensor missing
    ):
        assert tensors_digest(changed) != base


def test_a_receipt_signed_by_another_key_is_refused(signed: Outputs) -> None:
    """Swap in a different (valid, self-signed) certificate: the signature no longer verifies."""
    from datetime import UTC, datetime

    import cbor2
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256()).public_bytes(Encoding.DER)
    )  # fmt: skip
    items = cbor2.loads(signed.receipt)
    items[2] = cert
    with pytest.raises(ReceiptSignatureError):
        verify_receipt(cbor2.dumps(items), simulation=True)
