"""Intel TDX (DCAP quote v4 / v5) verifier and [tdx] policy, on the real dcap-qvl sample quotes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blindinfer.attestation import Evidence, Policy, _dcap, verify_evidence
from blindinfer.attestation import _sgx as sgx
from blindinfer.attestation import _tdx as tdx
from blindinfer.attestation._claims import Claims
from blindinfer.errors import (
    AttestationError,
    CollateralError,
    ConfigError,
    EvidenceError,
    PolicyError,
)

INSIDE = datetime(2025, 7, 1, tzinfo=UTC)  # window 2025-06-19T10:32:27Z..2025-07-19T10:00:35Z
TODAY = datetime(2026, 11, 25, tzinfo=UTC)
OUTDATED_INSIDE = datetime(2026, 3, 1, tzinfo=UTC)  # 2026-02-18T10:58:51Z..2026-03-20T10:41:15Z
EXPECTED = {
    "mrtd": "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7",
    "rtmr0": "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c"
    "48aca29b220b80b6a540cf994b9bc9c0",
    "rtmr1": "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7"
    "aea8c323c173019b3093d54e579e9378",
    "rtmr2": "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3"
    "ba80b70870d7330733642e01d48c3132",
    "rtmr3": "00" * 48,
    "mrseam": "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c43"
    "6489d6c8e4f92f160b7cad34207b00c1",
}


@pytest.fixture(scope="module")
def quote(vectors: Path) -> bytes:
    return (vectors / "tdx" / "tdx_quote").read_bytes()


@pytest.fixture(scope="module")
def collateral(vectors: Path) -> dict[str, bytes]:
    return {"dcap": (vectors / "tdx" / "tdx_quote_collateral.json").read_bytes()}


@pytest.fixture(scope="module")
def outdated(vectors: Path) -> tuple[bytes, dict[str, bytes]]:
    d = vectors / "tdx"
    coll = {"dcap": (d / "tdx_quote_outdated_collateral.json").read_bytes()}
    return (d / "tdx_quote_outdated").read_bytes(), coll


@pytest.fixture(scope="module")
def claims(quote: bytes, collateral: dict[str, bytes]) -> Claims:
    return tdx.verify(quote, collateral, at=INSIDE)


def test_detect(quote: bytes, outdated: tuple[bytes, dict[str, bytes]], vectors: Path) -> None:
    assert tdx.detect(quote)
    assert tdx.detect(outdated[0])
    assert not tdx.detect((vectors / "sgx" / "sgx_quote").read_bytes())
    for junk in (b"", b"\x04\x00", quote[:47], b"\x00" * 100, b"\xff" * 5000):
        assert not tdx.detect(junk)


def test_claims_match_readme(claims: Claims) -> None:
    assert claims.kind == "tdx"
    assert dict(claims.measurements) == EXPECTED
    assert claims.report_data.hex() == (
        "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
        "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
    )
    assert claims.debug is False
    assert claims.tcb_status == "UpToDate"
    assert claims.advisory_ids == ()
    f = claims.fields
    assert f["td_attributes"] == "0000001000000000"  # SEPT_VE_DISABLE, not debug
    assert f["xfam"] == "e702060000000000"
    assert f["quote_version"] == 4
    assert f["tee_tcb_svn"] == "06010300000000000000000000000000"
    for name in ("mrsignerseam", "mrowner", "mrconfigid", "mrownerconfig"):
        assert f[name] == "00" * 48
    assert f["fmspc"] == "b0c06f000000"
    assert "mrservicetd" not in f


def test_window_edges(quote: bytes, collateral: dict[str, bytes]) -> None:
    assert tdx.verify(quote, collateral, at=datetime(2025, 6, 19, 10, 32, 27, tzinfo=UTC))
    assert tdx.verify(quote, collateral, at=datetime(2025, 7, 19, 10, 0, 34, tzinfo=UTC))
    with pytest.raises(
        CollateralError, match="qe_identity is not valid before 2025-06-19T10:32:27"
    ):
        tdx.verify(quote, collateral, at=datetime(2025, 6, 19, 10, 32, 26, tzinfo=UTC))
    with pytest.raises(CollateralError, match="pck_crl expired at 2025-07-19T10:00:35"):
        tdx.verify(quote, collateral, at=datetime(2025, 7, 19, 10, 0, 36, tzinfo=UTC))


def test_refused_today_and_before(quote: bytes, collateral: dict[str, bytes]) -> None:
    with pytest.raises(CollateralError, match="tcb_info expired at 2025-07-19T10:16:03"):
        tdx.verify(quote, collateral, at=TODAY)
    with pytest.raises(CollateralError, match="not valid before"):
        tdx.verify(quote, collateral, at=datetime(2024, 6, 1, tzinfo=UTC))


def test_outdated_v5_has_no_matching_tcb_level(outdated: tuple[bytes, dict[str, bytes]]) -> None:
    raw, coll = outdated
    with pytest.raises(AttestationError, match="no matching TCB level") as err:
        tdx.verify(raw, coll, at=OUTDATED_INSIDE)
    assert isinstance(err.value, EvidenceError)
    with pytest.raises(CollateralError):
        tdx.verify(raw, coll, at=TODAY)


def test_v5_td15_body_fields(outdated: tuple[bytes, dict[str, bytes]]) -> None:
    # The v5 vector cannot verify (no TCB level matches), so read its TD 1.5 body directly.
    layout = _dcap.parse_layout(outdated[0])
    assert (layout.version, layout.body_type, len(layout.body)) == (5, _dcap.BODY_TD15, 648)
    result = _dcap.DcapResult(layout, "UpToDate", (), None, None, None)
    got = tdx._claims(result, OUTDATED_INSIDE)
    assert got.fields["quote_version"] == 5
    assert len(bytes.fromhex(got.fields["mrservicetd"])) == 48
    assert len(bytes.fromhex(got.fields["tee_tcb_svn2"])) == 16
    assert set(got.measurements) == set(EXPECTED)


def test_sgx_quote_is_not_tdx(vectors: Path, collateral: dict[str, bytes]) -> None:
    sgx_quote = (vectors / "sgx" / "sgx_quote").read_bytes()
    with pytest.raises(EvidenceError, match="not tdx evidence"):
        tdx.verify(sgx_quote, collateral, at=INSIDE)


def test_missing_collateral(quote: bytes) -> None:
    with pytest.raises(CollateralError, match="--collateral"):
        tdx.verify(quote, {"other": b"x"}, at=INSIDE)


# --- policy ------------------------------------------------------------------------------------


def test_default_tcb_policy_accepts_up_to_date(claims: Claims) -> None:
    tdx.KindPolicy.from_dict({"mrtd": EXPECTED["mrtd"]}).check(claims)
    tdx.KindPolicy().check(claims)


def test_policy_other_mrtd_names_both_values(claims: Claims) -> None:
    other = "ab" * 48
    with pytest.raises(PolicyError) as err:
        tdx.KindPolicy.from_dict({"mrtd": other}).check(claims)
    msg = str(err.value)
    assert "tdx.mrtd" in msg and other in msg and EXPECTED["mrtd"] in msg


@pytest.mark.parametrize("name", ["rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam"])
def test_policy_each_measurement(claims: Claims, name: str) -> None:
    tdx.KindPolicy.from_dict({name: ["11" * 48, EXPECTED[name]]}).check(claims)
    with pytest.raises(PolicyError, match=rf"tdx\.{name}"):
        tdx.KindPolicy.from_dict({name: "11" * 48}).check(claims)


def test_policy_masked_td_attributes_and_xfam(claims: Claims) -> None:
    # Judge only TUD.DEBUG (byte 0 bit 0) and SEPT_VE_DISABLE (bit 28, byte 3 = 0x10).
    good = {"td_attributes": "0000001000000000", "td_attributes_mask": "01000010" + "00" * 4}
    tdx.KindPolicy.from_dict(good).check(claims)
    with pytest.raises(PolicyError, match=r"tdx\.td_attributes"):
        tdx.KindPolicy.from_dict({**good, "td_attributes": "00" * 8}).check(claims)
    tdx.KindPolicy.from_dict({"xfam": "e702060000000000"}).check(claims)
    with pytest.raises(PolicyError, match=r"tdx\.xfam.*e702060000000000"):
        tdx.KindPolicy.from_dict({"xfam": "e700060000000000"}).check(claims)
    tdx.KindPolicy.from_dict({"xfam": "e700060000000000", "xfam_mask": "fffd" + "ff" * 6}).check(
        claims
    )


def test_tcb_policy(claims: Claims) -> None:
    outdated = dataclasses.replace(claims, tcb_status="OutOfDate", advisory_ids=("INTEL-SA-01",))
    with pytest.raises(PolicyError, match=r"tdx\.tcb_status: expected UpToDate, evidence has Out"):
        tdx.KindPolicy().check(outdated)
    with pytest.raises(PolicyError, match=r"tdx\.advisory_ids"):
        tdx.KindPolicy.from_dict({"allowed_tcb_status": ["OutOfDate"]}).check(outdated)
    tdx.KindPolicy.from_dict(
        {"allowed_tcb_status": ["OutOfDate"], "allowed_advisories": ["INTEL-SA-01"]}
    ).check(outdated)


def test_debug_refused_unless_allowed(claims: Claims) -> None:
    debug = dataclasses.replace(
        claims, debug=True, fields={**claims.fields, "td_attributes": "0100001000000000"}
    )
    with pytest.raises(PolicyError, match=r"tdx\.debug"):
        tdx.KindPolicy().check(debug)
    tdx.KindPolicy.from_dict({"allow_debug": True}).check(debug)
    with pytest.raises(PolicyError, match=r"tdx\.debug"):
        tdx.KindPolicy.from_claims(claims).check(debug)


def test_from_claims_round_trips(claims: Claims) -> None:
    pol = tdx.KindPolicy.from_claims(claims)
    pol.check(claims)
    assert pol.mrtd == [EXPECTED["mrtd"]] and pol.allowed_tcb_status == ["UpToDate"]
    assert tdx.KindPolicy.from_dict(pol.to_dict()) == pol
    assert Policy.from_toml(Policy({"tdx": pol}).to_toml()).kinds["tdx"] == pol
    changed = dataclasses.replace(claims, measurements={**claims.measurements, "rtmr3": "01" * 48})
    with pytest.raises(PolicyError, match=r"tdx\.rtmr3"):
        pol.check(changed)


def test_bad_policy_tables() -> None:
    for table in (
        {"mrtd": "00" * 32},
        {"rtmr4": "00" * 48},
        {"td_attributes": "00"},
        {"xfam_mask": "ff" * 8},
        {"allowed_tcb_status": "UpToDateish"},
        {"allow_debug": 1},
    ):
        with pytest.raises(ConfigError):
            tdx.KindPolicy.from_dict(table)


def test_policy_refuses_other_kind(claims: Claims) -> None:
    with pytest.raises(PolicyError):
        sgx.KindPolicy().check(claims)


def test_verify_evidence_end_to_end(quote: bytes, collateral: dict[str, bytes]) -> None:
    ev = Evidence("tdx", quote, collateral)
    got = verify_evidence(
        ev, at=INSIDE, policy=Policy.from_toml(f'[tdx]\nmrtd = "{EXPECTED["mrtd"]}"')
    )
    assert got.measurements == EXPECTED
    with pytest.raises(PolicyError, match="no \\[tdx\\] table"):
        verify_evidence(ev, at=INSIDE, policy=Policy.from_toml("[sgx]\n"))
