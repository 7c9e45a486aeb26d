"""The shared certificate helpers (attestation/_x509.py), on certificates made in the test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from blindinfer.attestation import _snp as snp
from blindinfer.attestation import _x509
from blindinfer.errors import CollateralError, EvidenceError

START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 1, tzinfo=UTC)
ECDSA = frozenset({SignatureAlgorithmOID.ECDSA_WITH_SHA384})


def _name(cn: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "blindinfer test")]
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _cert(
    subject: str | None,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    ca: bool | None = True,
    not_after: datetime = END,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer if issuer_key is not None else subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(issuer_key or key, hashes.SHA384())


@pytest.fixture(scope="module")
def keys() -> list[ec.EllipticCurvePrivateKey]:
    return [ec.generate_private_key(ec.SECP384R1()) for _ in range(4)]


@pytest.fixture(scope="module")
def path(keys: list[ec.EllipticCurvePrivateKey]) -> list[x509.Certificate]:
    root = _cert("root", keys[0])
    inter = _cert("inter", keys[1], issuer="root", issuer_key=keys[0])
    leaf = _cert("leaf", keys[2], issuer="inter", issuer_key=keys[1], ca=False)
    return [root, inter, leaf]


def test_common_name_falls_back_to_the_whole_subject(
    keys: list[ec.EllipticCurvePrivateKey],
) -> None:
    assert _x509.common_name(_cert("root", keys[0])) == "root"
    assert _x509.common_name(_cert(None, keys[0])) == "O=blindinfer test"


def test_load_certs_der_pem_and_garbage(path: list[x509.Certificate]) -> None:
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in path)
    assert _x509.load_certs(pem, "chain", CollateralError) == path
    assert _x509.load_certs(path[0].public_bytes(Encoding.DER), "root", EvidenceError) == path[:1]
    with pytest.raises(CollateralError, match=r"^chain is not a valid certificate"):
        _x509.load_certs(b"junk", "chain", CollateralError)


def test_validity_window_is_inclusive_and_named(path: list[x509.Certificate]) -> None:
    leaf = path[2]
    _x509.check_validity(leaf, START, "Test", EvidenceError)
    _x509.check_validity(leaf, END, "Test", EvidenceError)
    late = END + timedelta(seconds=1)
    with pytest.raises(CollateralError) as err:
        _x509.check_validity(leaf, late, "Test", CollateralError)
    assert str(err.value) == (
        f"Test certificate 'leaf' is not valid at {late.isoformat()}: "
        f"notBefore {START.isoformat()}, notAfter {END.isoformat()}"
    )
    with pytest.raises(EvidenceError, match="not valid at"):
        _x509.check_validity(leaf, START - timedelta(seconds=1), "Test", EvidenceError)


@pytest.mark.parametrize("ca", [False, None])
def test_check_ca_needs_basic_constraints_ca(
    keys: list[ec.EllipticCurvePrivateKey], ca: bool | None
) -> None:
    with pytest.raises(EvidenceError, match="'x' signs others but is not a CA certificate"):
        _x509.check_ca(_cert("x", keys[0], ca=ca), "Test", EvidenceError)
    _x509.check_ca(_cert("x", keys[0]), "Test", EvidenceError)


def test_check_chain_accepts_the_path(path: list[x509.Certificate]) -> None:
    _x509.check_chain([(c, "Test") for c in path], EvidenceError, algorithms=ECDSA)


def test_check_chain_refuses_a_non_ca_issuer(
    path: list[x509.Certificate], keys: list[ec.EllipticCurvePrivateKey]
) -> None:
    inter = _cert("inter", keys[1], issuer="root", issuer_key=keys[0], ca=False)
    leaf = path[2]
    with pytest.raises(EvidenceError, match="'inter' signs others but is not a CA"):
        _x509.check_chain([(path[0], "R"), (inter, "I"), (leaf, "L")], EvidenceError)


def test_verify_issued_by_names_the_failure(
    path: list[x509.Certificate], keys: list[ec.EllipticCurvePrivateKey]
) -> None:
    root, inter, leaf = path
    with pytest.raises(
        EvidenceError, match="'leaf' is issued by 'CN=inter,O=blindinfer test', not by 'CN=root"
    ):
        _x509.verify_issued_by(leaf, root, "Test", EvidenceError)
    impostor = _cert("inter", keys[3])  # same name, another key
    with pytest.raises(EvidenceError, match="its signature by 'inter' does not verify"):
        _x509.verify_issued_by(leaf, impostor, "Test", EvidenceError)
    sha256 = frozenset({SignatureAlgorithmOID.ECDSA_WITH_SHA256})
    with pytest.raises(
        EvidenceError, match=r"is not ECDSA-SHA256 signed .*1\.2\.840\.10045\.4\.3\.3"
    ):
        _x509.verify_issued_by(
            leaf, inter, "Test", EvidenceError, algorithms=sha256, algorithm_name="ECDSA-SHA256"
        )
    _x509.verify_issued_by(leaf, inter, "Test", EvidenceError, algorithms=ECDSA)


def test_outer_signature_algorithm_must_match_the_signed_one(path: list[x509.Certificate]) -> None:
    """RFC 5280 section 4.1.1.2: the unsigned outer signatureAlgorithm is refused when it
    differs from the TBSCertificate's signature field (ecdsa-with-SHA384 -> SHA256 here)."""
    _root, inter, leaf = path
    der = bytearray(leaf.public_bytes(Encoding.DER))
    sha384 = bytes.fromhex("06082a8648ce3d040303")
    outer = der.rindex(sha384)
    assert outer > der.index(sha384)  # the outer copy, after the TBSCertificate
    der[outer + len(sha384) - 1] = 0x02
    altered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(EvidenceError, match="cannot be verified with 'inter'"):
        _x509.verify_issued_by(altered, inter, "Test", EvidenceError)


def test_validate_path_accepts_exactly_the_listed_path(
    path: list[x509.Certificate], keys: list[ec.EllipticCurvePrivateKey]
) -> None:
    root, inter, leaf = path
    at = START + timedelta(days=1)
    _x509.validate_path(root, [inter], leaf, at, "Test", EvidenceError)
    with pytest.raises(EvidenceError, match="Test certificate path does not validate"):
        _x509.validate_path(root, [inter], leaf, END + timedelta(days=1), "Test", EvidenceError)
    with pytest.raises(EvidenceError, match="does not validate"):
        _x509.validate_path(root, [], leaf, at, "Test", EvidenceError)
    spare = _cert("spare", keys[3], issuer="root", issuer_key=keys[0])
    with pytest.raises(EvidenceError, match="not the one its certificates list"):
        _x509.validate_path(root, [inter, spare], leaf, at, "Test", EvidenceError)


def _pss_self_signed(salt: int, digest: hashes.SHA256 | hashes.SHA384) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("ARK-Milan"))
        .issuer_name(_name("ARK-Milan"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(END)
    )
    return builder.sign(key, digest, rsa_padding=padding.PSS(padding.MGF1(digest), salt))


def test_snp_pins_the_pss_parameters() -> None:
    snp._check_pss_params(_pss_self_signed(48, hashes.SHA384()), "ARK")
    for salt, digest in ((32, hashes.SHA384()), (48, hashes.SHA256())):
        cert = _pss_self_signed(salt, digest)
        cert.verify_directly_issued_by(cert)  # a valid signature, under other parameters
        with pytest.raises(EvidenceError, match="salt length 48"):
            snp._check_pss_params(cert, "ARK")
