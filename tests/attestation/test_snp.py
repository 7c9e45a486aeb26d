"""AMD SEV-SNP verifier: the real Milan report from go-sev-guest, and forged chains."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer.attestation import _snp as snp
from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import Policy
from blindinfer.errors import CollateralError, ConfigError, EvidenceError, PolicyError

from ._snp_nitro_forge import (
    VERIFY_AT,
    build_snp_report,
    make_test_snp_chain,
    make_test_snp_evidence,
    sign_snp_report,
)

MEASUREMENT = (
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01"
)
CHIP_ID = (
    "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
    "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d"
)
AT = datetime(2025, 1, 1, tzinfo=UTC)
TODAY = datetime(2026, 11, 25, tzinfo=UTC)
CHAIN_FILES = {
    "milan": "ask_ark_milan.pem",
    "genoa": "ask_ark_genoa.pem",
    "turin": "ask_ark_turin_vcek.pem",
}


@pytest.fixture(scope="module")
def report(vectors: Path) -> bytes:
    return (vectors / "snp" / "attestation.bin").read_bytes()


@pytest.fixture(scope="module")
def collateral(vectors: Path) -> dict[str, bytes]:
    return {
        "vcek": (vectors / "snp" / "vcek.testcer").read_bytes(),
        "chain": (vectors / "snp" / "ask_ark_milan.pem").read_bytes(),
    }


@pytest.fixture(scope="module")
def claims(report: bytes, collateral: dict[str, bytes]) -> Claims:
    return snp.verify(report, collateral, at=AT)


# --- pinned roots ------------------------------------------------------------------------------


@pytest.mark.parametrize("product", ["milan", "genoa", "turin"])
def test_pinned_ark_is_the_self_signed_root_of_the_vector_chain(
    vectors: Path, product: str
) -> None:
    pinned = x509.load_pem_x509_certificate(
        (Path(snp.__file__).parent / "roots" / f"amd_ark_{product}.pem").read_bytes()
    )
    chain = x509.load_pem_x509_certificates((vectors / "snp" / CHAIN_FILES[product]).read_bytes())
    arks = [c for c in chain if c.subject == c.issuer]
    assert len(arks) == 1
    assert pinned.public_bytes(Encoding.DER) == arks[0].public_bytes(Encoding.DER)
    assert pinned.subject.rfc4514_string().startswith(f"CN=ARK-{product.capitalize()},")
    pinned.verify_directly_issued_by(pinned)


# --- the real report ---------------------------------------------------------------------------


@pytest.mark.parametrize("at", [AT, TODAY], ids=["2025-01-01", "2026-11-25"])
def test_real_report_verifies_with_readme_values(
    report: bytes, collateral: dict[str, bytes], at: datetime
) -> None:
    c = snp.verify(report, collateral, at=at)
    assert c.kind == "snp"
    assert c.measurements["measurement"] == MEASUREMENT
    assert c.measurements["host_data"] == "00" * 32
    assert c.report_data == bytes.fromhex("0102030405") + b"\x00" * 59
    assert c.fields["policy"] == 0xB0000
    assert c.fields["vmpl"] == 0
    assert c.fields["version"] == 2
    assert c.fields["guest_svn"] == 0
    assert c.fields["reported_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert c.fields["chip_id"] == CHIP_ID
    assert c.fields["product"] == "milan"
    assert c.fields["migrate_ma"] is False
    assert c.fields["signing_key"] == "VCEK"
    assert c.verified_at == at
    assert c.insecure is False


def test_real_report_debug_follows_policy_bit_19(claims: Claims) -> None:
    # POLICY 0xb0000 = SMT (bit 16) | reserved-must-be-one (bit 17) | DEBUG (bit 19): per the ABI
    # spec (Table 9) this guest allows debugging, whatever the vectors README says.
    assert claims.fields["policy"] & (1 << 19)
    assert claims.debug is True


def test_vcek_serial_zero_does_not_warn(
    report: bytes, collateral: dict[str, bytes], recwarn: pytest.WarningsRecorder
) -> None:
    snp.verify(report, collateral, at=AT)
    assert not [w for w in recwarn if "serial" in str(w.message).lower()]


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_vcek_as_pem_and_chain_without_ark(
    report: bytes, collateral: dict[str, bytes], vectors: Path
) -> None:
    vcek = x509.load_der_x509_certificate(collateral["vcek"])
    ask = x509.load_pem_x509_certificates(collateral["chain"])[0]
    coll = {"vcek": vcek.public_bytes(Encoding.PEM), "chain": ask.public_bytes(Encoding.PEM)}
    assert snp.verify(report, coll, at=AT).measurements["measurement"] == MEASUREMENT


@pytest.mark.parametrize("at", [datetime(2021, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)])
def test_refused_outside_vcek_validity(
    report: bytes, collateral: dict[str, bytes], at: datetime
) -> None:
    with pytest.raises(CollateralError) as err:
        snp.verify(report, collateral, at=at)
    msg = str(err.value)
    assert "VCEK" in msg
    assert "2022-09-24T00:55:28" in msg and "2029-09-24T00:55:28" in msg
    assert at.isoformat() in msg


@pytest.mark.parametrize("product", ["genoa", "turin"])
def test_refused_with_another_products_chain(
    report: bytes, collateral: dict[str, bytes], vectors: Path, product: str
) -> None:
    coll = {**collateral, "chain": (vectors / "snp" / CHAIN_FILES[product]).read_bytes()}
    with pytest.raises(EvidenceError, match="SEV-Milan"):
        snp.verify(report, coll, at=AT)


@pytest.mark.parametrize("missing", ["vcek", "chain"])
def test_missing_collateral(report: bytes, collateral: dict[str, bytes], missing: str) -> None:
    coll = {k: v for k, v in collateral.items() if k != missing}
    with pytest.raises(CollateralError, match=missing):
        snp.verify(report, coll, at=AT)


def test_garbage_vcek_is_collateral_error(report: bytes, collateral: dict[str, bytes]) -> None:
    with pytest.raises(CollateralError):
        snp.verify(report, {**collateral, "vcek": b"not a certificate"}, at=AT)


def test_wrong_size_is_refused(report: bytes, collateral: dict[str, bytes]) -> None:
    with pytest.raises(EvidenceError, match="1184"):
        snp.verify(report + b"\x00", collateral, at=AT)
    with pytest.raises(EvidenceError, match="1184"):
        snp.verify(report[:0x2A0], collateral, at=AT)


def test_wrong_roots_refuse_the_real_report(report: bytes, collateral: dict[str, bytes]) -> None:
    chain = make_test_snp_chain()
    with pytest.raises(EvidenceError, match=r"not the pinned AMD root|not a trusted"):
        snp.verify(report, collateral, at=AT, roots=[chain.ark_der])


def test_naive_time_is_a_programming_error(report: bytes, collateral: dict[str, bytes]) -> None:
    with pytest.raises(ValueError):
        snp.verify(report, collateral, at=datetime(2025, 1, 1))


# --- policy ------------------------------------------------------------------------------------


def _policy(**table: Any) -> snp.KindPolicy:
    return snp.KindPolicy.from_dict(table)


def test_policy_from_claims_round_trips_through_toml(claims: Claims) -> None:
    policy = Policy.from_claims(claims)
    again = Policy.from_toml(policy.to_toml())
    again.check(claims)
    table = again.kinds["snp"].to_dict()
    assert table["measurement"] == [MEASUREMENT]
    assert table["min_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert table["allow_debug"] is True  # the real guest allows debugging


def test_default_policy_refuses_debug_guest(claims: Claims) -> None:
    with pytest.raises(PolicyError, match=r"snp\.allow_debug.*0xb0000.*DEBUG"):
        _policy(measurement=MEASUREMENT).check(claims)
    _policy(measurement=MEASUREMENT, allow_debug=True).check(claims)


def test_policy_measurement_mismatch_names_both_values(claims: Claims) -> None:
    other = "ab" * 48
    with pytest.raises(PolicyError) as err:
        _policy(measurement=other, allow_debug=True).check(claims)
    msg = str(err.value)
    assert "snp.measurement" in msg and other in msg and MEASUREMENT in msg


def test_policy_measurement_list(claims: Claims) -> None:
    _policy(measurement=["ab" * 48, MEASUREMENT.upper()], allow_debug=True).check(claims)


@pytest.mark.parametrize(
    ("part", "minimum"), [("bootloader", 3), ("tee", 1), ("snp", 6), ("microcode", 69)]
)
def test_policy_min_tcb_above_reported_is_refused(claims: Claims, part: str, minimum: int) -> None:
    tcb = {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68, part: minimum}
    with pytest.raises(PolicyError) as err:
        _policy(allow_debug=True, min_tcb=tcb).check(claims)
    assert f"snp.min_tcb.{part}" in str(err.value) and f"at least {minimum}" in str(err.value)


def test_policy_min_tcb_equal_or_below_passes(claims: Claims) -> None:
    _policy(allow_debug=True, min_tcb={"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}).check(
        claims
    )
    _policy(allow_debug=True, min_tcb={"snp": 1}).check(claims)


def test_policy_vmpl_svn_and_ids(claims: Claims) -> None:
    _policy(allow_debug=True, vmpl=0, max_vmpl=0, min_guest_svn=0).check(claims)
    with pytest.raises(PolicyError, match=r"snp\.vmpl: expected 1, evidence has 0"):
        _policy(allow_debug=True, vmpl=1).check(claims)
    with pytest.raises(PolicyError, match=r"snp\.min_guest_svn: expected at least 2"):
        _policy(allow_debug=True, min_guest_svn=2).check(claims)
    with pytest.raises(PolicyError, match=r"snp\.family_id"):
        _policy(allow_debug=True, family_id="01" * 16).check(claims)
    with pytest.raises(PolicyError, match=r"snp\.host_data"):
        _policy(allow_debug=True, host_data="01" * 32).check(claims)


@pytest.mark.parametrize(
    "table",
    [
        {"measurment": MEASUREMENT},
        {"measurement": "abcd"},
        {"allow_debug": "yes"},
        {"min_tcb": {"bootloader": -1}},
        {"min_tcb": {"sp": 1}},
        {"min_tcb": 3},
        {"vmpl": True},
    ],
)
def test_policy_bad_tables(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        snp.KindPolicy.from_dict(table)


def test_policy_refuses_other_kinds(claims: Claims) -> None:
    with pytest.raises(PolicyError):
        _policy().check(Claims(kind="nitro", report_data=b"", measurements={}, debug=False))


# --- forged chains (test roots) ----------------------------------------------------------------


@pytest.mark.parametrize("product", ["milan", "genoa", "turin"])
def test_forged_round_trip(product: str) -> None:
    data = bytes(range(64))
    report, coll, ark = make_test_snp_evidence(product, report_data=data, vmpl=1, guest_svn=7)
    c = snp.verify(report, coll, at=VERIFY_AT, roots=[ark])
    assert c.report_data == data
    assert c.debug is False
    assert c.fields["product"] == product
    assert c.fields["vmpl"] == 1 and c.fields["guest_svn"] == 7
    assert c.fields["cpuid"] is not None  # version 3 report
    if product == "turin":
        assert c.fields["reported_tcb"] == {
            "fmc": 1,
            "bootloader": 2,
            "tee": 3,
            "snp": 4,
            "microcode": 5,
        }
    _policy(min_tcb=dict(c.fields["reported_tcb"]), max_vmpl=1).check(c)
    with pytest.raises(PolicyError, match=r"snp\.max_vmpl"):
        _policy(max_vmpl=0).check(c)


def test_forged_report_refused_without_its_root() -> None:
    report, coll, _ = make_test_snp_evidence()
    with pytest.raises(EvidenceError):
        snp.verify(report, coll, at=VERIFY_AT)
    # Without the forged ARK in the chain, the forged ASK fails against the pinned ARK-Milan.
    ask_only = coll["chain"][: coll["chain"].index(b"-----END CERTIFICATE-----") + 26]
    with pytest.raises(EvidenceError, match="signature"):
        snp.verify(report, {**coll, "chain": ask_only}, at=VERIFY_AT)


def test_forged_vcek_for_another_chip_is_refused() -> None:
    chain = make_test_snp_chain(hwid=b"\x99" * 64)
    report = build_snp_report(chip_id=chain.chip_id, tcb=chain.tcb)
    with pytest.raises(EvidenceError, match="CHIP_ID"):
        snp.verify(
            sign_snp_report(report, chain.vcek_key),
            chain.collateral(),
            at=VERIFY_AT,
            roots=[chain.ark_der],
        )


def test_forged_vcek_for_another_tcb_is_refused() -> None:
    chain = make_test_snp_chain()
    report = build_snp_report(chip_id=chain.chip_id, tcb={**chain.tcb, "snp": chain.tcb["snp"] + 1})
    with pytest.raises(EvidenceError, match="TCB snp"):
        snp.verify(
            sign_snp_report(report, chain.vcek_key),
            chain.collateral(),
            at=VERIFY_AT,
            roots=[chain.ark_der],
        )


@pytest.mark.parametrize(("flags", "match"), [(1 << 2, "VLEK"), (1 << 1, "MASK_CHIP_ID")])
def test_forged_vlek_or_masked_chip_is_refused(flags: int, match: str) -> None:
    chain = make_test_snp_chain()
    report = build_snp_report(chip_id=chain.chip_id, tcb=chain.tcb, flags=flags)
    with pytest.raises(EvidenceError, match=match):
        snp.verify(
            sign_snp_report(report, chain.vcek_key),
            chain.collateral(),
            at=VERIFY_AT,
            roots=[chain.ark_der],
        )


def test_forged_migration_agent_and_debug_policy() -> None:
    report, coll, ark = make_test_snp_evidence(policy=0x30000 | (1 << 18) | (1 << 19))
    c = snp.verify(report, coll, at=VERIFY_AT, roots=[ark])
    assert c.debug is True and c.fields["migrate_ma"] is True
    with pytest.raises(PolicyError, match="allow_migration_agent"):
        _policy(allow_debug=True).check(c)
    _policy(allow_debug=True, allow_migration_agent=True).check(c)


@pytest.mark.parametrize("version", [1, 6])
def test_unsupported_versions_are_refused(version: int) -> None:
    report, coll, ark = make_test_snp_evidence()
    bad = bytearray(report)
    struct.pack_into("<I", bad, 0, version)
    with pytest.raises(EvidenceError, match="version"):
        snp.verify(bytes(bad), coll, at=VERIFY_AT, roots=[ark])


# --- detect ------------------------------------------------------------------------------------


def test_detect(report: bytes, vectors: Path) -> None:
    assert snp.detect(report)
    assert not snp.detect(report[:-1])
    assert not snp.detect(report + b"\x00")
    assert not snp.detect(b"")
    assert not snp.detect(b"\x00" * 1184)
    assert not snp.detect((vectors / "nitro" / "debug-mode-attestation-doc-bytes").read_bytes())
    assert not snp.detect((vectors / "sgx" / "sgx_quote").read_bytes())
