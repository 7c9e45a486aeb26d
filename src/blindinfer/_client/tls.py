"""TLS contexts for the SDK and the set of certificates it has verified by attestation.

Behind an L4 (TCP passthrough) balancer every replica has its own TLS key and evidence, so the
handshake cannot pin one certificate: it completes with any certificate (``evidence_context``)
and the transport then refuses to send a request on a connection whose peer certificate is not
in the ``VerifiedCertificates`` set, attesting that very connection first when it is new.
``pinned_context`` remains for single-certificate callers (tests, tools)."""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterable
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


# Replicas a client can meet behind one balancer; past it the least recently seen certificate is
# forgotten (a connection to it is attested again, never trusted without evidence).
VERIFIED_MAX = 1024


class VerifiedCertificates:
    """A bounded, thread-safe set of peer certificates (by sha256 of their DER) that passed
    attestation. Only membership is kept: a certificate evicted or never added is attested
    again before any request goes out on a connection that shows it."""

    def __init__(self, initial: Iterable[bytes] = (), limit: int = VERIFIED_MAX) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        for der in initial:
            self.add(der)

    def add(self, certificate_der: bytes) -> None:
        digest = hashlib.sha256(certificate_der).digest()
        with self._lock:
            self._digests[digest] = None
            self._digests.move_to_end(digest)
            while len(self._digests) > self._limit:
                self._digests.popitem(last=False)

    def __contains__(self, certificate_der: object) -> bool:
        if not isinstance(certificate_der, bytes) or not certificate_der:
            return False
        digest = hashlib.sha256(certificate_der).digest()
        with self._lock:
            if digest not in self._digests:
                return False
            self._digests.move_to_end(digest)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._digests)

    def digests(self) -> frozenset[str]:
        """The sha256 (hex) of every certificate in the set."""
        with self._lock:
            return frozenset(d.hex() for d in self._digests)
