"""Key release to the emulated TDX backend (configfs-tsm emulation; the real TD quote re-signed
over the written inblob under a test DCAP PKI), verified by the KBS double with dcap-qvl."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from blindinfer._keys import _jose, release_key
from blindinfer._keys.kbs import KbsSession
from blindinfer._tee import create_backend
from blindinfer._tee.base import TeeBackend
from blindinfer.attestation import Policy
from blindinfer.errors import BackendUnavailable
from tests.e2e._dcap_forge import DcapTestPki, Template
from tests.keys.kbs_double import KbsDouble
from tests.tee.emulation import ConfigfsTsmEmulation

TDX_MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a"
    "3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
)
RESOURCE = "blindinfer/sealing-key/tdx"
KEY = bytes(range(100, 132))


@pytest.fixture
def pki(vectors: Path) -> DcapTestPki:
    return DcapTestPki(
        Template.load(vectors / "tdx" / "tdx_quote", vectors / "tdx" / "tdx_quote_collateral.json")
    )


def tdx_backend(tmp_path: Path, pki: DcapTestPki, collateral: bytes) -> TeeBackend:
    fs = ConfigfsTsmEmulation(tmp_path / "tsm", "tdx_guest", pki.quote)
    key_file = tmp_path / "bootstrap.key"
    key_file.write_bytes(bytes(32))
    return create_backend(
        "tdx",
        tmp_path / "data",
        tsm_root=fs.root,
        fs=fs,
        collateral=lambda quote: {"dcap": collateral},
        sealing_key_file=key_file,
    )


def double(pki: DcapTestPki, collateral: bytes, mrtd: str) -> KbsDouble:
    return KbsDouble(
        Policy.from_mapping({"tdx": {"mrtd": mrtd}}),
        {RESOURCE: KEY},
        roots={"tdx": [pki.root_der]},
        collateral=lambda ev: {"dcap": collateral},
    )


def test_tdx_key_released_under_the_policy(tmp_path: Path, pki: DcapTestPki) -> None:
    collateral = pki.collateral(datetime.now(UTC))
    backend = tdx_backend(tmp_path, pki, collateral)
    with double(pki, collateral, TDX_MRTD) as kbs:
        assert release_key(kbs.url, RESOURCE, backend, timeout=20) == KEY
        (att,) = kbs.attestations
        assert att["tee"] == "tdx"
        assert att["claims"].measurements["mrtd"] == TDX_MRTD


def test_tdx_refused_for_another_mrtd(tmp_path: Path, pki: DcapTestPki) -> None:
    collateral = pki.collateral(datetime.now(UTC))
    backend = tdx_backend(tmp_path, pki, collateral)
    with double(pki, collateral, "01" * 48) as kbs:
        with pytest.raises(BackendUnavailable, match=r"refused the attestation: 401.*tdx\.mrtd"):
            release_key(kbs.url, RESOURCE, backend, timeout=20)
        assert kbs.released == []


def test_tdx_refused_when_the_pubkey_is_swapped_after_the_quote(
    tmp_path: Path, pki: DcapTestPki
) -> None:
    collateral = pki.collateral(datetime.now(UTC))
    backend = tdx_backend(tmp_path, pki, collateral)
    with double(pki, collateral, TDX_MRTD) as kbs:
        session = KbsSession(kbs.url, context=None, timeout=20)
        nonce, alg = session.auth("tdx")
        att = session.attestation("tdx", nonce, alg, backend, _jose.generate_key())
        assert set(att["tee-evidence"]["primary_evidence"]) == {"cc_eventlog", "quote"}
        att["runtime-data"]["tee-pubkey"] = _jose.public_jwk(_jose.generate_key())
        with pytest.raises(
            BackendUnavailable, match=r"401.*REPORT_DATA is different from that in the tdx"
        ):
            session.attest(att)
