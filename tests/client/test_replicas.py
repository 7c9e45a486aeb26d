"""Per-connection verification in the transport (replicas behind a balancer), against scripted
loopback TLS servers: the verified-set check on every new connection, attestation on that very
connection before any request byte, bounded retries past a refusing replica, and the one retry
of an idempotent request whose connection is lost mid-flight."""

from __future__ import annotations

import hashlib
import threading

import pytest

from blindinfer._client.tls import VerifiedCertificates, evidence_context
from blindinfer._client.transport import Exchange, Transport
from blindinfer.errors import (
    BindingError,
    BlindInferError,
    ConnectError,
    EvidenceError,
    PolicyError,
)
from tests.client.test_transport import OK, Late, Scripted, scripted, serve

__all__ = ["serve"]  # the fixture, re-used from the transport tests

EVIDENCE = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nevidence"


class Attestor:
    """Records what it was asked and accepts (adds the certificate) or raises."""

    def __init__(self, verified: VerifiedCertificates, error: Exception | None = None) -> None:
        self.verified = verified
        self.error = error
        self.calls: list[tuple[bytes, bytes]] = []  # (peer certificate, evidence body)
        self.lie = False  # accept without adding the certificate to the set

    def __call__(self, exchange: Exchange, peer_der: bytes) -> None:
        reply = exchange("/blindinfer/v1/attestation?nonce=00", 1 << 20)
        self.calls.append((peer_der, reply.body))
        assert reply.peer_certificate == peer_der
        if self.error is not None:
            raise self.error
        if not self.lie:
            self.verified.add(peer_der)


def transport(
    server: Scripted,
    verified: VerifiedCertificates,
    attestor: Attestor | None,
    attempts: int = 1,
) -> Transport:
    return Transport(
        f"https://127.0.0.1:{server.port}",
        evidence_context(),
        5,
        verified=verified,
        attestor=attestor,
        attest_attempts=attempts,
    )


# --- the verified set --------------------------------------------------------------------------


def test_verified_set_is_bounded_and_keyed_by_der_digest() -> None:
    s = VerifiedCertificates([b"a"], limit=2)
    assert b"a" in s and b"b" not in s and "a" not in s and b"" not in s
    s.add(b"b")
    assert b"a" in s  # touching "a" makes "b" the least recently seen
    s.add(b"c")
    assert len(s) == 2 and b"b" not in s and b"a" in s and b"c" in s
    assert s.digests() == {hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"c").hexdigest()}
    with pytest.raises(ValueError):
        VerifiedCertificates(limit=0)


def test_verified_set_is_thread_safe() -> None:
    s = VerifiedCertificates(limit=50)

    def work(i: int) -> None:
        for j in range(200):
            s.add(f"{i}-{j}".encode())
            assert f"{i}-{j}".encode() in s or len(s) == 50

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(s) == 50


# --- attestation of new connections -----------------------------------------------------------


def test_known_certificate_needs_no_attestation(serve: list[Scripted]) -> None:
    server = scripted(serve, OK)
    verified = VerifiedCertificates([server.identity.certificate_der])
    attestor = Attestor(verified)
    t = transport(server, verified, attestor)
    assert t.request("GET", "/x").body == b"ok"
    assert attestor.calls == [] and len(server.requests) == 1
    t.close()


def test_unknown_certificate_is_attested_on_that_connection_first(serve: list[Scripted]) -> None:
    server = scripted(serve, EVIDENCE, OK, OK)
    verified = VerifiedCertificates()
    attestor = Attestor(verified)
    t = transport(server, verified, attestor)
    assert t.request("GET", "/x", headers={"authorization": "Bearer s"}).body == b"ok"
    assert attestor.calls == [(server.identity.certificate_der, b"evidence")]
    # One connection: the attestation request on it, then the real one.
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /blindinfer/v1/attestation?nonce=00 ")
    assert b"authorization" not in server.requests[0].lower()
    assert server.requests[1].startswith(b"GET /x ")
    # A later connection to the same certificate is not attested again.
    t.close()
    t2 = transport(server, verified, attestor)
    assert t2.request("GET", "/y").body == b"ok"
    assert len(attestor.calls) == 1 and server.connections == 2
    t2.close()


