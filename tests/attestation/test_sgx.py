"""Intel SGX (DCAP quote v3) verifier and [sgx] policy, on the real dcap-qvl sample quote."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer.attestation import Evidence, Policy, verify_evidence
from blindinfer.attestation import _sgx as sgx
from blindinfer.attestation import _tdx as tdx
from blindinfer.attestation._claims import Claims
from blindinfer.errors import CollateralError, ConfigError, EvidenceError, PolicyError

INSIDE = datetime(
    2025, 7, 1, tzinfo=UTC
)  # 1751328000, inside 2025-06-19T10:56:11Z..07-19T10:01:18Z
TODAY = datetime(2026, 11, 25, tzinfo=UTC)
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
ATTRIBUTES = "0500000000000000e700000000000000"
STATUS = "ConfigurationAndSWHardeningNeeded"
ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")


@pytest.fixture(scope="module")
def quote(vectors: Path) -> bytes:
    return (vectors / "sgx" / "sgx_quote").read_bytes()


@pytest.fixture(scope="module")
def collateral(vectors: Path) -> dict[str, bytes]:
    return {"dcap": (vectors / "sgx" / "sgx_quote_collateral.json").read_bytes()}


@pytest.fixture(scope="module")
def claims(quote: bytes, collateral: dict[str, bytes]) -> Claims:
    return sgx.verify(quote, collateral, at=INSIDE)


def test_pinned_root_is_intel_sgx_root_ca(vectors: Path) -> None:
    from blindinfer.attestation import _dcap

    shipped = x509.load_pem_x509_certificate((vectors / "intel_sgx_root_ca.pem").read_bytes())
    assert _dcap.pinned_root_der() == shipped.public_bytes(Encoding.DER)
    assert _dcap.ROOT_SHA256.startswith("44a0196b") and _dcap.ROOT_SHA256.endswith("74d3")


def test_detect(quote: bytes, vectors: Path) -> None:
    assert sgx.detect(quote)
    assert not sgx.detect((vectors / "tdx" / "tdx_quote").read_bytes())
    for junk in (b"", b"\x03\x00", quote[:47], b"\xff" * 4600, bytes(48)):
        assert not sgx.detect(junk)


def test_claims_match_readme(claims: Claims) -> None:
    assert claims.kind == "sgx"
    assert claims.measurements == {"mrenclave": MRENCLAVE, "mrsigner": MRSIGNER}
    assert claims.report_data == b"Hello, world!" + bytes(51)
    assert len(claims.report_data) == 64
    assert claims.debug is False
    assert claims.insecure is False
    assert claims.tcb_status == STATUS
    assert claims.advisory_ids == ADVISORIES
    f = claims.fields
    assert f["isv_prod_id"] == 0 and f["isv_svn"] == 0 and f["config_svn"] == 0
    assert f["attributes"] == ATTRIBUTES
    assert f["misc_select"] == 0
    assert f["quote_version"] == 3
    assert f["qe_svn"] == 10 and f["pce_svn"] == 15
    assert f["fmspc"] == "00a067110000"
    assert f["platform_tcb_status"] == STATUS and f["qe_tcb_status"] == "UpToDate"
    assert claims.verified_at == INSIDE


def test_window_edges(quote: bytes, collateral: dict[str, bytes]) -> None:
    assert sgx.verify(quote, collateral, at=datetime(2025, 6, 19, 10, 56, 11, tzinfo=UTC))
    assert sgx.verify(quote, collateral, at=datetime(2025, 7, 19, 10, 1, 18, tzinfo=UTC))
    with pytest.raises(CollateralError, match=r"tcb_info is not valid before 2025-06-19T10:56:11"):
        sgx.verify(quote, collateral, at=datetime(2025, 6, 19, 10, 56, 10, tzinfo=UTC))
    with pytest.raises(CollateralError, match=r"qe_identity expired at 2025-07-19T10:01:18"):
        sgx.verify(quote, collateral, at=datetime(2025, 7, 19, 10, 1, 19, tzinfo=UTC))


def test_refused_today_names_expired_items(quote: bytes, collateral: dict[str, bytes]) -> None:
    with pytest.raises(CollateralError) as err:
        sgx.verify(quote, collateral, at=TODAY)
    msg = str(err.value)
    assert "tcb_info expired at 2025-07-19T10:56:11" in msg
    assert "pck_crl expired at 2025-07-19T10:23:18" in msg
    assert "root_ca_crl expired at 2026-04-03T11:21:57" in msg
    assert "--collateral" in msg


def test_refused_before_window(quote: bytes, collateral: dict[str, bytes]) -> None:
    with pytest.raises(CollateralError, match="not valid before"):
        sgx.verify(quote, collateral, at=datetime(2025, 1, 1, tzinfo=UTC))


def test_missing_or_malformed_collateral(quote: bytes) -> None:
    with pytest.raises(CollateralError, match=r"collateral is needed.*--collateral"):
        sgx.verify(quote, {}, at=INSIDE)
    for bad in (b"", b"not json", b"[]", b'{"tcb_info": 1}', b"\xff\xfe"):
        with pytest.raises(CollateralError):
            sgx.verify(quote, {"dcap": bad}, at=INSIDE)


def test_tdx_quote_is_not_sgx(vectors: Path) -> None:
    tdx_quote = (vectors / "tdx" / "tdx_quote").read_bytes()
    coll = {"dcap": (vectors / "tdx" / "tdx_quote_collateral.json").read_bytes()}
    with pytest.raises(EvidenceError, match="not sgx evidence"):
        sgx.verify(tdx_quote, coll, at=INSIDE)


def test_collateral_of_another_quote_is_refused(quote: bytes, vectors: Path) -> None:
    coll = {"dcap": (vectors / "tdx" / "tdx_quote_collateral.json").read_bytes()}
    with pytest.raises(CollateralError):
        sgx.verify(quote, coll, at=INSIDE)


def test_explicit_intel_root(quote: bytes, collateral: dict[str, bytes], vectors: Path) -> None:
    root = x509.load_pem_x509_certificate((vectors / "intel_sgx_root_ca.pem").read_bytes())
    got = sgx.verify(quote, collateral, at=INSIDE, roots=[root.public_bytes(Encoding.DER)])
    assert got.measurements["mrenclave"] == MRENCLAVE
    with pytest.raises(EvidenceError):
        sgx.verify(quote, collateral, at=INSIDE, roots=[])


# --- policy ------------------------------------------------------------------------------------

ALLOW_TCB = {"allowed_tcb_status": ["UpToDate", STATUS], "allowed_advisories": list(ADVISORIES)}


def test_default_policy_refuses_tcb_status(claims: Claims) -> None:
    with pytest.raises(PolicyError, match=r"sgx\.tcb_status: expected UpToDate, evidence has Conf"):
        sgx.KindPolicy.from_dict({"mrenclave": MRENCLAVE}).check(claims)


def test_policy_allowing_status_and_advisories_accepts(claims: Claims) -> None:
    sgx.KindPolicy.from_dict({"mrenclave": MRENCLAVE, "mrsigner": MRSIGNER, **ALLOW_TCB}).check(
        claims
    )


@pytest.mark.parametrize("kept", ADVISORIES)
def test_policy_missing_one_advisory_refuses(claims: Claims, kept: str) -> None:
    table = {"allowed_tcb_status": [STATUS], "allowed_advisories": [kept]}
    missing = next(a for a in ADVISORIES if a != kept)
    with pytest.raises(PolicyError, match=rf"sgx\.advisory_ids.*{missing} not allowed"):
        sgx.KindPolicy.from_dict(table).check(claims)


def test_policy_other_mrenclave_names_both_values(claims: Claims) -> None:
    other = "aa" * 32
    with pytest.raises(PolicyError) as err:
        sgx.KindPolicy.from_dict({"mrenclave": other, **ALLOW_TCB}).check(claims)
    msg = str(err.value)
    assert "sgx.mrenclave" in msg and other in msg and MRENCLAVE in msg


def test_policy_lists_and_ids(claims: Claims) -> None:
    ok = {"mrenclave": ["bb" * 32, MRENCLAVE.upper()], "isv_prod_id": 0, "min_isv_svn": 0}
    sgx.KindPolicy.from_dict({**ok, **ALLOW_TCB}).check(claims)
    with pytest.raises(PolicyError, match=r"sgx\.mrsigner"):
        sgx.KindPolicy.from_dict({"mrsigner": "cc" * 32, **ALLOW_TCB}).check(claims)
    with pytest.raises(PolicyError, match=r"sgx\.isv_prod_id: expected 7, evidence has 0"):
        sgx.KindPolicy.from_dict({"isv_prod_id": 7, **ALLOW_TCB}).check(claims)
    with pytest.raises(PolicyError, match=r"sgx\.isv_svn: expected at least 1, evidence has 0"):
        sgx.KindPolicy.from_dict({"min_isv_svn": 1, **ALLOW_TCB}).check(claims)


def test_policy_masked_attributes_and_misc_select(claims: Claims) -> None:
    # Only DEBUG (flags bit 1) and MODE64BIT (bit 2) are judged: expected 64-bit, not debug.
    mask = "06" + "00" * 15
    good = {"attributes": "04" + "00" * 15, "attributes_mask": mask, **ALLOW_TCB}
    sgx.KindPolicy.from_dict(good).check(claims)
    bad = {**good, "attributes": "02" + "00" * 15}
    with pytest.raises(PolicyError, match=rf"sgx\.attributes.*{ATTRIBUTES}"):
        sgx.KindPolicy.from_dict(bad).check(claims)
    with pytest.raises(PolicyError, match=r"sgx\.attributes"):  # no mask: exact match
        sgx.KindPolicy.from_dict({"attributes": "05" + "00" * 15, **ALLOW_TCB}).check(claims)
    sgx.KindPolicy.from_dict({"misc_select": 0, **ALLOW_TCB}).check(claims)
    sgx.KindPolicy.from_dict({"misc_select": "1", "misc_select_mask": 0, **ALLOW_TCB}).check(claims)
    with pytest.raises(PolicyError, match=r"sgx\.misc_select"):
        sgx.KindPolicy.from_dict({"misc_select": 1, **ALLOW_TCB}).check(claims)


def test_debug_refused_unless_allowed(claims: Claims) -> None:
    debug = dataclasses.replace(
        claims, debug=True, fields={**claims.fields, "attributes": "07" + ATTRIBUTES[2:]}
    )
    with pytest.raises(PolicyError, match=r"sgx\.debug"):
        sgx.KindPolicy.from_dict(ALLOW_TCB).check(debug)
    sgx.KindPolicy.from_dict({**ALLOW_TCB, "allow_debug": True}).check(debug)


def test_from_claims_is_strict_and_round_trips(claims: Claims) -> None:
    pol = sgx.KindPolicy.from_claims(claims)
    pol.check(claims)
    assert pol.allowed_tcb_status == [STATUS]
    assert pol.allowed_advisories == list(ADVISORIES)
    assert pol.allow_debug is False
    assert sgx.KindPolicy.from_dict(pol.to_dict()) == pol
    text = Policy({"sgx": pol}).to_toml()
    assert Policy.from_toml(text).kinds["sgx"] == pol
    newer = dataclasses.replace(claims, fields={**claims.fields, "isv_prod_id": 1})
    with pytest.raises(PolicyError):
        pol.check(newer)


def test_bad_policy_tables() -> None:
    for table in (
        {"mrenclave": "zz"},
        {"mrenclave": "aa"},
        {"unknown": 1},
        {"allowed_tcb_status": ["Uptodate"]},
        {"allowed_advisories": [1]},
        {"allow_debug": "yes"},
        {"isv_prod_id": -1},
        {"isv_prod_id": True},
        {"attributes": "05"},
        {"attributes_mask": "ff" * 16},
        {"misc_select": "xyz"},
        {"misc_select_mask": 1},
    ):
        with pytest.raises(ConfigError):
            sgx.KindPolicy.from_dict(table)


def test_policy_refuses_other_kind(claims: Claims) -> None:
    with pytest.raises(PolicyError):
        tdx.KindPolicy().check(claims)


def test_verify_evidence_end_to_end(quote: bytes, collateral: dict[str, bytes]) -> None:
    ev = Evidence("sgx", quote, collateral)
    got = verify_evidence(ev, at=INSIDE)
    policy = Policy.from_claims(got)
    assert verify_evidence(ev, at=INSIDE, policy=policy).measurements == got.measurements
    with pytest.raises(PolicyError):
        verify_evidence(ev, at=INSIDE, policy=Policy.from_toml(f'[sgx]\nmrenclave = "{MRENCLAVE}"'))
    with pytest.raises(CollateralError):
        verify_evidence(ev, at=TODAY, policy=policy)
