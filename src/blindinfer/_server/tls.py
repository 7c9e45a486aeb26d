"""The server's TLS identity: a key pair made at start-up, inside the TEE, never written to disk.

The certificate is self-signed; its trust comes from the attestation evidence, which carries
sha256(certificate DER) in report_data. Its SAN lists ``blindai-srv`` (the name the BlindAI 0.6
client checks), ``localhost`` and any names the operator configures. With ``ratls`` it also
carries evidence of its own public key in the interoperable RA-TLS extension
(``attestation/_ratls.py``), so one handshake carries the proof.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blindinfer.attestation._claims import Evidence
from blindinfer.attestation._ratls import (
    OID,
    claims_buffer,
    encode_extension,
    report_data_for_claims,
)

BLINDAI_SAN = "blindai-srv"


@dataclass(frozen=True)
class TlsIdentity:
    certificate_der: bytes
    certificate_pem: bytes
    _key_pem: bytes  # in memory only

    def private_key_pem(self) -> bytes:
        """The key, for signing inside this process only (receipts); never written or sent."""
        return self._key_pem

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain_from_memory(ctx, self.certificate_pem, self._key_pem)
        return ctx


def _load_chain_from_memory(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # ssl.SSLContext only loads keys from paths. An anonymous memfd gives the key a path
    # (/proc/self/fd/N) without it ever reaching a file system: it lives in this process's
    # memory, inside the TEE, and disappears when closed.
    fd = os.memfd_create("blindinfer-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _san(hostnames: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys([BLINDAI_SAN, "localhost", "127.0.0.1", "::1", *hostnames]):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _ratls_extension(
    key: ec.EllipticCurvePrivateKey, evidence_for: Callable[[bytes], Evidence]
) -> x509.UnrecognizedExtension:
    """Evidence over sha256(claims buffer naming this key), as the RA-TLS extension."""
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    buffer = claims_buffer(spki)
    evidence = evidence_for(report_data_for_claims(buffer))
    return x509.UnrecognizedExtension(
        OID, encode_extension(evidence.kind, evidence.evidence, buffer)
    )


def generate_identity(
    hostnames: list[str] | None = None,
    days: int = 365,
    ratls: Callable[[bytes], Evidence] | None = None,
) -> TlsIdentity:
    """Fresh P-256 key and self-signed certificate (new on every start). ``ratls`` (the TEE
    backend's ``get_evidence``) puts evidence of the key into the certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BLINDAI_SAN)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(_san(hostnames or []), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if ratls is not None:
        # Not critical: OpenSSL and mbedTLS refuse certificates with unknown critical extensions.
        builder = builder.add_extension(_ratls_extension(key, ratls), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsIdentity(
        certificate_der=cert.public_bytes(serialization.Encoding.DER),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        _key_pem=key_pem,
    )
