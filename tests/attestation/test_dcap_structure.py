"""DCAP failures are classified by what blindinfer itself checked, never by dcap-qvl's wording.

Each case re-signs collateral under the test DCAP PKI (tests/e2e/_dcap_forge.py) so that only
the one property under test is wrong: a revoked certificate, a CRL or TCB info signed by another
key, TCB info for another platform or kind of quote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer.attestation import _dcap
from blindinfer.attestation import _sgx as sgx
from blindinfer.attestation import _tdx as tdx
from blindinfer.attestation._claims import Claims
from blindinfer.errors import AttestationError, CollateralError, EvidenceError
from tests.e2e._dcap_forge import DcapTestPki, Template, raw_sign

NOW = datetime(2026, 1, 1, tzinfo=UTC)
VERIFY: dict[str, Callable[..., Claims]] = {"sgx": sgx.verify, "tdx": tdx.verify}
FMSPC = {"sgx": "00a067110000", "tdx": "b0c06f000000"}


@pytest.fixture(scope="module", params=["sgx", "tdx"])
def pki(request: pytest.FixtureRequest, vectors: Path) -> DcapTestPki:
    kind = request.param
    quote, coll = vectors / kind / f"{kind}_quote", vectors / kind / f"{kind}_quote_collateral.json"
    return DcapTestPki(Template.load(quote, coll))


def _kind(pki: DcapTestPki) -> str:
    return "sgx" if pki.template.version == 3 else "tdx"


def _crl(
    issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: tuple[int, ...] = ()
) -> str:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - timedelta(days=1))
        .next_update(NOW + timedelta(days=30))
    )
    for serial in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(days=1))
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER).hex()


def _resign(doc: dict[str, Any], item: str, key: ec.EllipticCurvePrivateKey, **edits: Any) -> None:
    body = json.dumps(dict(json.loads(doc[item]), **edits), separators=(",", ":"))
    doc[item], doc[f"{item}_signature"] = body, raw_sign(key, body.encode()).hex()


def _verify(pki: DcapTestPki, doc: dict[str, Any] | None = None) -> Claims:
    coll = json.dumps(doc).encode() if doc is not None else pki.collateral(NOW)
    quote = pki.quote(bytes(64))
    return VERIFY[_kind(pki)](quote, {"dcap": coll}, at=NOW, roots=[pki.root_der])


def _doc(pki: DcapTestPki) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(pki.collateral(NOW))
    return doc


def test_untouched_test_collateral_verifies(pki: DcapTestPki) -> None:
    claims = _verify(pki)
    assert claims.fields["fmspc"] == FMSPC[_kind(pki)]


def test_real_pck_fmspc(vectors: Path) -> None:
    for kind, rel in (("sgx", "sgx/sgx_quote"), ("tdx", "tdx/tdx_quote")):
        layout = _dcap.parse_layout((vectors / rel).read_bytes())
        assert _dcap.pck_fmspc(layout.pck_chain[0], kind) == FMSPC[kind]
        # a certificate without the SGX extensions (the PCK CA) has no FMSPC: the quote's fault
        with pytest.raises(EvidenceError, match="no valid FMSPC"):
            _dcap.pck_fmspc(layout.pck_chain[1], kind)


def test_revoked_pck_certificate_is_evidence_error(pki: DcapTestPki) -> None:
    doc = _doc(pki)
    doc["pck_crl"] = _crl(pki.pck_ca, pki.pck_ca_key, (pki.pck.serial_number,))
    with pytest.raises(EvidenceError, match=r"PCK certificate .* is revoked by .*pck_crl"):
        _verify(pki, doc)


def test_revoked_pck_ca_is_evidence_error(pki: DcapTestPki) -> None:
    doc = _doc(pki)
    doc["root_ca_crl"] = _crl(pki.root, pki.root_key, (pki.pck_ca.serial_number,))
    with pytest.raises(EvidenceError, match=r"PCK CA certificate .* is revoked by .*root_ca_crl"):
        _verify(pki, doc)


def test_revoked_tcb_signer_is_collateral_error(pki: DcapTestPki) -> None:
    doc = _doc(pki)
    doc["root_ca_crl"] = _crl(pki.root, pki.root_key, (pki.tcb_signer.serial_number,))
    with pytest.raises(CollateralError, match=r"tcb_info_issuer_chain certificate .* revoked"):
        _verify(pki, doc)


def test_crls_signed_by_another_key_are_collateral_errors(pki: DcapTestPki) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    for key, issuer in (("pck_crl", pki.pck_ca), ("root_ca_crl", pki.root)):
        doc = _doc(pki)
        doc[key] = _crl(issuer, other)
        with pytest.raises(CollateralError, match=rf"{key} signature by .* does not verify"):
            _verify(pki, doc)
    doc = _doc(pki)
    doc["pck_crl"] = _crl(pki.root, pki.root_key)  # a CRL of the root, not of the PCK CA
    with pytest.raises(CollateralError, match=r"pck_crl is issued by .*Root CA.*, not by"):
        _verify(pki, doc)


def test_signed_json_by_another_key_is_collateral_error(pki: DcapTestPki) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    for item in ("tcb_info", "qe_identity"):
        doc = _doc(pki)
        _resign(doc, item, other)
        with pytest.raises(CollateralError, match=rf"{item} signature by .* does not verify"):
            _verify(pki, doc)
        doc = _doc(pki)
        doc[f"{item}_signature"] = doc[f"{item}_signature"][:-2]
        with pytest.raises(CollateralError, match=rf"{item} signature is 63 bytes"):
            _verify(pki, doc)


def test_tcb_info_for_another_platform_is_collateral_error(pki: DcapTestPki) -> None:
    doc = _doc(pki)
    _resign(doc, "tcb_info", pki.tcb_key, fmspc="00906ED50000")
    with pytest.raises(CollateralError, match=r"FMSPC 00906ed50000, but .* has FMSPC"):
        _verify(pki, doc)


def test_collateral_for_another_kind_is_collateral_error(pki: DcapTestPki) -> None:
    other_tcb = "TDX" if _kind(pki) == "sgx" else "SGX"
    doc = _doc(pki)
    _resign(doc, "tcb_info", pki.tcb_key, id=other_tcb)
    with pytest.raises(CollateralError, match=rf"tcb_info has id '{other_tcb}'"):
        _verify(pki, doc)
    other_qe = "TD_QE" if _kind(pki) == "sgx" else "QE"
    doc = _doc(pki)
    _resign(doc, "qe_identity", pki.tcb_key, id=other_qe)
    with pytest.raises(CollateralError, match=rf"qe_identity has id '{other_qe}'"):
        _verify(pki, doc)


def test_dcap_qvl_refusal_after_checks_is_evidence_error(pki: DcapTestPki) -> None:
    """Validly signed TCB info that dcap-qvl then refuses (no TCB level left): the quote's fault,
    although the message mentions TCB info."""
    doc = _doc(pki)
    _resign(doc, "tcb_info", pki.tcb_key, tcbLevels=[])
    with pytest.raises(AttestationError) as err:
        _verify(pki, doc)
    assert type(err.value) is EvidenceError


@pytest.mark.parametrize(
    "text",
    [
        "Verification failed: TCBInfo expired",
        "collateral crl revocation root ca fmspc mismatch",
        "No matching TCB level found",
    ],
)
def test_quote_failure_class_does_not_depend_on_text(text: str) -> None:
    err = _dcap._quote_failure(RuntimeError(text), "sgx")
    assert type(err) is EvidenceError
    assert "sgx quote" in str(err)