@pytest.mark.parametrize("error", [PolicyError("p"), BindingError("b"), EvidenceError("e")])
def test_refused_replica_gets_no_request_byte(serve: list[Scripted], error: Exception) -> None:
    server = scripted(serve, EVIDENCE, EVIDENCE, EVIDENCE, OK)
    verified = VerifiedCertificates()
    attestor = Attestor(verified, error)
    t = transport(server, verified, attestor, attempts=3)
    with pytest.raises(type(error)):
        t.request("POST", "/infer", b"SECRET-INPUT", {"authorization": "Bearer s"})
    # Three connections, each closed after its attestation request: nothing else was sent.
    assert server.connections == 3 and t.refused == 3 and len(attestor.calls) == 3
    assert all(r.startswith(b"GET /blindinfer/v1/attestation") for r in server.requests)
    assert not any(b"SECRET" in r or b"Bearer" in r for r in server.requests)
    assert len(verified) == 0
    t.close()


def test_refusal_then_good_replica_succeeds(serve: list[Scripted]) -> None:
    server = scripted(serve, EVIDENCE, EVIDENCE, OK)
    verified = VerifiedCertificates()
    outcomes = iter([PolicyError("rogue"), None])

    def attestor(exchange: Exchange, peer: bytes) -> None:
        exchange("/blindinfer/v1/attestation?nonce=00", 1 << 20)
        error = next(outcomes)
        if error is not None:
            raise error
        verified.add(peer)

    t = transport(server, verified, None, attempts=2)
    t._attestor = attestor
    assert t.request("POST", "/infer", b"in").body == b"ok"
    assert t.refused == 1 and server.connections == 2
    assert [r.split(b" ")[0] for r in server.requests] == [b"GET", b"GET", b"POST"]
    t.close()


def test_attestor_that_does_not_add_the_certificate_cannot_unlock(serve: list[Scripted]) -> None:
    server = scripted(serve, EVIDENCE, OK)
    verified = VerifiedCertificates()
    attestor = Attestor(verified)
    attestor.lie = True
    t = transport(server, verified, attestor)
    with pytest.raises(BindingError, match="not verified"):
        t.request("POST", "/infer", b"SECRET")
    assert len(server.requests) == 1 and b"SECRET" not in server.requests[0]
    t.close()


def test_unknown_certificate_without_attestor_is_refused(serve: list[Scripted]) -> None:
    server = scripted(serve, OK)
    t = transport(server, VerifiedCertificates([b"another certificate"]), None)
    with pytest.raises(BindingError, match="man in the middle"):
        t.request("POST", "/infer", b"SECRET")
    assert server.requests == []
    t.close()


def test_connection_cut_during_attestation_sends_nothing_more(serve: list[Scripted]) -> None:
    server = scripted(serve, Late(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nev", b"", 0, True))
    verified = VerifiedCertificates()
    t = transport(server, verified, Attestor(verified))
    with pytest.raises(ConnectError, match="closed the connection"):
        t.request("POST", "/infer", b"SECRET")
    assert len(server.requests) == 1
    t.close()


# --- idempotent retry of a request whose connection is lost ------------------------------------

CUT = Late(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok", b"", 0, close=True)


def test_idempotent_request_lost_mid_reply_is_retried_once(serve: list[Scripted]) -> None:
    server = scripted(serve, CUT, OK)
    t = server.transport()
    assert t.request("POST", "/infer", b"in", idempotent=True).body == b"ok"
    assert server.connections == 2 and len(server.requests) == 2
    t.close()


def test_idempotent_request_is_retried_only_once(serve: list[Scripted]) -> None:
    server = scripted(serve, CUT, CUT, OK)
    t = server.transport()
    with pytest.raises(BlindInferError, match="before a full reply"):
        t.request("POST", "/infer", b"in", idempotent=True)
    assert len(server.requests) == 2
    t.close()


def test_non_idempotent_request_lost_mid_reply_is_not_sent_again(serve: list[Scripted]) -> None:
    server = scripted(serve, CUT, OK)
    t = server.transport()
    with pytest.raises(BlindInferError, match="before a full reply"):
        t.request("POST", "/upload", b"model")
    assert len(server.requests) == 1
    t.close()


def test_idempotent_request_reset_before_reply_is_retried(serve: list[Scripted]) -> None:
    server = scripted(serve, b"", OK)  # CLOSE: the connection dies with the request in flight
    t = server.transport()
    assert t.request("GET", "/v2/models/x", idempotent=True).body == b"ok"
    assert len(server.requests) == 2
    t.close()


def test_non_idempotent_on_new_connection_closed_is_not_retried(serve: list[Scripted]) -> None:
    server = scripted(serve, b"", OK)
    t = server.transport()
    with pytest.raises(BlindInferError, match="closed the connection"):
        t.request("DELETE", "/blindinfer/v1/models/x")
    assert len(server.requests) == 1
    t.close()
