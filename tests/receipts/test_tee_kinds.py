"""Receipts for every TEE kind: the real server on each emulated device (test_ratls_backends.py's
servers: real-format SGX/TDX/SNP/Nitro evidence re-signed under roots generated in the test)
signs receipts that verify offline under those roots, and are refused under the pinned vendor
roots, under another measurement, and past the DCAP collateral's window."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from blindinfer import Policy, connect, verify_receipt
from blindinfer._receipts import parse_bundle
from blindinfer.errors import (
    AttestationError,
    CollateralError,
    EvidenceError,
    PolicyError,
    ReceiptMismatch,
)
from tests.e2e.test_ratls_backends import _server
from tests.e2e.test_tee_backends import MLP, mlp_feeds, reference


@pytest.mark.parametrize("kind", ["sgx", "tdx", "snp", "nitro"])
def test_receipts_verify_for_every_tee_kind(kind: str, tmp_path: Path, vectors: Path) -> None:
    with _server(kind, tmp_path, vectors) as (server, roots, policy_doc, field):
        conn = connect(server.url, policy_doc, token=server.owner_token, trust_roots=roots)
        with conn:
            info = conn.upload_model(MLP, name="mlp-receipts")
            feeds = mlp_feeds()
            out = conn.run_model(info.model_id, feeds, receipt=True)
            measurement = conn.claims.measurements[field]
    for name, value in reference(feeds).items():
        assert (out[name] == value).all()
    policy = Policy.from_mapping(policy_doc)
    verified = verify_receipt(
        out.receipt,
        policy=policy,
        roots=roots[kind],
        inputs=feeds,
        outputs=dict(out),
        model_sha256=info.sha256,
    )
    assert verified.claims.kind == kind and not verified.claims.insecure
    assert verified.claims.measurements[field] == measurement
    assert {"signature", "evidence", "binding", "policy", "inputs", "outputs"} <= set(
        verified.checks
    )
    bundle = parse_bundle(out.receipt)
    assert bundle.evidence.kind == kind
    assert ("collateral" in verified.checks) == bool(bundle.evidence.collateral)
    # The pinned vendor roots do not know the test PKI.
    with pytest.raises(EvidenceError):
        verify_receipt(out.receipt, policy=policy)
    other = Policy.from_mapping({kind: {field: "00" * (len(measurement) // 2)}})
    with pytest.raises(PolicyError, match=field):
        verify_receipt(out.receipt, policy=other, roots=roots[kind])
    with pytest.raises(ReceiptMismatch, match="outputs"):
        swapped = {k: v + 1 for k, v in out.items()}
        verify_receipt(out.receipt, policy=policy, roots=roots[kind], outputs=swapped)
    if kind in ("sgx", "tdx"):  # DCAP collateral (TCB info, QE identity, CRLs) expires
        later = verified.payload.time + timedelta(days=400)
        with pytest.raises(CollateralError):
            verify_receipt(out.receipt, policy=policy, roots=roots[kind], at=later)


def test_flipped_bytes_of_a_bundle_with_dcap_collateral_are_refused(
    tmp_path: Path, vectors: Path
) -> None:
    """The quote, the collateral JSON and the signature of a TDX receipt: any flip is refused."""
    with _server("tdx", tmp_path, vectors) as (server, roots, policy_doc, _):
        conn = connect(server.url, policy_doc, token=server.owner_token, trust_roots=roots)
        with conn:
            info = conn.upload_model(MLP, name="mlp-receipts")
            bundle = conn.run_model(info.model_id, mlp_feeds(), receipt=True).receipt
    policy = Policy.from_mapping(policy_doc)
    verify_receipt(bundle, policy=policy, roots=roots["tdx"])
    parts = parse_bundle(bundle)
    quote_at = bundle.index(parts.evidence.evidence)
    collateral_at = bundle.index(parts.evidence.collateral["dcap"])
    positions = [
        *range(quote_at, quote_at + len(parts.evidence.evidence), 257),
        *range(collateral_at, collateral_at + len(parts.evidence.collateral["dcap"]), 331),
        *range(len(bundle) - 64, len(bundle), 7),
    ]
    reasons: set[str] = set()
    for pos in positions:
        tampered = bytearray(bundle)
        tampered[pos] ^= 0x01
        with pytest.raises(AttestationError) as caught:
            verify_receipt(bytes(tampered), policy=policy, roots=roots["tdx"])
        reasons.add(type(caught.value).__name__)
    assert "AttestationError" not in reasons
    assert {"ReceiptMismatch", "ReceiptSignatureError"} <= reasons
