"""DCAP collateral: dcap-qvl's real fetch from a local PCCS, caching, refresh before expiry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dcap_qvl
import pytest

from blindinfer._collateral import collect
from blindinfer._collateral.cache import CollateralCache
from blindinfer._collateral.dcap import (
    DcapCollateralProvider,
    cache_key,
    collateral_expiry,
    dcap_qvl_fetcher,
)
from blindinfer.errors import CollateralError
from tests.collateral.http_fakes import FakeService, pccs_routes, serve

# (directory, FMSPC, PCK CA, end of the validity window from the vectors README)
CASES = {
    "sgx": ("00A067110000", "processor", datetime(2025, 7, 19, 10, 1, 18, tzinfo=UTC)),
    "tdx": ("B0C06F000000", "platform", datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)),
}
INSIDE = datetime(2025, 7, 1, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=sorted(CASES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pccs(vectors: Path, kind: str) -> Iterator[FakeService]:
    fmspc, ca, _ = CASES[kind]
    routes = pccs_routes(vectors / kind / f"{kind}_quote_collateral.json", kind, fmspc, ca)
    with serve(FakeService(routes)) as service:
        yield service


@pytest.fixture
def quote(vectors: Path, kind: str) -> bytes:
    return (vectors / kind / f"{kind}_quote").read_bytes()


def test_expiry_is_the_earliest_next_update(vectors: Path, kind: str) -> None:
    raw = (vectors / kind / f"{kind}_quote_collateral.json").read_bytes()
    assert collateral_expiry(raw) == CASES[kind][2]


def test_cache_key_names_the_platform(quote: bytes, kind: str) -> None:
    fmspc, ca, _ = CASES[kind]
    assert cache_key(quote) == f"dcap-{kind}-{fmspc.lower()}-{ca}"
    with pytest.raises(CollateralError, match="FMSPC"):
        cache_key(b"\x03\x00" + bytes(100))


def test_dcap_qvl_fetch_from_local_pccs(
    pccs: FakeService, quote: bytes, vectors: Path, kind: str
) -> None:
    fetched = dcap_qvl_fetcher(pccs.url, quote)
    assert sorted(pccs.requests) == sorted(pccs.routes)
    doc = json.loads(fetched)
    reference = json.loads((vectors / kind / f"{kind}_quote_collateral.json").read_text())
    assert {k: doc[k] for k in reference} == reference
    # and it is usable: dcap-qvl verifies the real quote with it inside the window
    report = dcap_qvl.verify(
        quote, dcap_qvl.QuoteCollateralV3.from_json(fetched.decode()), int(INSIDE.timestamp())
    )
    expected = "ConfigurationAndSWHardeningNeeded" if kind == "sgx" else "UpToDate"
    assert report.status == expected


def test_provider_caches_on_disk(pccs: FakeService, quote: bytes, tmp_path: Path) -> None:
    clock = Clock(INSIDE)
    cache = CollateralCache(tmp_path / "collateral", clock=clock)
    first = DcapCollateralProvider(cache, pccs.url)(quote)
    assert set(first) == {"dcap"}
    assert len(pccs.requests) == 4
    assert DcapCollateralProvider(cache, pccs.url)(quote) == first
    restarted = CollateralCache(tmp_path / "collateral", clock=clock)
    assert DcapCollateralProvider(restarted, pccs.url)(quote) == first
    assert len(pccs.requests) == 4  # served from the cache, in memory and after a restart
    assert [p.name for p in (tmp_path / "collateral").iterdir()] == [f"{cache_key(quote)}.json"]


def test_refresh_before_expiry(pccs: FakeService, quote: bytes, tmp_path: Path, kind: str) -> None:
    expires = CASES[kind][2]
    clock = Clock(INSIDE)
    cache = CollateralCache(tmp_path, margin=timedelta(hours=1), clock=clock)
    provider = DcapCollateralProvider(cache, pccs.url)
    provider(quote)
    clock.now = expires - timedelta(hours=1, seconds=1)
    provider(quote)
    assert len(pccs.requests) == 4
    clock.now = expires - timedelta(minutes=59)  # inside the margin: fetch again
    provider(quote)
    assert len(pccs.requests) == 8


def test_pccs_outage_serves_cache_until_expiry(tmp_path: Path, vectors: Path) -> None:
    quote = (vectors / "sgx" / "sgx_quote").read_bytes()
    collateral = (vectors / "sgx" / "sgx_quote_collateral.json").read_bytes()
    up = True

    def fetcher(url: str, q: bytes) -> bytes:
        if not up:
            raise CollateralError("PCCS unreachable")
        return collateral

    clock = Clock(INSIDE)
    provider = DcapCollateralProvider(CollateralCache(tmp_path, clock=clock), "u", fetcher)
    assert provider(quote) == {"dcap": collateral}
    up = False
    clock.now = CASES["sgx"][2] - timedelta(minutes=1)  # due for refresh, refresh fails
    assert provider(quote) == {"dcap": collateral}
    clock.now = CASES["sgx"][2]
    with pytest.raises(CollateralError, match="unreachable"):
        provider(quote)
    assert collect(provider, quote) == {}  # what a backend attaches then


def test_expired_collateral_is_not_cached(pccs: FakeService, quote: bytes, tmp_path: Path) -> None:
    provider = DcapCollateralProvider(CollateralCache(tmp_path), pccs.url)  # real clock: 2025+
    if datetime.now(UTC) < CASES["sgx"][2]:
        pytest.skip("the vectors' collateral has not expired yet")
    with pytest.raises(CollateralError, match="expired"):
        provider(quote)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_pccs_is_a_collateral_error(quote: bytes) -> None:
    with serve(FakeService()) as empty, pytest.raises(CollateralError, match="404"):
        dcap_qvl_fetcher(empty.url, quote)


def test_malformed_collateral_is_rejected(vectors: Path) -> None:
    with pytest.raises(CollateralError, match="not JSON"):
        collateral_expiry(b"{")
    doc = json.loads((vectors / "sgx" / "sgx_quote_collateral.json").read_text())
    doc["pck_crl"] = "zz"
    with pytest.raises(CollateralError, match="pck_crl"):
        collateral_expiry(json.dumps(doc).encode())
    doc = json.loads((vectors / "sgx" / "sgx_quote_collateral.json").read_text())
    del doc["qe_identity"]
    with pytest.raises(CollateralError, match="qe_identity"):
        collateral_expiry(json.dumps(doc).encode())
