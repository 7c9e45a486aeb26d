"""TLS contexts for the SDK: one to fetch evidence, one pinned to the attested certificate."""

from __future__ import annotations

import hashlib
import hmac
import ssl
from typing import Any

from blindinfer.errors import BindingError


def evidence_context() -> ssl.SSLContext:
    """For the attestation request only: no CA can vouch for a TEE's self-signed certificate,
    so the handshake accepts any certificate and the evidence decides. Nothing secret is sent
    on this connection; the certificate it saw is checked against the evidence's binding."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class PinnedContext(ssl.SSLContext):
    """A client context that completes a handshake only with the one attested certificate.

    Two independent checks run in every handshake the connection makes, so a request can never
    leave on a connection to anything else (another replica, a man in the middle):
    1. OpenSSL verifies the peer against a trust store holding only that certificate;
    2. after the handshake, the peer's DER must equal the attested DER byte for byte
       (before the socket is handed back to the HTTP client, so before any request byte).
    The host name is not checked: the identity is the attested key, not a DNS name.
    """

    pinned_der: bytes

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        try:
            check_peer(sock.getpeercert(binary_form=True), self.pinned_der)
        except BindingError:
            sock.close()
            raise
        return sock


def check_peer(peer_der: bytes | None, pinned_der: bytes) -> None:
    if peer_der is None or not hmac.compare_digest(peer_der, pinned_der):
        got = hashlib.sha256(peer_der).hexdigest() if peer_der else "none"
        raise BindingError(
            f"the server presented a certificate (sha256 {got}) other than the attested one "
            f"(sha256 {hashlib.sha256(pinned_der).hexdigest()}): possible man in the middle; "
            "no data was sent"
        )


def pinned_context(certificate_der: bytes) -> PinnedContext:
    ctx = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=certificate_der)
    ctx.pinned_der = certificate_der
    return ctx
