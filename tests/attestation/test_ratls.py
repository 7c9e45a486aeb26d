"""The interoperable RA-TLS certificate extension (attestation/_ratls.py): its byte layout, and
every way a certificate's embedded evidence can fail to bind its key."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blindinfer._server.tls import generate_identity
from blindinfer._tee.simulation import SimulationBackend, code_measurement
from blindinfer.attestation import Policy, verify_certificate
from blindinfer.attestation._ratls import (
    OID,
    TAGS,
    claims_buffer,
    encode_extension,
    kind_of,
    parse_extension,
    report_data_for_claims,
    spki_der,
)
from blindinfer.errors import BindingError, EvidenceError, PolicyError

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def backend() -> SimulationBackend:
    return SimulationBackend(bytes(range(32)))


def _cert(key: ec.EllipticCurvePrivateKey, extension: bytes | None) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if extension is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(OID, extension), False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ratls_cert(
    backend: SimulationBackend,
    key: ec.EllipticCurvePrivateKey,
    *,
    bound_spki: bytes | None = None,
    signed_buffer: bytes | None = None,
) -> bytes:
    """A certificate for ``key`` whose extension binds ``bound_spki`` (default: its own key);
    ``signed_buffer`` makes the TEE sign another claims buffer than the one carried."""
    buffer = claims_buffer(bound_spki or _spki(key))
    evidence = backend.get_evidence(report_data_for_claims(signed_buffer or buffer))
    return _cert(key, encode_extension("simulation", evidence.evidence, buffer))


def test_the_servers_certificate_carries_verifiable_evidence_of_its_own_key(
    backend: SimulationBackend,
) -> None:
    identity = generate_identity(["example.test"], ratls=backend.get_evidence)
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    ext = cert.extensions.get_extension_for_oid(OID)
    assert not ext.critical  # OpenSSL/mbedTLS refuse unknown critical extensions
    claims = verify_certificate(identity.certificate_der, at=NOW)
    assert claims.kind == "simulation"
    assert claims.measurements["measurement"] == code_measurement().hex()
    parsed = parse_extension(ext.value.value)
    assert claims.report_data == hashlib.sha256(parsed.claims_buffer).digest() + bytes(32)
    pinned = Policy.from_mapping({"simulation": {"measurement": code_measurement().hex()}})
    verify_certificate(identity.certificate_der, at=NOW, policy=pinned)


def test_layout_follows_the_interoperable_ra_tls_document(backend: SimulationBackend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = _ratls_cert(backend, key)
    value = x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(OID).value.value
    item = cbor2.loads(value)
    assert isinstance(item, cbor2.CBORTag) and item.tag == TAGS["simulation"]
    evidence, buffer = item.value
    assert isinstance(evidence, bytes)
    claims = cbor2.loads(buffer)
    assert set(claims) == {"pubkey-hash"}
    alg, digest = cbor2.loads(claims["pubkey-hash"])  # hash-entry [alg-id, value]
    assert (
        alg == 1
        and digest == hashlib.sha256(_spki(key)).digest() == hashlib.sha256(spki_der(der)).digest()
    )
    with_nonce = cbor2.loads(claims_buffer(_spki(key), b"n0nce"))
    assert with_nonce["nonce"] == b"n0nce"


def test_an_extension_binding_another_key_is_refused(backend: SimulationBackend) -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    der = _ratls_cert(backend, key, bound_spki=_spki(other))
    with pytest.raises(BindingError, match="binds another public key"):
        verify_certificate(der, at=NOW)


def test_evidence_over_another_claims_buffer_is_refused(backend: SimulationBackend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = _ratls_cert(backend, key, signed_buffer=claims_buffer(_spki(key), b"other"))
    with pytest.raises(BindingError, match="does not sign its claims buffer"):
        verify_certificate(der, at=NOW)


def test_tampered_evidence_is_refused(backend: SimulationBackend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    buffer = claims_buffer(_spki(key))
    evidence = bytearray(backend.get_evidence(report_data_for_claims(buffer)).evidence)
    evidence[len(evidence) // 2] ^= 0x01
    der = _cert(key, encode_extension("simulation", bytes(evidence), buffer))
    with pytest.raises(EvidenceError):
        verify_certificate(der, at=NOW)


def test_policy_is_judged_on_the_certificates_evidence(backend: SimulationBackend) -> None:
    der = _ratls_cert(backend, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(PolicyError, match="measurement"):
        verify_certificate(
            der, at=NOW, policy=Policy.from_mapping({"simulation": {"measurement": "00" * 32}})
        )


def test_sha384_and_sha512_hash_entries_verify_and_unknown_ids_do_not(
    backend: SimulationBackend,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for alg, name, ok in ((7, "sha384", True), (8, "sha512", True), (99, "sha256", False)):
        entry = cbor2.dumps([alg, hashlib.new(name, _spki(key)).digest()])
        buffer = cbor2.dumps({"pubkey-hash": entry})
        evidence = backend.get_evidence(report_data_for_claims(buffer)).evidence
        der = _cert(key, encode_extension("simulation", evidence, buffer))
        if ok:
            verify_certificate(der, at=NOW)
        else:
            with pytest.raises(BindingError, match="hash algorithm 99"):
                verify_certificate(der, at=NOW)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\xff\x00", "not CBOR"),
        (cbor2.dumps([b"a", b"b"]), "not a tagged evidence array"),
        (cbor2.dumps(cbor2.CBORTag(12345, [b"a", b"b"])), "not a tagged evidence array"),
        (cbor2.dumps(cbor2.CBORTag(TAGS["snp"], [b"a"])), r"\[evidence, claims-buffer\]"),
        (cbor2.dumps(cbor2.CBORTag(TAGS["snp"], ["a", b"b"])), r"\[evidence, claims-buffer\]"),
        (b"\x00" * (256 * 1024 + 1), "at most"),
    ],
)
def test_malformed_extensions_are_refused(value: bytes, message: str) -> None:
    der = _cert(ec.generate_private_key(ec.SECP256R1()), value)
    with pytest.raises(EvidenceError, match=message):
        verify_certificate(der, at=NOW)


def test_malformed_claims_buffers_are_refused(backend: SimulationBackend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for buffer, message in (
        (cbor2.dumps({"nonce": b"x"}), "no 'pubkey-hash'"),
        (cbor2.dumps({"pubkey-hash": b"\x01"}), "hash-alg-id, hash-value"),
        (cbor2.dumps({"pubkey-hash": cbor2.dumps([1, b"x"]), "nonce": 5}), "'nonce'"),
    ):
        evidence = backend.get_evidence(report_data_for_claims(buffer)).evidence
        der = _cert(key, encode_extension("simulation", evidence, buffer))
        with pytest.raises(EvidenceError, match=message):
            verify_certificate(der, at=NOW)


def test_a_certificate_without_the_extension_is_refused() -> None:
    der = _cert(ec.generate_private_key(ec.SECP256R1()), None)
    with pytest.raises(EvidenceError, match="no RA-TLS evidence extension"):
        verify_certificate(der, at=NOW)


def test_intel_quotes_share_a_tag_and_the_header_tells_sgx_from_tdx(vectors: Path) -> None:
    for kind in ("sgx", "tdx"):
        quote = (vectors / kind / f"{kind}_quote").read_bytes()
        parsed = parse_extension(encode_extension(kind, quote, b""))
        assert parsed.tag == 0x1A7501 and kind_of(parsed) == kind
    snp = (vectors / "snp" / "attestation.bin").read_bytes()
    assert kind_of(parse_extension(encode_extension("snp", snp, b""))) == "snp"


def test_the_sdk_refuses_a_certificate_whose_evidence_disagrees(
    backend: SimulationBackend,
) -> None:
    """connect()'s check: endpoint evidence verified for this certificate, then the certificate's
    own evidence must bind its key and come from the same TEE and code."""
    from blindinfer._client.connection import VerifyOptions, _check_certificate_evidence
    from blindinfer.attestation import verify_evidence
    from blindinfer.attestation._binding import report_data_for

    opts = VerifyOptions(policy=None, simulation_mode=True)
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    for der, message in (
        (_ratls_cert(backend, key, bound_spki=_spki(other)), "binds another public key"),
        (
            _ratls_cert(SimulationBackend(bytes(32), measurement=b"\x07" * 32), key),
            "another TEE or other code",
        ),
    ):
        evidence = backend.get_evidence(report_data_for(der))
        claims = verify_evidence(evidence, at=NOW, certificate_der=der)
        with pytest.raises(BindingError, match=message):
            _check_certificate_evidence(opts, evidence, der, claims)
    good = _ratls_cert(backend, key)
    evidence = backend.get_evidence(report_data_for(good))
    claims = verify_evidence(evidence, at=NOW, certificate_der=good)
    _check_certificate_evidence(opts, evidence, good, claims)
