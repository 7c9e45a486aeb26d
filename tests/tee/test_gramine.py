"""Gramine-SGX producer against an emulated /dev/attestation serving the real SGX quote."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import dcap_qvl
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from blindinfer._tee import create_backend
from blindinfer._tee.base import BackendUnavailable
from blindinfer._tee.gramine import GramineSgxBackend, quote_report_data
from blindinfer.errors import CollateralError
from tests.tee.emulation import SGX_REPORT_DATA, GramineAttestationFs, patch

RD = hashlib.sha256(b"certificate").digest() + hashlib.sha256(b"nonce").digest()


@pytest.fixture
def real_quote(vectors: Path) -> bytes:
    return (vectors / "sgx" / "sgx_quote").read_bytes()


@pytest.fixture
def device(tmp_path: Path, real_quote: bytes) -> Iterator[GramineAttestationFs]:
    emu = GramineAttestationFs(
        tmp_path / "attestation", lambda rd: patch(real_quote, SGX_REPORT_DATA, rd)
    )
    with emu:
        yield emu


def test_quote_carries_the_written_report_data(
    device: GramineAttestationFs, real_quote: bytes
) -> None:
    backend = GramineSgxBackend(device.root)
    evidence = backend.get_evidence(RD)
    assert evidence.kind == "sgx"
    assert device.writes == [RD]
    parsed = dcap_qvl.parse_quote(evidence.evidence)  # real format end to end
    assert bytes(parsed.report.report_data) == RD
    assert parsed.report.mr_enclave.hex() == (
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    )
    # everything but REPORTDATA is the hardware's quote, byte for byte
    assert evidence.evidence[: SGX_REPORT_DATA.start] == real_quote[: SGX_REPORT_DATA.start]
    assert evidence.evidence[SGX_REPORT_DATA.stop :] == real_quote[SGX_REPORT_DATA.stop :]
    assert evidence.collateral == {}


def test_refuses_quote_over_other_report_data(tmp_path: Path, real_quote: bytes) -> None:
    # The real vector says b"Hello, world!": a device replaying it must be caught.
    emu = GramineAttestationFs(tmp_path / "attestation", lambda rd: real_quote)
    with emu, pytest.raises(BackendUnavailable, match="not the requested") as info:
        GramineSgxBackend(emu.root).get_evidence(RD)
    assert b"Hello, world!".hex() in str(info.value)


def test_refuses_malformed_quote(tmp_path: Path) -> None:
    emu = GramineAttestationFs(tmp_path / "a", lambda rd: b"\x03\x00" + bytes(10))
    with emu, pytest.raises(BackendUnavailable, match="malformed quote"):
        GramineSgxBackend(emu.root).get_evidence(RD)


def test_report_data_length_enforced(device: GramineAttestationFs) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        GramineSgxBackend(device.root).get_evidence(RD[:32])
    assert device.writes == []


def test_concurrent_requests_each_get_their_own_quote(device: GramineAttestationFs) -> None:
    backend = GramineSgxBackend(device.root)
    wanted = [bytes([i]) * 64 for i in range(8)]
    got: dict[bytes, bytes] = {}

    def worker(rd: bytes) -> None:
        got[rd] = quote_report_data(backend.get_evidence(rd).evidence)

    threads = [threading.Thread(target=worker, args=(rd,)) for rd in wanted]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {rd: rd for rd in wanted}
    assert device.quotes_served == 8


def test_collateral_is_attached(device: GramineAttestationFs, vectors: Path) -> None:
    collateral = (vectors / "sgx" / "sgx_quote_collateral.json").read_bytes()
    seen: list[bytes] = []

    def provider(evidence: bytes) -> Mapping[str, bytes]:
        seen.append(evidence)
        return {"dcap": collateral}

    evidence = GramineSgxBackend(device.root, collateral=provider).get_evidence(RD)
    assert evidence.collateral == {"dcap": collateral}
    assert seen == [evidence.evidence]


def test_collateral_failure_still_yields_evidence(device: GramineAttestationFs) -> None:
    def provider(evidence: bytes) -> Mapping[str, bytes]:
        raise CollateralError("PCCS down")

    evidence = GramineSgxBackend(device.root, collateral=provider).get_evidence(RD)
    assert evidence.collateral == {}
    assert quote_report_data(evidence.evidence) == RD


def test_create_through_registry(device: GramineAttestationFs, tmp_path: Path) -> None:
    backend = create_backend(
        "gramine-sgx", tmp_path / "data", attestation_root=device.root, collateral=lambda q: {}
    )
    assert (backend.name, backend.kind, backend.insecure) == ("gramine-sgx", "sgx", False)
    assert quote_report_data(backend.get_evidence(RD).evidence) == RD


def test_create_builds_a_default_pccs_provider(
    device: GramineAttestationFs, tmp_path: Path
) -> None:
    backend = create_backend(
        "gramine-sgx", tmp_path / "data", attestation_root=device.root, pccs_url="http://x"
    )
    provider = backend._collateral  # type: ignore[attr-defined]
    assert provider.pccs_url == "http://x"
    assert provider.cache.directory == tmp_path / "data" / "collateral"


def test_attestation_type_none_is_refused(tmp_path: Path) -> None:
    emu = GramineAttestationFs(tmp_path / "a", bytes, attestation_type="none")
    with emu, pytest.raises(BackendUnavailable, match=r"sgx\.remote_attestation = \"dcap\""):
        create_backend("gramine-sgx", tmp_path, attestation_root=emu.root)


def test_outside_gramine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="inside a Gramine-SGX enclave"):
        create_backend("gramine-sgx", tmp_path, attestation_root=tmp_path / "missing")


def test_sealing_key_is_hkdf_of_the_mrenclave_key(device: GramineAttestationFs) -> None:
    raw = (device.root / "keys" / "_sgx_mrenclave").read_bytes()
    key = GramineSgxBackend(device.root).sealing_key()
    assert len(key) == 32
    assert key != raw and raw not in key
    expected = HKDF(
        hashes.SHA256(),
        32,
        salt=None,
        info=b"blindinfer model store sealing key v1 (sgx mrenclave)",
    ).derive(raw)
    assert key == expected
    assert GramineSgxBackend(device.root).sealing_key() == key  # stable across restarts


def test_sealing_key_follows_the_enclave_key(tmp_path: Path) -> None:
    keys = []
    for i, seal in enumerate((b"\x01" * 16, b"\x02" * 16)):
        with GramineAttestationFs(tmp_path / str(i), bytes, seal_key=seal) as emu:
            keys.append(GramineSgxBackend(emu.root).sealing_key())
    assert keys[0] != keys[1]


def test_sealing_key_file_must_be_16_bytes(tmp_path: Path) -> None:
    emu = GramineAttestationFs(tmp_path / "a", bytes, seal_key=b"\x01" * 15)
    with emu, pytest.raises(BackendUnavailable, match="expected 16"):
        GramineSgxBackend(emu.root).sealing_key()


def test_quote_report_data_parser(real_quote: bytes, vectors: Path) -> None:
    assert quote_report_data(real_quote) == b"Hello, world!".ljust(64, b"\x00")
    with pytest.raises(ValueError, match="not an SGX quote v3"):
        quote_report_data((vectors / "tdx" / "tdx_quote").read_bytes())


def test_quote_report_data_uses_the_strict_layout_parse(real_quote: bytes) -> None:
    """The producer reads REPORTDATA with the verifier's parser: a cut quote is refused."""
    with pytest.raises(ValueError, match="truncated"):
        quote_report_data(real_quote[:600])
