"""Receipts for every TEE kind: the real server on each emulated device (test_ratls_backends.py's
servers: real-format SGX/TDX/SNP/Nitro evidence re-signed under roots generated in the test)
signs receipts that verify offline under those roots, and are refused under the pinned vendor
roots, under another measurement, and past the DCAP collateral's window."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from blindinfer import Policy, connect, verify_receipt
from blindinfer.errors import CollateralError, EvidenceError, PolicyError, ReceiptMismatch
from blindinfer.receipts import parse_bundle
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
