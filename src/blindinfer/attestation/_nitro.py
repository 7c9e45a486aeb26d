"""Verifier for AWS Nitro Enclaves attestation documents.

Format (AWS Nitro Enclaves User Guide, "Verifying the root of trust"): a COSE_Sign1 structure
(RFC 9052, section 4.2), tagged (CBOR tag 18) or not: ``[protected: bstr, unprotected: map,
payload: bstr, signature: bstr]``. The protected header must be ``{1: -35}`` (alg ES384,
RFC 9053 section 2.1). The signature is ECDSA P-384 / SHA-384 in the raw ``r || s`` form
(48 + 48 bytes) over the Sig_structure ``["Signature1", protected, b"", payload]``
(RFC 9052 section 4.4), made by the key of the payload's ``certificate``.

The payload is a CBOR map: ``module_id`` (tstr), ``digest`` ("SHA384"), ``timestamp`` (uint,
milliseconds since the epoch), ``pcrs`` (map uint -> bstr of 32/48/64 bytes), ``certificate``
(DER), ``cabundle`` (list of DER, root first), and the optional ``public_key``, ``user_data``
and ``nonce`` (bstr or null).

Trust: the pinned AWS Nitro Enclaves root G1 must equal ``cabundle[0]``; each following
``cabundle`` entry and then ``certificate`` must be signed by the one before it (ECDSA), name-
chained, valid at the verification time, with CA basic constraints on every issuer; then
``cryptography``'s RFC 5280 path validation must accept exactly that path. Its extension policy
is permissive (basicConstraints required on CAs, nothing else): the Nitro leaf has no
AuthorityKeyIdentifier, which the WebPKI defaults require. Revocation is not checked (AWS
publishes no CRL for this chain).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Annotated, Any, ClassVar

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from blindinfer.attestation import _x509
from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import TablePolicy, expect_hex_in, flag, hex_values
from blindinfer.errors import (
    AttestationError,
    CollateralError,
    EvidenceError,
    PolicyError,
)

KIND = "nitro"
COSE_SIGN1_TAG = 18  # RFC 9052, section 2
ALG_ES384 = -35  # RFC 9053, section 2.1
HEADER_ALG = 1
HEADER_CRIT = 2
SIG_BYTES = 96  # r || s, 48 bytes each (RFC 9053, section 2.1)
PCR_SIZES = (32, 48, 64)
# A document dated further in the future than this (relative to the verification time) is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Optional-field and certificate size limits from the AWS "Verifying the root of trust" page.
MAX_CERT_BYTES = 1024
MAX_OPTIONAL_BYTES = {"public_key": 1024, "user_data": 512, "nonce": 512}
DEBUG_PCRS = (0, 1, 2)
POLICY_PCRS = (0, 1, 2, 3, 4, 8)

_ECDSA_SIGNATURES = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)


# --- COSE_Sign1 --------------------------------------------------------------------------------


def _cbor_loads_exact(data: bytes) -> Any:
    """Decode one CBOR item that must span all of ``data`` (no trailing bytes)."""
    fp = io.BytesIO(data)
    item = cbor2.CBORDecoder(fp).decode()
    if fp.tell() != len(data):
        raise ValueError(f"{len(data) - fp.tell()} trailing bytes after the CBOR item")
    return item


@dataclass(frozen=True)
class CoseSign1:
    protected: bytes
    payload: bytes
    signature: bytes

    def sig_structure(self) -> bytes:
        """Sig_structure for COSE_Sign1 (RFC 9052, section 4.4), no external AAD."""
        return bytes(cbor2.dumps(["Signature1", self.protected, b"", self.payload]))


def parse_cose_sign1(data: bytes) -> CoseSign1:
    """Parse a (tagged or untagged) COSE_Sign1 and require the ES384 protected header."""
    try:
        doc = _cbor_loads_exact(bytes(data))
    except Exception as exc:
        raise EvidenceError(f"Nitro attestation document is not valid CBOR: {exc}") from exc
    if isinstance(doc, cbor2.CBORTag):
        if doc.tag != COSE_SIGN1_TAG:
            raise EvidenceError(f"Nitro attestation document has CBOR tag {doc.tag}, not 18")
        doc = doc.value
    # cbor2 decodes arrays inside a tag as tuples and maps as frozendicts.
    if not (isinstance(doc, list | tuple) and len(doc) == 4):
        raise EvidenceError("Nitro attestation document is not a COSE_Sign1 array of 4 items")
    protected, unprotected, payload, signature = doc
    if not (
        isinstance(protected, bytes)
        and isinstance(unprotected, Mapping)
        and isinstance(payload, bytes)
        and isinstance(signature, bytes)
    ):
        raise EvidenceError("Nitro COSE_Sign1 items have the wrong types")
    _check_protected_header(protected)
    if len(signature) != SIG_BYTES:
        raise EvidenceError(f"Nitro COSE signature must be {SIG_BYTES} bytes, got {len(signature)}")
    return CoseSign1(protected, payload, signature)


def _check_protected_header(protected: bytes) -> None:
    try:
        header = _cbor_loads_exact(protected)
    except Exception as exc:
        raise EvidenceError(f"Nitro COSE protected header is not valid CBOR: {exc}") from exc
    if not isinstance(header, Mapping) or header.get(HEADER_ALG) != ALG_ES384:
        raise EvidenceError(
            f"Nitro COSE protected header must be {{1: -35}} (ES384), got {header!r}"
        )
    if HEADER_CRIT in header:
        raise EvidenceError("Nitro COSE protected header has critical parameters; not supported")


def detect(data: bytes) -> bool:
    try:
        doc = cbor2.loads(data)
        if isinstance(doc, cbor2.CBORTag) and doc.tag == COSE_SIGN1_TAG:
            doc = doc.value
        if not (isinstance(doc, list | tuple) and len(doc) == 4 and isinstance(doc[0], bytes)):
            return False
        header = cbor2.loads(doc[0])
        return isinstance(header, Mapping) and header.get(HEADER_ALG) == ALG_ES384
    except Exception:
        return False


# --- payload -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """The attestation document payload (AWS "Attestation document specification")."""

    module_id: str
    digest: str
    timestamp: int
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: list[bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None


def _optional_bytes(payload: Mapping[str, Any], name: str) -> bytes | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) > MAX_OPTIONAL_BYTES[name]:
        raise EvidenceError(f"Nitro document field {name!r} must be bytes of at most 1024/512")
    return value


def _pcrs(raw: Any) -> dict[int, bytes]:
    if not isinstance(raw, Mapping) or not 1 <= len(raw) <= 32:
        raise EvidenceError("Nitro document field 'pcrs' must be a map of 1 to 32 entries")
    out: dict[int, bytes] = {}
    for index, value in raw.items():
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 32):
            raise EvidenceError(f"Nitro document has an invalid PCR index {index!r}")
        if not isinstance(value, bytes) or len(value) not in PCR_SIZES:
            raise EvidenceError(f"Nitro document PCR{index} is not 32, 48 or 64 bytes")
        out[index] = value
    for index in DEBUG_PCRS:
        if index not in out:
            raise EvidenceError(f"Nitro document has no PCR{index}")
    return out


def _cert_list(raw: Any) -> list[bytes]:
    if not isinstance(raw, list | tuple) or not raw:
        raise EvidenceError("Nitro document field 'cabundle' must be a non-empty list")
    for der in raw:
        if not isinstance(der, bytes) or not 1 <= len(der) <= MAX_CERT_BYTES:
            raise EvidenceError("Nitro document 'cabundle' entries must be DER certificates")
    return list(raw)


def parse_payload(payload: bytes) -> Document:
    try:
        doc = _cbor_loads_exact(payload)
    except Exception as exc:
        raise EvidenceError(f"Nitro document payload is not valid CBOR: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise EvidenceError("Nitro document payload is not a CBOR map")
    module_id, digest, timestamp = doc.get("module_id"), doc.get("digest"), doc.get("timestamp")
    certificate = doc.get("certificate")
    if not isinstance(module_id, str) or not module_id:
        raise EvidenceError("Nitro document field 'module_id' missing or not a string")
    if digest != "SHA384":
        raise EvidenceError(f"Nitro document digest must be 'SHA384', got {digest!r}")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise EvidenceError("Nitro document field 'timestamp' missing or not a positive integer")
    if not isinstance(certificate, bytes) or not 1 <= len(certificate) <= MAX_CERT_BYTES:
        raise EvidenceError("Nitro document field 'certificate' missing or not DER bytes")
    return Document(
        module_id=module_id,
        digest=digest,
        timestamp=timestamp,
        pcrs=_pcrs(doc.get("pcrs")),
        certificate=certificate,
        cabundle=_cert_list(doc.get("cabundle")),
        public_key=_optional_bytes(doc, "public_key"),
        user_data=_optional_bytes(doc, "user_data"),
        nonce=_optional_bytes(doc, "nonce"),
    )


# --- certificate path --------------------------------------------------------------------------


def _load_der(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except _x509.PARSE_ERRORS as exc:
        raise EvidenceError(f"Nitro {what} is not a valid DER certificate: {exc}") from exc


@cache
def _pinned_root() -> x509.Certificate:
    roots = resources.files("blindinfer.attestation").joinpath("roots")
    path = roots.joinpath("aws_nitro_root_g1.pem")
    return x509.load_pem_x509_certificate(path.read_bytes())


def _trusted_roots(roots: Sequence[bytes] | None) -> list[x509.Certificate]:
    if roots is None:
        return [_pinned_root()]
    out = []
    for der in roots:
        try:
            out.append(x509.load_der_x509_certificate(der))
        except _x509.PARSE_ERRORS as exc:
            raise CollateralError(f"trusted Nitro root is not a DER certificate: {exc}") from exc
    return out


def _anchor(first: bytes, trusted: list[x509.Certificate]) -> x509.Certificate:
    """The trusted root equal to ``cabundle[0]`` (same DER, or same subject and key)."""
    bundle_root = _load_der(first, "cabundle[0]")
    for root in trusted:
        if root.tbs_certificate_bytes == bundle_root.tbs_certificate_bytes or (
            root.subject == bundle_root.subject and root.public_key() == bundle_root.public_key()
        ):
            return root
    raise EvidenceError(
        f"Nitro cabundle[0] ({_x509.common_name(bundle_root)!r}) is not a trusted root "
        f"(trusted: {[_x509.common_name(r) for r in trusted]})"
    )


def verify_path(doc: Document, at: datetime, roots: Sequence[bytes] | None) -> x509.Certificate:
    """root == cabundle[0] -> cabundle[1:] -> certificate; return the verified leaf.

    Each link is checked first (ECDSA signature, name chaining, CA flag, validity at ``at``), so
    that a failure names the certificate and the dates; then the whole path is validated by
    ``cryptography.x509.verification`` (RFC 5280 section 6), which must build exactly this path.
    """
    root = _anchor(doc.cabundle[0], _trusted_roots(roots))
    chain = [_load_der(der, f"cabundle[{i}]") for i, der in enumerate(doc.cabundle[1:], 1)]
    leaf = _load_der(doc.certificate, "certificate")
    path = [root, *chain, leaf]
    _x509.check_chain(
        [(cert, "Nitro") for cert in path],
        EvidenceError,
        algorithms=_ECDSA_SIGNATURES,
        algorithm_name="ECDSA",
    )
    # Validity leaf first: the short-lived leaf (hours) is the usual culprit, name it.
    for cert in reversed(path):
        _x509.check_validity(cert, at, "Nitro", EvidenceError)
    _x509.validate_path(root, chain, leaf, at, "Nitro", EvidenceError)
    return leaf


def _check_cose_signature(cose: CoseSign1, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise EvidenceError("Nitro leaf certificate key is not ECDSA P-384")
    r = int.from_bytes(cose.signature[:48], "big")
    s = int.from_bytes(cose.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), cose.sig_structure(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError("Nitro COSE_Sign1 signature does not verify") from None


# --- verification ------------------------------------------------------------------------------


def is_debug(pcrs: Mapping[int, bytes]) -> bool:
    """Debug-mode enclaves report PCR0, PCR1, PCR2 (and PCR8 when present) as all zeros."""
    zero = [not any(pcrs[i]) for i in DEBUG_PCRS if i in pcrs]
    return len(zero) == len(DEBUG_PCRS) and all(zero) and not any(pcrs.get(8, b""))


def verify(
    evidence: bytes,
    collateral: Mapping[str, bytes],
    *,
    at: datetime,
    roots: Sequence[bytes] | None = None,
) -> Claims:
    """Check the COSE signature and the certificate path at ``at``; ``roots`` replaces G1."""
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    try:
        cose = parse_cose_sign1(evidence)
        doc = parse_payload(cose.payload)
        leaf = verify_path(doc, at, roots)
        _check_cose_signature(cose, leaf)
    except AttestationError:
        raise
    except Exception as exc:  # a malformed certificate can make cryptography raise anything
        raise EvidenceError(f"Nitro document is malformed: {type(exc).__name__}: {exc}") from exc
    created = datetime.fromtimestamp(doc.timestamp / 1000, UTC)
    if created - at > MAX_CLOCK_SKEW:
        raise EvidenceError(
            f"Nitro document timestamp {created.isoformat()} is after the verification time "
            f"{at.isoformat()}"
        )
    return Claims(
        kind=KIND,
        report_data=doc.user_data or b"",
        public_key=doc.public_key,
        measurements={f"pcr{i}": v.hex() for i, v in sorted(doc.pcrs.items())},
        debug=is_debug(doc.pcrs),
        fields={
            "module_id": doc.module_id,
            "timestamp": created.isoformat(),
            "digest": doc.digest,
            "nonce": doc.nonce.hex() if doc.nonce is not None else None,
        },
        verified_at=at,
    )


# --- policy ------------------------------------------------------------------------------------


# A PCR is a SHA-384 digest in practice, but the NSM API allows SHA-256/384/512 banks.
_PCR = hex_values(*sorted(PCR_SIZES))


@dataclass(frozen=True)
class KindPolicy(TablePolicy):
    """``[nitro]``: PCR0/1/2 (image, kernel, application), PCR3 (IAM role), PCR4 (instance),
    PCR8 (signing certificate), each hex or a list of hex; ``allow_debug`` (default false)
    accepts debug-mode enclaves, whose PCRs are all zero and prove nothing."""

    kind: ClassVar[str] = KIND
    pcr0: Annotated[list[str] | None, _PCR] = None
    pcr1: Annotated[list[str] | None, _PCR] = None
    pcr2: Annotated[list[str] | None, _PCR] = None
    pcr3: Annotated[list[str] | None, _PCR] = None
    pcr4: Annotated[list[str] | None, _PCR] = None
    pcr8: Annotated[list[str] | None, _PCR] = None
    allow_debug: Annotated[bool, flag] = False

    @classmethod
    def from_claims(cls, claims: Claims) -> KindPolicy:
        pcrs = {
            f"pcr{i}": [claims.measurements[f"pcr{i}"]]
            for i in POLICY_PCRS
            if f"pcr{i}" in claims.measurements
        }
        return cls(**pcrs, allow_debug=claims.debug)

    def check(self, claims: Claims) -> None:
        if claims.kind != KIND:
            raise PolicyError(f"expected nitro claims, got {claims.kind}")
        if claims.debug and not self.allow_debug:
            raise PolicyError(
                "policy mismatch on nitro.allow_debug: expected false, evidence comes from a "
                "debug-mode enclave (PCR0, PCR1 and PCR2 are all zero); set allow_debug = true "
                "only for development"
            )
        for i in POLICY_PCRS:
            name = f"pcr{i}"
            expect_hex_in(
                f"nitro.{name}", getattr(self, name), claims.measurements.get(name, "none")
            )
