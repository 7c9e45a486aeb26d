"""X.509 helpers shared by the SEV-SNP, Nitro and DCAP verifiers.

Every function is pure: certificates in, the verification time passed explicitly, and a failure
raised as the caller's error class (EvidenceError or CollateralError) with a message that names
the certificate by its role (``label``, e.g. "SEV-SNP ASK") and its common name.

Signatures are checked by ``cryptography`` (``Certificate.verify_directly_issued_by``), which
also refuses a certificate whose unsigned outer ``signatureAlgorithm`` differs from the signed
TBSCertificate ``signature`` field (RFC 5280 section 4.1.1.2), so no byte of a certificate
escapes the signature check. Whole paths are validated with ``cryptography.x509.verification``
(RFC 5280 section 6) under a permissive extension policy: the vendor roots verified here (AWS
Nitro) are not WebPKI certificates.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Collection, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from blindinfer.errors import AttestationError

ErrorType = type[AttestationError]
CRL = x509.CertificateRevocationList

# What cryptography raises on a malformed or unverifiable certificate (besides InvalidSignature).
PARSE_ERRORS = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)


def load_certs(data: bytes, what: str, error: ErrorType) -> list[x509.Certificate]:
    """One DER certificate, or any number of PEM certificates (at least one).

    AMD VCEKs carry serial number 0, which ``cryptography`` warns about (RFC 5280 section 4.1.2.2
    wants a positive serial); the warning is silenced here only.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if bytes(data).lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificates(bytes(data))
            return [x509.load_der_x509_certificate(bytes(data))]
    except PARSE_ERRORS as exc:
        raise error(f"{what} is not a valid certificate: {exc}") from exc


def common_name(cert: x509.Certificate) -> str:
    """The subject CN (RFC 4514 string of the whole subject when there is none)."""
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()
    except PARSE_ERRORS:
        return "<unreadable subject>"


def check_validity(cert: x509.Certificate, at: datetime, label: str, error: ErrorType) -> None:
    """notBefore <= at <= notAfter (RFC 5280 section 4.1.2.5), both dates in the message."""
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not nb <= at <= na:
        raise error(
            f"{label} certificate {common_name(cert)!r} is not valid at {at.isoformat()}: "
            f"notBefore {nb.isoformat()}, notAfter {na.isoformat()}"
        )


def check_ca(cert: x509.Certificate, label: str, error: ErrorType) -> None:
    """basicConstraints cA = TRUE (RFC 5280 section 4.2.1.9): only a CA may sign certificates."""
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except (x509.ExtensionNotFound, *PARSE_ERRORS):
        bc = None
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise error(
            f"{label} certificate {common_name(cert)!r} signs others but is not a CA certificate"
        )


def verify_issued_by(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    label: str,
    error: ErrorType,
    *,
    algorithms: Collection[x509.ObjectIdentifier] | None = None,
    algorithm_name: str = "",
) -> None:
    """Name chaining, an allowed signature algorithm (one of ``algorithms``, together called
    ``algorithm_name`` in messages), and the signature by ``issuer``'s key."""
    name = common_name(cert)
    if cert.issuer != issuer.subject:
        raise error(
            f"{label} certificate {name!r} is issued by {cert.issuer.rfc4514_string()!r}, "
            f"not by {issuer.subject.rfc4514_string()!r}"
        )
    oid = cert.signature_algorithm_oid
    if algorithms is not None and oid not in algorithms:
        raise error(
            f"{label} certificate {name!r} is not {algorithm_name} signed (signatureAlgorithm "
            f"{oid.dotted_string})"
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise error(
            f"{label} certificate {name!r}: its signature by {common_name(issuer)!r} does not "
            f"verify (not signed by its issuer)"
        ) from None
    except PARSE_ERRORS as exc:  # e.g. inner/outer signatureAlgorithm mismatch, key type
        raise error(
            f"{label} certificate {name!r} cannot be verified with {common_name(issuer)!r}: {exc}"
        ) from exc


def check_chain(
    path: Sequence[tuple[x509.Certificate, str]],
    error: ErrorType,
    *,
    algorithms: Collection[x509.ObjectIdentifier] | None = None,
    algorithm_name: str = "",
) -> None:
    """``path`` = [(root, label), ..., (leaf, label)]: the root is self-signed, every other
    certificate is signed by the one before it, and every issuer is a CA."""
    for (issuer, issuer_label), (cert, label) in [(path[0], path[0]), *itertools.pairwise(path)]:
        if cert is not issuer:
            check_ca(issuer, issuer_label, error)
        verify_issued_by(
            cert, issuer, label, error, algorithms=algorithms, algorithm_name=algorithm_name
        )


# A CA must carry basicConstraints (cryptography requires the CA policy to say so); everything
# else is left to the explicit checks of each verifier.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, None
)


def validate_path(
    root: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    leaf: x509.Certificate,
    at: datetime,
    what: str,
    error: ErrorType,
) -> None:
    """RFC 5280 path validation at ``at`` anchored on ``root`` alone; the path that
    ``cryptography`` builds must use every intermediate, in order (no certificate ignored)."""
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(at)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    try:
        built = verifier.verify(leaf, list(intermediates)).chain
    except VerificationError as exc:
        raise error(f"{what} certificate path does not validate: {exc}") from exc
    if built != [leaf, *reversed(intermediates), root]:
        raise error(f"{what} certificate path is not the one its certificates list, in order")


def verify_raw_ecdsa_p256(
    signer: x509.Certificate, data: bytes, signature: bytes, what: str, error: ErrorType
) -> None:
    """``signature`` is raw ECDSA P-256 ``r || s`` (32 bytes each, big-endian) over SHA-256 of
    ``data``, by ``signer``'s key: the form Intel's PCS uses for TCB info and QE identity."""
    if len(signature) != 64:
        raise error(f"{what} signature is {len(signature)} bytes, not 64 (raw ECDSA P-256 r || s)")
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise error(f"{what} signer {common_name(signer)!r} does not have an ECDSA P-256 key")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise error(
            f"{what} signature by {common_name(signer)!r} does not verify (altered, or signed "
            f"by another key)"
        ) from None


def load_crl(der: bytes, issuer: x509.Certificate, what: str, error: ErrorType) -> CRL:
    """A DER CRL issued (name) and signed (key) by ``issuer`` (RFC 5280 section 6.3.3 (f), (g)).

    ``cryptography`` refuses a CRL whose unsigned outer signatureAlgorithm differs from the
    signed one (RFC 5280 section 5.1.1.2), so no byte of it escapes the signature check.
    """
    try:
        crl = x509.load_der_x509_crl(bytes(der))
        if crl.issuer != issuer.subject:
            raise error(
                f"{what} is issued by {crl.issuer.rfc4514_string()!r}, not by "
                f"{issuer.subject.rfc4514_string()!r}"
            )
        key = issuer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise error(f"{what} issuer {common_name(issuer)!r} does not have an ECDSA key")
        valid = crl.is_signature_valid(key)
    except PARSE_ERRORS as exc:
        raise error(f"{what} is not a valid CRL: {exc}") from exc
    if not valid:
        raise error(
            f"{what} signature by {common_name(issuer)!r} does not verify (altered, or signed "
            f"by another key)"
        )
    return crl


def der_elements(data: bytes) -> list[tuple[int, bytes]]:
    """Split DER content into its (tag, value) elements (ITU-T X.690 8.1: one-byte tags and
    definite lengths, which is all DER allows for the universal types read here)."""
    out, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER element")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                raise ValueError("unsupported DER length")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise ValueError("DER element overruns its container")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out
