"""AWS Nitro Enclaves verifier: real documents from evervault, and forged test chains."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from blindinfer.attestation import _nitro as nitro
from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import Policy
from blindinfer.errors import ConfigError, EvidenceError, PolicyError

from ._snp_nitro_forge import (
    VERIFY_AT,
    make_nitro_payload,
    make_test_nitro_chain,
    make_test_nitro_root_and_doc,
    sign_cose_sign1,
)

G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
VALID_AT = datetime(2023, 9, 18, 15, 3, 30, 860000, tzinfo=UTC)
DEBUG_AT = datetime(2022, 10, 12, 14, 0, tzinfo=UTC)  # leaf valid 13:49:51..16:49:54
TODAY = datetime(2026, 11, 25, tzinfo=UTC)
ZERO48 = "00" * 48
PCR3 = (
    "4a9329d69c836267b18abbf9f4a38889124490453419e426"
    "818626348d21f989dc930b1562682a9082887454e53425aa"
)
PCR4 = (
    "d0531b1400dd43288c82c226c16bf647c637dd5e4d9b4f7a"
    "8aaadc6d6760b854a06c7008cca0d15ca80094dd33a65065"
)


@pytest.fixture(scope="module")
def valid_doc(vectors: Path) -> bytes:
    return base64.b64decode((vectors / "nitro" / "valid-attestation-doc-base64").read_text())


@pytest.fixture(scope="module")
def debug_doc(vectors: Path) -> bytes:
    return (vectors / "nitro" / "debug-mode-attestation-doc-bytes").read_bytes()


@pytest.fixture(scope="module")
def claims(valid_doc: bytes) -> Claims:
    return nitro.verify(valid_doc, {}, at=VALID_AT)


# --- pinned root -------------------------------------------------------------------------------


def test_pinned_root_is_aws_nitro_g1(vectors: Path) -> None:
    pem = (Path(nitro.__file__).parent / "roots" / "aws_nitro_root_g1.pem").read_bytes()
    root = x509.load_pem_x509_certificate(pem)
    assert root.fingerprint(hashes.SHA256()).hex() == G1_SHA256
    vector = x509.load_pem_x509_certificate(
        (vectors / "nitro" / "aws_nitro_root_g1.pem").read_bytes()
    )
    assert root == vector
    assert root.not_valid_after_utc.year == 2049


# --- the real documents ------------------------------------------------------------------------


def test_valid_doc_verifies_at_its_timestamp(claims: Claims, vectors: Path) -> None:
    cert = x509.load_der_x509_certificate(
        (vectors / "nitro" / "valid-certificate.der").read_bytes()
    )
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert claims.kind == "nitro"
    assert claims.report_data == spki
    assert claims.public_key is None
    assert claims.measurements["pcr0"] == ZERO48
    assert claims.measurements["pcr3"] == PCR3
    assert claims.measurements["pcr4"] == PCR4
    assert claims.measurements["pcr8"] == ZERO48
    assert sorted(claims.measurements) == sorted(f"pcr{i}" for i in range(16))
    assert claims.debug is True
    assert claims.fields["module_id"] == "i-0918f6c55e3b61d89-enc018aa8b8e2285d13"
    assert claims.fields["timestamp"] == "2023-09-18T15:03:30.860000+00:00"
    assert claims.fields["digest"] == "SHA384"
    assert str(claims.fields["nonce"]).startswith("bba6bfd5")
    assert claims.verified_at == VALID_AT


def test_valid_doc_refused_today(valid_doc: bytes) -> None:
    with pytest.raises(EvidenceError) as err:
        nitro.verify(valid_doc, {}, at=TODAY)
    msg = str(err.value)
    assert "i-0918f6c55e3b61d89-enc018aa8b8e2285d13.us-east-1.aws" in msg
    assert "notAfter 2023-09-18T17:37:12" in msg


def test_valid_doc_refused_before_its_leaf(valid_doc: bytes) -> None:
    with pytest.raises(EvidenceError, match="notBefore 2023-09-18T14:37:09"):
        nitro.verify(valid_doc, {}, at=datetime(2023, 9, 18, 14, 0, tzinfo=UTC))


def test_debug_status_needs_allow_debug(claims: Claims) -> None:
    with pytest.raises(PolicyError, match="debug-mode enclave"):
        nitro.KindPolicy.from_dict({}).check(claims)
    nitro.KindPolicy.from_dict({"allow_debug": True}).check(claims)


def test_debug_doc_verifies_inside_leaf_validity_and_default_policy_refuses(
    debug_doc: bytes,
) -> None:
    c = nitro.verify(debug_doc, {}, at=DEBUG_AT)
    assert c.debug is True
    assert c.report_data == b"hello, world!"
    assert c.public_key == b"my super secret key"
    assert c.fields["nonce"] is None
    with pytest.raises(PolicyError, match="debug-mode enclave"):
        nitro.KindPolicy().check(c)
    nitro.KindPolicy(allow_debug=True, pcr0=[ZERO48]).check(c)
    with pytest.raises(EvidenceError, match="notAfter 2022-10-12T16:49:54"):
        nitro.verify(debug_doc, {}, at=datetime(2022, 10, 12, 17, 0, tzinfo=UTC))


def test_policy_pcr_mismatch_names_field_and_values(claims: Claims) -> None:
    other = "ab" * 48
    with pytest.raises(PolicyError) as err:
        nitro.KindPolicy.from_dict({"pcr0": other, "allow_debug": True}).check(claims)
    msg = str(err.value)
    assert "nitro.pcr0" in msg and other in msg and ZERO48 in msg


def test_policy_pcr_lists_and_pcr3_4(claims: Claims) -> None:
    table = {"pcr0": ["ab" * 48, ZERO48], "pcr3": PCR3, "pcr4": PCR4, "allow_debug": True}
    nitro.KindPolicy.from_dict(table).check(claims)


def test_policy_from_claims_round_trips_through_toml(claims: Claims) -> None:
    policy = Policy.from_toml(Policy.from_claims(claims).to_toml())
    policy.check(claims)
    table = policy.kinds["nitro"].to_dict()
    assert table["pcr3"] == [PCR3] and table["allow_debug"] is True
    assert set(table) == {"pcr0", "pcr1", "pcr2", "pcr3", "pcr4", "pcr8", "allow_debug"}


@pytest.mark.parametrize(
    "table",
    [{"pcr5": ZERO48}, {"pcr0": "abcd"}, {"pcr0": "zz" * 48}, {"allow_debug": 1}, {"pcr0": 3}],
)
def test_policy_bad_tables(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        nitro.KindPolicy.from_dict(table)


# --- forged chains (test roots) ----------------------------------------------------------------


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tag18"])
def test_forged_round_trip(tagged: bool) -> None:
    root, doc = make_test_nitro_root_and_doc(
        user_data=b"binding", public_key=b"pk", nonce=b"\x01\x02", tagged=tagged
    )
    c = nitro.verify(doc, {}, at=VERIFY_AT, roots=[root])
    assert c.report_data == b"binding" and c.public_key == b"pk"
    assert c.fields["nonce"] == "0102"
    assert c.debug is False
    assert c.measurements["pcr0"] == "01" * 48
    nitro.KindPolicy(pcr0=["01" * 48], pcr1=["02" * 48], pcr2=["03" * 48]).check(c)
    with pytest.raises(EvidenceError, match="not a trusted root"):
        nitro.verify(doc, {}, at=VERIFY_AT)


def test_forged_absent_user_data_is_empty_report_data() -> None:
    root, doc = make_test_nitro_root_and_doc()
    assert nitro.verify(doc, {}, at=VERIFY_AT, roots=[root]).report_data == b""


def test_forged_debug_pcrs_are_flagged() -> None:
    zero = {i: b"\x00" * 48 for i in (0, 1, 2, 3, 4, 8)}
    root, doc = make_test_nitro_root_and_doc(pcrs=zero)
    c = nitro.verify(doc, {}, at=VERIFY_AT, roots=[root])
    assert c.debug is True
    with pytest.raises(PolicyError, match="debug-mode"):
        nitro.KindPolicy().check(c)
    root, doc = make_test_nitro_root_and_doc(pcrs={**zero, 8: b"\x01" * 48})
    assert nitro.verify(doc, {}, at=VERIFY_AT, roots=[root]).debug is False


def test_forged_chain_under_the_real_root_is_refused(vectors: Path) -> None:
    """cabundle[0] is the genuine G1 root, but the intermediate was not signed by AWS."""
    chain = make_test_nitro_chain()
    real_root = x509.load_pem_x509_certificate(
        (vectors / "nitro" / "aws_nitro_root_g1.pem").read_bytes()
    ).public_bytes(Encoding.DER)
    payload = cbor2.loads(make_nitro_payload(chain))
    payload["cabundle"][0] = real_root
    doc = sign_cose_sign1(cbor2.dumps(payload), chain.leaf_key)
    with pytest.raises(EvidenceError, match="is issued by"):
        nitro.verify(doc, {}, at=VERIFY_AT)


def test_forged_expired_leaf_is_refused() -> None:
    chain = make_test_nitro_chain(not_after=datetime(2025, 1, 1, tzinfo=UTC))
    doc = sign_cose_sign1(make_nitro_payload(chain), chain.leaf_key)
    with pytest.raises(EvidenceError, match="notAfter 2025-01-01"):
        nitro.verify(doc, {}, at=VERIFY_AT, roots=[chain.root_der])


def test_forged_future_timestamp_is_refused() -> None:
    chain = make_test_nitro_chain()
    payload = make_nitro_payload(chain, timestamp=datetime(2025, 6, 2, tzinfo=UTC))
    with pytest.raises(EvidenceError, match="after the verification time"):
        nitro.verify(
            sign_cose_sign1(payload, chain.leaf_key), {}, at=VERIFY_AT, roots=[chain.root_der]
        )


def test_wrong_algorithm_is_refused() -> None:
    chain = make_test_nitro_chain()
    doc = cbor2.loads(sign_cose_sign1(make_nitro_payload(chain), chain.leaf_key))
    doc[0] = cbor2.dumps({1: -7})  # ES256
    with pytest.raises(EvidenceError, match="ES384"):
        nitro.verify(cbor2.dumps(doc), {}, at=VERIFY_AT, roots=[chain.root_der])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop("certificate"),
        lambda p: p.update(digest="SHA256"),
        lambda p: p.update(timestamp="now"),
        lambda p: p.update(pcrs={0: b"\x00" * 48}),
        lambda p: p.update(pcrs={0: b"\x00", 1: b"\x00", 2: b"\x00"}),
        lambda p: p.update(cabundle=[]),
        lambda p: p.update(user_data=b"x" * 513),
        lambda p: p.update(module_id=7),
    ],
)
def test_malformed_payload_fields_are_evidence_errors(mutate: Any) -> None:
    chain = make_test_nitro_chain()
    payload = cbor2.loads(make_nitro_payload(chain))
    mutate(payload)
    doc = sign_cose_sign1(cbor2.dumps(payload), chain.leaf_key)
    with pytest.raises(EvidenceError):
        nitro.verify(doc, {}, at=VERIFY_AT, roots=[chain.root_der])


# --- detect ------------------------------------------------------------------------------------


def test_detect(valid_doc: bytes, debug_doc: bytes, vectors: Path) -> None:
    assert nitro.detect(valid_doc) and nitro.detect(debug_doc)
    assert nitro.detect(make_test_nitro_root_and_doc(tagged=True)[1])
    assert not nitro.detect(b"")
    assert not nitro.detect(b"\x84\x41")
    assert not nitro.detect(cbor2.dumps([cbor2.dumps({1: -7}), {}, b"", b""]))
    assert not nitro.detect((vectors / "snp" / "attestation.bin").read_bytes())
