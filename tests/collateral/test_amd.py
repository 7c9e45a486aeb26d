"""AMD KDS collateral: URL construction from a real SNP report, a local KDS, caching."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blindinfer._collateral.amd import (
    AmdKdsProvider,
    ReportedTcb,
    collateral_expiry,
    product_from_report,
    urllib_get,
    vcek_url,
)
from blindinfer._collateral.cache import CollateralCache
from blindinfer.errors import CollateralError
from tests.collateral.http_fakes import FakeService, serve

NOW = datetime(2025, 7, 1, tzinfo=UTC)
VCEK_NOT_AFTER = datetime(2029, 9, 24, 0, 55, 28, tzinfo=UTC)


@pytest.fixture
def report(vectors: Path) -> bytes:
    return (vectors / "snp" / "attestation.bin").read_bytes()


@pytest.fixture
def kds(vectors: Path, report: bytes) -> Iterator[FakeService]:
    chip_id = report[0x1A0:0x1E0].hex()
    routes = {
        # the TCB the vector reports: bootloader 2, tee 0, snp 5, microcode 68 (vectors README)
        f"/vcek/v1/Milan/{chip_id}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68": (
            200,
            {"Content-Type": "application/pkix-cert"},
            (vectors / "snp" / "vcek.testcer").read_bytes(),
        ),
        "/vcek/v1/Milan/cert_chain": (
            200,
            {"Content-Type": "application/x-pem-file"},
            (vectors / "snp" / "ask_ark_milan.pem").read_bytes(),
        ),
    }
    with serve(FakeService(routes)) as service:
        yield service


def test_fetch_from_local_kds(
    kds: FakeService, report: bytes, vectors: Path, tmp_path: Path
) -> None:
    cache = CollateralCache(tmp_path, clock=lambda: NOW)
    items = AmdKdsProvider(cache, product="Milan", base_url=kds.url)(report)
    assert items == {
        "vcek": (vectors / "snp" / "vcek.testcer").read_bytes(),
        "chain": (vectors / "snp" / "ask_ark_milan.pem").read_bytes(),
    }
    assert sorted(kds.requests) == sorted(kds.routes)


def test_cached_across_restarts(kds: FakeService, report: bytes, tmp_path: Path) -> None:
    first = AmdKdsProvider(
        CollateralCache(tmp_path, clock=lambda: NOW), product="Milan", base_url=kds.url
    )
    items = first(report)
    again = AmdKdsProvider(
        CollateralCache(tmp_path, clock=lambda: NOW), product="Milan", base_url=kds.url
    )
    assert again(report) == items
    assert len(kds.requests) == 2


def test_refetched_before_the_vcek_expires(kds: FakeService, report: bytes, tmp_path: Path) -> None:
    now = [NOW]
    cache = CollateralCache(tmp_path, margin=timedelta(days=30), clock=lambda: now[0])
    provider = AmdKdsProvider(cache, product="Milan", base_url=kds.url)
    provider(report)
    now[0] = VCEK_NOT_AFTER - timedelta(days=31)
    provider(report)
    assert len(kds.requests) == 2  # still fresh
    now[0] = VCEK_NOT_AFTER - timedelta(days=29)
    provider(report)
    assert len(kds.requests) == 4  # inside the margin: refreshed
    now[0] = VCEK_NOT_AFTER + timedelta(seconds=1)
    with pytest.raises(CollateralError, match="expired"):
        provider(report)  # KDS still serves the old certificate: refused, not cached


def test_expiry_is_the_vcek_not_after(vectors: Path) -> None:
    items = {
        "vcek": (vectors / "snp" / "vcek.testcer").read_bytes(),
        "chain": (vectors / "snp" / "ask_ark_milan.pem").read_bytes(),
    }
    assert collateral_expiry(items) == VCEK_NOT_AFTER


def test_report_v2_needs_a_configured_product(report: bytes, tmp_path: Path) -> None:
    assert struct.unpack_from("<I", report, 0)[0] == 2
    assert product_from_report(report) is None
    with pytest.raises(CollateralError, match="configure the product"):
        AmdKdsProvider(CollateralCache(tmp_path), get=urllib_get)(report)
    with pytest.raises(CollateralError, match="unknown AMD product"):
        AmdKdsProvider(CollateralCache(tmp_path), product="Naples")


def with_cpuid(report: bytes, family: int, model: int) -> bytes:
    out = bytearray(report)
    struct.pack_into("<I", out, 0, 3)
    out[0x188], out[0x189] = family, model
    return bytes(out)


def test_product_from_cpuid(report: bytes) -> None:
    assert product_from_report(with_cpuid(report, 0x19, 0x01)) == "milan"
    assert product_from_report(with_cpuid(report, 0x19, 0x11)) == "genoa"
    assert product_from_report(with_cpuid(report, 0x19, 0xA0)) == "genoa"
    assert product_from_report(with_cpuid(report, 0x1A, 0x02)) == "turin"
    assert product_from_report(with_cpuid(report, 0x17, 0x31)) is None


def test_turin_url_layout(report: bytes) -> None:
    turin = bytearray(with_cpuid(report, 0x1A, 0x02))
    struct.pack_into("<Q", turin, 0x180, int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little"))
    url = vcek_url("https://kds", "Turin", bytes(turin))
    hwid = report[0x1A0:0x1A8].hex()
    assert url == f"https://kds/vcek/v1/Turin/{hwid}?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=9"
    assert ReportedTcb.decode(0x4400000000000502, "Milan") == ReportedTcb(2, 5, 0, 0x44)


def test_kds_errors_are_collateral_errors(report: bytes, tmp_path: Path) -> None:
    with serve(FakeService()) as empty:
        provider = AmdKdsProvider(CollateralCache(tmp_path), product="Milan", base_url=empty.url)
        with pytest.raises(CollateralError, match="404"):
            provider(report)
    with pytest.raises(CollateralError, match="not a DER certificate"):
        AmdKdsProvider(CollateralCache(tmp_path), product="Milan", get=lambda url: b"junk")(report)
    with pytest.raises(CollateralError, match="1184"):
        AmdKdsProvider(CollateralCache(tmp_path), product="Milan")(report[:100])


def test_product_spellings_are_one(report: bytes) -> None:
    """AMD's spelling is accepted and normalised; URLs use AMD's spelling again."""
    assert ReportedTcb.decode(0x4400000000000502, "milan") == ReportedTcb(2, 5, 0, 0x44)
    milan = vcek_url("https://kds", "milan", with_cpuid(report, 0x19, 0x01))
    assert milan == vcek_url("https://kds", "Milan", with_cpuid(report, 0x19, 0x01))
    assert milan.startswith("https://kds/vcek/v1/Milan/")
