"""The SGX quote collateral in the shape the 0.6.3 client's own DCAP verification reads."""

from __future__ import annotations

import json
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer.attestation._claims import Evidence
from blindinfer.errors import (
    AttestationError,
    InvalidInput,
)

# --- SGX quote collateral for the 0.6.3 client's own DCAP verification ----------------------------

COLLATERAL_FIELDS: Final = (
    "version", "pck_certificate", "pck_crl_issuer_chain", "pck_signing_chain", "root_ca_crl",
    "pck_crl", "tcb_info", "tcb_info_issuer_chain", "qe_identity", "qe_identity_issuer_chain",
)  # fmt: skip


def _crl_pem(value: object, field: str) -> str:
    """dcap-qvl keeps CRLs as hex DER; Intel's QVL (the client's verifier) reads PEM."""
    if not isinstance(value, str):
        raise InvalidInput(f"collateral field {field} is missing")
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text
    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(text))
    except ValueError as exc:
        raise InvalidInput(f"collateral field {field} is not a DER CRL: {exc}") from None
    return crl.public_bytes(Encoding.PEM).decode()


def _signed_json(body: object, signature: object, wrapper: str, field: str) -> str:
    """Rebuild Intel's signed document {"<wrapper>": body, "signature": hex}, keeping ``body``
    byte for byte (the signature covers exactly those bytes)."""
    if not isinstance(body, str) or not isinstance(signature, str):
        raise InvalidInput(f"collateral field {field} or its signature is missing")
    return f'{{"{wrapper}":{body},"signature":"{signature}"}}'


def blindai_collateral(evidence: Evidence) -> dict[str, object]:
    """Map an SGX Evidence (quote + dcap-qvl QuoteCollateralV3 JSON under ``collateral["dcap"]``)
    onto the fields of blindai 0.6.3's ``Collateral`` dataclass (all text but ``version``)."""
    from blindinfer.attestation._dcap import parse_layout

    raw = evidence.collateral.get("dcap")
    if raw is None:
        raise InvalidInput("the server has no DCAP collateral for its quote (no PCCS reachable?)")
    try:
        coll = json.loads(raw)
        chain = parse_layout(evidence.evidence).pck_chain
    except (ValueError, AttestationError) as exc:
        raise InvalidInput(f"the server's quote or collateral cannot be read: {exc}") from None
    if not isinstance(coll, dict):
        raise InvalidInput("the server's DCAP collateral is not a JSON object")
    pem = [c.public_bytes(Encoding.PEM).decode() for c in chain]
    return {
        "version": 3,  # sgx_ql_qve_collateral_t major version for DCAP quote v3
        "pck_certificate": pem[0],
        "pck_crl_issuer_chain": str(coll.get("pck_crl_issuer_chain", "")),
        "pck_signing_chain": "".join(pem[1:]),
        "root_ca_crl": _crl_pem(coll.get("root_ca_crl"), "root_ca_crl"),
        "pck_crl": _crl_pem(coll.get("pck_crl"), "pck_crl"),
        "tcb_info": _signed_json(
            coll.get("tcb_info"), coll.get("tcb_info_signature"), "tcbInfo", "tcb_info"
        ),
        "tcb_info_issuer_chain": str(coll.get("tcb_info_issuer_chain", "")),
        "qe_identity": _signed_json(
            coll.get("qe_identity"),
            coll.get("qe_identity_signature"),
            "enclaveIdentity",
            "qe_identity",
        ),
        "qe_identity_issuer_chain": str(coll.get("qe_identity_issuer_chain", "")),
    }
