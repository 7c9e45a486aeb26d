"""The link between evidence and the TLS connection: report_data <-> certificate.

Convention (BlindAI's, kept for wire compatibility): ``report_data[0:32] = sha256(cert DER)``;
``report_data[32:64]`` is ``sha256(client nonce)`` for fresh evidence, else zeros. Nitro carries
the same 64 bytes in ``user_data``; Nitro documents made by other tools bind the certificate's
SubjectPublicKeyInfo DER in ``user_data`` or ``public_key``, which is accepted too.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blindinfer.attestation._claims import Claims
from blindinfer.errors import BindingError

REPORT_DATA_SIZE = 64


def report_data_for(certificate_der: bytes, nonce: bytes | None = None) -> bytes:
    """The 64 report_data bytes a server asks its TEE to sign for this certificate."""
    tail = hashlib.sha256(nonce).digest() if nonce is not None else bytes(32)
    return hashlib.sha256(certificate_der).digest() + tail


def _spki(certificate_der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(certificate_der)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_binding(claims: Claims, certificate_der: bytes, nonce: bytes | None = None) -> None:
    """Raise BindingError unless the claims bind exactly this certificate (and nonce, if given)."""
    digest = hashlib.sha256(certificate_der).digest()
    rd = claims.report_data
    if len(rd) >= 32 and hmac.compare_digest(rd[:32], digest):
        if nonce is not None:
            want = hashlib.sha256(nonce).digest()
            if len(rd) < 64 or not hmac.compare_digest(rd[32:64], want):
                raise BindingError(
                    "the evidence is not fresh: report_data[32:64] does not carry the hash of "
                    "this client's nonce (a replayed quote?)"
                )
        return
    if claims.kind == "nitro" and nonce is None:
        spki = _spki(certificate_der)
        if rd == spki or (claims.public_key is not None and claims.public_key == spki):
            return
    raise BindingError(
        f"the TLS certificate (sha256 {digest.hex()}) is not the one the {claims.kind} evidence "
        f"binds (report_data starts with {rd[:32].hex() or 'nothing'}): the connection may be "
        "intercepted by a man in the middle, or reach a different server; no data was sent"
    )
