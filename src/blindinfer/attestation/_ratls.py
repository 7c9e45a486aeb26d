"""Evidence inside the TLS certificate: the interoperable RA-TLS form.

Layout (CCC Attestation SIG, "Interoperable RA-TLS X.509 Cert and Evidence Formats"):

- an X.509 extension, OID 2.23.133.5.4.9 (TCG DICE ``tcg-dice-conceptual-message-wrapper``),
  not critical (the note there: OpenSSL and mbedTLS refuse certificates with unknown critical
  extensions), whose value is a tagged CBOR array ``tag([evidence, claims-buffer])`` of two
  byte strings;
- ``claims-buffer``: a CBOR map ``{"pubkey-hash": bstr, ? "nonce": bstr}``, the ``pubkey-hash``
  value being the encoded CBOR array ``[hash-alg-id, hash-value]`` (CoSWID ``hash-entry``; IANA
  Named Information ids: sha-256 = 1, sha-384 = 7, sha-512 = 8) over the certificate's
  SubjectPublicKeyInfo DER;
- the TEE signed ``report_data = sha256(claims-buffer)`` followed by 32 zero bytes.

Tags: the RATS-TLS registry's ``0x1a7501`` (Intel TEE quote: SGX and TDX DCAP quotes) and
``0x1a7504`` (SEV-SNP report). Nitro and simulation evidence have no registered tag; blindinfer
uses ``0x1a75f1`` and ``0x1a75f0`` from the top of that range (generic verifiers will not know
them, ours do). The raw evidence is exactly what the kind's verifier takes; its collateral is
not in the certificate (the attestation endpoint or the client's own collateral source gives it).

Everything here is pure: bytes in, bytes or claims out; sizes are bounded before decoding.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blindinfer.attestation._claims import Claims, Evidence
from blindinfer.attestation._policy import Policy
from blindinfer.errors import BindingError, EvidenceError

OID = x509.ObjectIdentifier("2.23.133.5.4.9")
TAGS: Mapping[str, int] = {
    "sgx": 0x1A7501,
    "tdx": 0x1A7501,
    "snp": 0x1A7504,
    "simulation": 0x1A75F0,
    "nitro": 0x1A75F1,
}
PUBKEY_HASH = "pubkey-hash"
NONCE = "nonce"
# IANA Named Information hash algorithm registry ids every verifier must support.
HASH_ALGS: Mapping[int, str] = {1: "sha256", 7: "sha384", 8: "sha512"}
MAX_EXTENSION_SIZE = 256 * 1024  # a DCAP quote with its PCK chain is ~5-10 KB
MAX_CLAIMS_BUFFER = 4096


@dataclass(frozen=True)
class CertificateEvidence:
    """The parsed extension: the tag, the raw evidence and the claims buffer it binds."""

    tag: int
    evidence: bytes
    claims_buffer: bytes


def spki_der(certificate_der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(certificate_der)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims_buffer(spki: bytes, nonce: bytes | None = None) -> bytes:
    """The claims buffer for a public key (SubjectPublicKeyInfo DER), sha-256 hash-entry."""
    entry = cbor2.dumps([1, hashlib.sha256(spki).digest()])
    claims: dict[str, bytes] = {PUBKEY_HASH: entry}
    if nonce is not None:
        claims[NONCE] = nonce
    return cbor2.dumps(claims, canonical=True)


def report_data_for_claims(buffer: bytes) -> bytes:
    """The 64 report_data bytes the TEE signs for a claims buffer."""
    return hashlib.sha256(buffer).digest() + bytes(32)


def encode_extension(kind: str, evidence: bytes, buffer: bytes) -> bytes:
    """The extension value (DER of the extension's OCTET STRING content) for a kind's evidence."""
    try:
        tag = TAGS[kind]
    except KeyError:
        raise ValueError(f"no RA-TLS tag for evidence kind {kind!r}") from None
    return cbor2.dumps(cbor2.CBORTag(tag, [evidence, buffer]))


def extension_value(certificate_der: bytes) -> bytes | None:
    """The raw value of the RA-TLS extension, or None when the certificate has none."""
    try:
        cert = x509.load_der_x509_certificate(certificate_der)
    except ValueError as exc:
        raise EvidenceError(f"the certificate cannot be parsed: {exc}") from None
    try:
        ext = cert.extensions.get_extension_for_oid(OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceError("the RA-TLS extension has an unexpected type")
    return bytes(value.value)


def parse_extension(value: bytes) -> CertificateEvidence:
    """``tag([evidence, claims-buffer])``, bounded and checked."""
    if len(value) > MAX_EXTENSION_SIZE:
        raise EvidenceError(
            f"the RA-TLS extension is {len(value)} bytes; at most {MAX_EXTENSION_SIZE} accepted"
        )
    try:
        item = cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
        raise EvidenceError(f"the RA-TLS extension is not CBOR: {exc}") from None
    if not isinstance(item, cbor2.CBORTag) or item.tag not in TAGS.values():
        raise EvidenceError("the RA-TLS extension is not a tagged evidence array of a known kind")
    body = item.value
    if (
        not isinstance(body, list | tuple)
        or len(body) != 2
        or not all(isinstance(part, bytes) for part in body)
    ):
        raise EvidenceError("the RA-TLS extension must hold [evidence, claims-buffer] as bytes")
    if len(body[1]) > MAX_CLAIMS_BUFFER:
        raise EvidenceError("the RA-TLS claims buffer is too large")
    return CertificateEvidence(item.tag, body[0], body[1])


def kind_of(parsed: CertificateEvidence) -> str:
    """The evidence kind the tag names (SGX and TDX share a tag: the quote header tells)."""
    if parsed.tag == TAGS["sgx"]:
        # DCAP quote header (Intel SGX/TDX quote format, A.3): version u16, att key type u16,
        # tee_type u32 (0 = SGX, 0x81 = TDX) for versions 4 and 5; version 3 is SGX only.
        if len(parsed.evidence) < 8:
            raise EvidenceError("the RA-TLS Intel quote is too short")
        version = int.from_bytes(parsed.evidence[0:2], "little")
        tee_type = int.from_bytes(parsed.evidence[4:8], "little")
        return "tdx" if version >= 4 and tee_type == 0x81 else "sgx"
    return next(k for k, t in TAGS.items() if t == parsed.tag)


def _pubkey_hash(buffer: bytes) -> tuple[int, bytes, bytes | None]:
    try:
        claims = cbor2.loads(buffer)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
        raise EvidenceError(f"the RA-TLS claims buffer is not CBOR: {exc}") from None
    if not isinstance(claims, dict) or not isinstance(claims.get(PUBKEY_HASH), bytes):
        raise EvidenceError("the RA-TLS claims buffer has no 'pubkey-hash' byte string")
    try:
        entry = cbor2.loads(claims[PUBKEY_HASH])
    except (cbor2.CBORDecodeError, ValueError, RecursionError):
        entry = None
    if (
        not isinstance(entry, list | tuple)
        or len(entry) != 2
        or not isinstance(entry[0], int)
        or not isinstance(entry[1], bytes)
    ):
        raise EvidenceError("the RA-TLS 'pubkey-hash' is not a [hash-alg-id, hash-value] entry")
    nonce = claims.get(NONCE)
    if nonce is not None and not isinstance(nonce, bytes):
        raise EvidenceError("the RA-TLS 'nonce' claim is not a byte string")
    return entry[0], entry[1], nonce


def check_certificate_binding(
    claims: Claims, parsed: CertificateEvidence, certificate_der: bytes
) -> None:
    """The evidence signed sha256(claims-buffer), and the buffer names this certificate's key."""
    want_rd = hashlib.sha256(parsed.claims_buffer).digest()
    rd = claims.report_data
    if len(rd) < 32 or not hmac.compare_digest(rd[:32], want_rd):
        raise BindingError(
            "the certificate's RA-TLS evidence does not sign its claims buffer (report_data "
            "differs from sha256(claims-buffer)): the extension was assembled from other evidence"
        )
    alg, digest, _ = _pubkey_hash(parsed.claims_buffer)
    name = HASH_ALGS.get(alg)
    if name is None:
        raise BindingError(f"the RA-TLS 'pubkey-hash' uses hash algorithm {alg}, not 1, 7 or 8")
    spki = spki_der(certificate_der)
    if not hmac.compare_digest(hashlib.new(name, spki).digest(), digest):
        raise BindingError(
            "the certificate's RA-TLS evidence binds another public key than this certificate's: "
            "the certificate may be forged or intercepted; no data was sent"
        )


def verify_certificate(
    certificate_der: bytes,
    *,
    at: datetime,
    collateral: Mapping[str, bytes] | None = None,
    policy: Policy | None = None,
    roots: Sequence[bytes] | None = None,
) -> Claims:
    """Verify the evidence a certificate carries: authenticity (with ``collateral`` where the
    kind needs it), binding to this certificate's public key, and ``policy`` when given."""
    from blindinfer.attestation import verify_evidence

    value = extension_value(certificate_der)
    if value is None:
        raise EvidenceError("the certificate carries no RA-TLS evidence extension (2.23.133.5.4.9)")
    parsed = parse_extension(value)
    evidence = Evidence(kind_of(parsed), parsed.evidence, dict(collateral or {}))
    claims = verify_evidence(evidence, at=at, roots=roots)
    check_certificate_binding(claims, parsed, certificate_der)
    if policy is not None:
        policy.check(claims)
    return claims
