"""configfs-tsm producer (TDX and SEV-SNP) against an emulated report interface and real vectors."""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer._tee import create_backend
from blindinfer._tee.base import SEALING_KEY_ENV, BackendUnavailable
from blindinfer._tee.configfs_tsm import (
    ConfigfsTsmBackend,
    OsTsmFs,
    parse_cert_table,
    quote_report_data,
    snp_collateral_from_auxblob,
    snp_report_data,
)
from blindinfer.attestation import _snp as snp
from blindinfer.errors import CollateralError, ConfigError
from tests.tee.emulation import (
    SNP_REPORT_DATA,
    TDX_REPORT_DATA,
    ConfigfsTsmEmulation,
    cert_table,
    patch,
)
from tests.tee.sev_guest_emulator import KEY_REQ, SevGuestEmulator

RD = bytes(range(64))
VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes
ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes


@pytest.fixture
def tdx_quote(vectors: Path) -> bytes:
    return (vectors / "tdx" / "tdx_quote").read_bytes()


@pytest.fixture
def snp_report(vectors: Path) -> bytes:
    return (vectors / "snp" / "attestation.bin").read_bytes()


@pytest.fixture
def amd_certs(vectors: Path) -> tuple[bytes, bytes, bytes]:
    vcek = (vectors / "snp" / "vcek.testcer").read_bytes()
    ask, ark = x509.load_pem_x509_certificates((vectors / "snp" / "ask_ark_milan.pem").read_bytes())
    return vcek, ask.public_bytes(Encoding.DER), ark.public_bytes(Encoding.DER)


def tdx_emulation(root: Path, quote: bytes) -> ConfigfsTsmEmulation:
    return ConfigfsTsmEmulation(root, "tdx_guest", lambda rd: patch(quote, TDX_REPORT_DATA, rd))


def snp_emulation(root: Path, report: bytes, auxblob: bytes = b"") -> ConfigfsTsmEmulation:
    return ConfigfsTsmEmulation(
        root, "sev_guest", lambda rd: patch(report, SNP_REPORT_DATA, rd), auxblob=auxblob
    )


def backend(name: str, fs: ConfigfsTsmEmulation, **options: object) -> ConfigfsTsmBackend:
    return ConfigfsTsmBackend(name, tsm_root=fs.root, fs=fs, **options)  # type: ignore[arg-type]


# --- TDX ---------------------------------------------------------------------------------------


def test_tdx_quote_over_inblob(tmp_path: Path, tdx_quote: bytes) -> None:
    fs = tdx_emulation(tmp_path / "report", tdx_quote)
    evidence = backend("tdx", fs).get_evidence(RD)
    assert evidence.kind == "tdx"
    parsed = dcap_qvl.parse_quote(evidence.evidence)
    assert parsed.is_tdx()
    assert bytes(parsed.report.report_data) == RD
    assert parsed.report.mr_td.hex().startswith("91eb2b44d141d4ece09f0c75c2c53d24")
    assert len(fs.created) == 1
    assert fs.live_entries() == []  # entry removed afterwards
    assert fs.created[0].name.startswith("blindinfer-")


def test_tdx_refuses_quote_over_other_report_data(tmp_path: Path, tdx_quote: bytes) -> None:
    fs = ConfigfsTsmEmulation(tmp_path / "report", "tdx_guest", lambda rd: tdx_quote)
    with pytest.raises(BackendUnavailable, match="not the requested"):
        backend("tdx", fs).get_evidence(RD)
    assert fs.live_entries() == []


def test_tdx_refuses_non_tdx_evidence(tmp_path: Path, vectors: Path) -> None:
    sgx = (vectors / "sgx" / "sgx_quote").read_bytes()
    fs = ConfigfsTsmEmulation(tmp_path / "report", "tdx_guest", lambda rd: sgx)
    with pytest.raises(BackendUnavailable, match="malformed tdx evidence"):
        backend("tdx", fs).get_evidence(RD)


def test_tdx_v5_quote_report_data(vectors: Path) -> None:
    quote = (vectors / "tdx" / "tdx_quote_outdated").read_bytes()
    assert quote[:2] == b"\x05\x00"
    parsed = dcap_qvl.parse_quote(quote)
    assert quote_report_data(quote) == bytes(parsed.report.report_data)


def test_unique_entries_per_request(tmp_path: Path, tdx_quote: bytes) -> None:
    fs = tdx_emulation(tmp_path / "report", tdx_quote)
    b = backend("tdx", fs)
    for i in range(3):
        assert quote_report_data(b.get_evidence(bytes([i]) * 64).evidence) == bytes([i]) * 64
    assert len(set(fs.created)) == 3
    assert fs.live_entries() == []


def test_wrong_provider_is_refused(tmp_path: Path, tdx_quote: bytes) -> None:
    fs = ConfigfsTsmEmulation(tmp_path / "report", "sev_guest", lambda rd: tdx_quote)
    with pytest.raises(BackendUnavailable, match=r"'tdx_guest'.*'sev_guest'"):
        create_backend("tdx", tmp_path / "data", tsm_root=fs.root, fs=fs)
    assert fs.live_entries() == []


def test_missing_configfs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="configfs-tsm not found"):
        create_backend("tdx", tmp_path, tsm_root=tmp_path / "nope")


def test_plain_directory_is_not_configfs(tmp_path: Path) -> None:
    # The production OsTsmFs on a plain directory: mkdir creates no attributes, so it fails.
    (tmp_path / "report").mkdir()
    with pytest.raises(FileNotFoundError):
        create_backend("tdx", tmp_path, tsm_root=tmp_path / "report", fs=OsTsmFs())


# --- generation conflicts ----------------------------------------------------------------------


def test_concurrent_writer_is_detected_and_retried(tmp_path: Path, tdx_quote: bytes) -> None:
    fs = tdx_emulation(tmp_path / "report", tdx_quote)
    hits: list[Path] = []

    def intruder(entry: Path) -> None:
        if not hits:  # another writer sneaks in once, while the outblob is read
            hits.append(entry)
            fs.write(entry / "inblob", b"\xff" * 64)

    fs.on_outblob = intruder
    evidence = backend("tdx", fs).get_evidence(RD)
    assert quote_report_data(evidence.evidence) == RD
    assert len(fs.created) == 2
    assert fs.live_entries() == []


def test_persistent_conflict_gives_up(tmp_path: Path, tdx_quote: bytes) -> None:
    fs = tdx_emulation(tmp_path / "report", tdx_quote)
    fs.on_outblob = lambda entry: fs.write(entry / "inblob", b"\xff" * 64)
    with pytest.raises(BackendUnavailable, match="3 tries"):
        backend("tdx", fs).get_evidence(RD)
    assert len(fs.created) == 3
    assert fs.live_entries() == []


def test_privlevel_is_written_and_counted(tmp_path: Path, snp_report: bytes) -> None:
    fs = snp_emulation(tmp_path / "report", snp_report)
    seen: list[bytes] = []

    def spy(entry: Path) -> None:
        seen.append((entry / "privlevel").read_bytes())
        seen.append((entry / "generation").read_bytes())

    fs.on_outblob = spy
    evidence = backend("sev-snp", fs, privlevel=2).get_evidence(RD)
    assert snp_report_data(evidence.evidence) == RD
    assert seen == [b"2", b"2\n"]  # two writes: privlevel then inblob


# --- SEV-SNP -----------------------------------------------------------------------------------


def test_snp_report_with_certificate_table(
    tmp_path: Path, snp_report: bytes, amd_certs: tuple[bytes, bytes, bytes], vectors: Path
) -> None:
    vcek, ask, ark = amd_certs
    table = cert_table([(VCEK, vcek), (ASK, ask), (ARK, ark)])
    fs = snp_emulation(tmp_path / "report", snp_report, auxblob=table)

    def must_not_be_called(evidence: bytes) -> Mapping[str, bytes]:
        raise AssertionError("KDS must not be asked when the host supplies certificates")

    evidence = backend("sev-snp", fs, collateral=must_not_be_called).get_evidence(RD)
    assert evidence.kind == "snp"
    assert snp_report_data(evidence.evidence) == RD
    assert evidence.evidence[0x90:] == snp_report[0x90:]
    assert evidence.collateral["vcek"] == vcek
    chain = x509.load_pem_x509_certificates(evidence.collateral["chain"])
    expected = x509.load_pem_x509_certificates((vectors / "snp" / "ask_ark_milan.pem").read_bytes())
    assert chain == expected


def test_snp_without_auxblob_uses_the_provider(tmp_path: Path, snp_report: bytes) -> None:
    fs = snp_emulation(tmp_path / "report", snp_report)
    calls: list[bytes] = []

    def kds(evidence: bytes) -> Mapping[str, bytes]:
        calls.append(evidence)
        return {"vcek": b"V", "chain": b"C"}

    evidence = backend("sev-snp", fs, collateral=kds).get_evidence(RD)
    assert evidence.collateral == {"vcek": b"V", "chain": b"C"}
    assert calls == [evidence.evidence]


def test_snp_provider_failure_leaves_collateral_empty(tmp_path: Path, snp_report: bytes) -> None:
    def kds(evidence: bytes) -> Mapping[str, bytes]:
        raise CollateralError("KDS unreachable")

    fs = snp_emulation(tmp_path / "report", snp_report)
    assert backend("sev-snp", fs, collateral=kds).get_evidence(RD).collateral == {}


def test_snp_refuses_real_report_with_other_report_data(tmp_path: Path, snp_report: bytes) -> None:
    fs = ConfigfsTsmEmulation(tmp_path / "report", "sev_guest", lambda rd: snp_report)
    with pytest.raises(BackendUnavailable, match="0102030405"):
        backend("sev-snp", fs).get_evidence(RD)


def test_cert_table_parsing(amd_certs: tuple[bytes, bytes, bytes]) -> None:
    vcek, _ask, ark = amd_certs
    table = cert_table([(ARK, ark), (VCEK, vcek)])
    assert parse_cert_table(table) == {ARK: ark, VCEK: vcek}
    assert snp_collateral_from_auxblob(table) == {}  # ASK missing: not usable
    assert snp_collateral_from_auxblob(b"") == {}
    with pytest.raises(ValueError, match="terminating"):
        parse_cert_table(struct.pack("<16sII", VCEK, 24, 4) + b"cert")
    bad = bytearray(table)
    bad[16:20] = (10**6).to_bytes(4, "little")
    with pytest.raises(ValueError, match="outside"):
        parse_cert_table(bytes(bad))
    assert snp_collateral_from_auxblob(bytes(bad)) == {}


def test_create_snp_through_registry(tmp_path: Path, snp_report: bytes) -> None:
    fs = snp_emulation(tmp_path / "report", snp_report)
    b = create_backend(
        "sev-snp",
        tmp_path / "data",
        tsm_root=fs.root,
        fs=fs,
        amd_product="Milan",
        kds_url="http://k",
    )
    assert (b.name, b.kind, b.insecure) == ("sev-snp", "snp", False)
    provider = b._collateral  # type: ignore[attr-defined]
    assert (provider.product, provider.base_url) == ("milan", "http://k")
    assert fs.live_entries() == []  # the start-up probe cleaned up


# --- sealing -----------------------------------------------------------------------------------


def test_sealing_key_requires_a_key_file(
    tmp_path: Path, tdx_quote: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SEALING_KEY_ENV, raising=False)
    b = backend("tdx", tdx_emulation(tmp_path / "r", tdx_quote))
    with pytest.raises(BackendUnavailable, match="key broker"):
        b.sealing_key()


def test_sealing_key_from_env_file(
    tmp_path: Path, tdx_quote: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = bytes(range(32))
    (tmp_path / "raw").write_bytes(key)
    (tmp_path / "hex").write_text(key.hex() + "\n")
    (tmp_path / "short").write_bytes(key[:31])
    b = backend("tdx", tdx_emulation(tmp_path / "r", tdx_quote))
    monkeypatch.setenv(SEALING_KEY_ENV, str(tmp_path / "raw"))
    assert b.sealing_key() == key
    monkeypatch.setenv(SEALING_KEY_ENV, str(tmp_path / "hex"))
    assert b.sealing_key() == key
    monkeypatch.setenv(SEALING_KEY_ENV, str(tmp_path / "short"))
    with pytest.raises(BackendUnavailable, match="exactly 32 bytes"):
        b.sealing_key()
    monkeypatch.setenv(SEALING_KEY_ENV, str(tmp_path / "absent"))
    with pytest.raises(BackendUnavailable, match="cannot read"):
        b.sealing_key()
    option = backend(
        "tdx", tdx_emulation(tmp_path / "r2", tdx_quote), sealing_key_file=tmp_path / "hex"
    )
    assert option.sealing_key() == key


# --- SNP sealing key source ---------------------------------------------------------------------


def test_snp_derived_sealing_key(tmp_path: Path, snp_report: bytes) -> None:
    measurement = snp.parse_report(snp_report).measurement
    guest = SevGuestEmulator(tmp_path / "sev-guest", measurement=measurement)
    fs = snp_emulation(tmp_path / "report", snp_report)
    b = create_backend(
        "sev-snp",
        tmp_path / "d",
        tsm_root=fs.root,
        fs=fs,
        key_source="derived",
        sev_guest_device=str(guest.device),
        sev_guest_ioctl=guest,
    )
    first = b.sealing_key()
    assert len(first) == 32
    assert b.sealing_key() == first
    root, _, select, vmpl, _, _ = KEY_REQ.unpack(guest.requests[0])
    assert (root, select, vmpl) == (0, 0b1001, 0)  # VCEK, MEASUREMENT | GUEST_POLICY, VMPL 0
    # another image (measurement) on the same chip: another key
    other = SevGuestEmulator(tmp_path / "other", measurement=bytes(48))
    b2 = backend(
        "sev-snp", fs, key_source="derived", sev_guest_device=other.device, sev_guest_ioctl=other
    )
    assert b2.sealing_key() != first


def test_snp_derived_key_options_from_the_command_line(tmp_path: Path, snp_report: bytes) -> None:
    guest = SevGuestEmulator(tmp_path / "sev-guest", current_vmpl=1)
    fs = snp_emulation(tmp_path / "report", snp_report)
    b = create_backend(
        "sev-snp",
        tmp_path / "d",
        tsm_root=str(fs.root),
        fs=fs,
        key_source="derived",
        sev_guest_device=str(guest.device),
        sev_guest_ioctl=guest,
        privlevel="1",
        key_fields="measurement,tcb_version",
        key_tcb_version="0x0000000000000303",
    )
    assert len(b.sealing_key()) == 32
    assert KEY_REQ.unpack(guest.requests[0]) == (0, 0, 0b101000, 1, 0, 0x303)


def test_snp_derived_key_refuses_bad_options(tmp_path: Path, snp_report: bytes) -> None:
    fs = snp_emulation(tmp_path / "report", snp_report)
    with pytest.raises(ConfigError, match="key_source"):
        backend("sev-snp", fs, key_source="broker")
    with pytest.raises(ConfigError, match="unknown SNP derived-key field"):
        backend("sev-snp", fs, key_source="derived", key_fields="measurement,chip_id")
    with pytest.raises(ConfigError, match="root_key"):
        backend("sev-snp", fs, key_source="derived", key_root="ark")
    with pytest.raises(ConfigError, match="key_tcb_version must be an integer"):
        create_backend("sev-snp", tmp_path, tsm_root=fs.root, fs=fs, key_tcb_version="new")


def test_tdx_has_no_derived_key(tmp_path: Path, tdx_quote: bytes) -> None:
    with pytest.raises(BackendUnavailable, match="SNP only"):
        backend("tdx", tdx_emulation(tmp_path / "r", tdx_quote), key_source="derived")


def test_snp_derived_key_without_the_device(tmp_path: Path, snp_report: bytes) -> None:
    fs = snp_emulation(tmp_path / "report", snp_report)
    b = backend("sev-snp", fs, key_source="derived", sev_guest_device=tmp_path / "absent")
    with pytest.raises(BackendUnavailable, match=r"no .*absent"):
        b.sealing_key()


def test_snp_derived_key_firmware_refusal(tmp_path: Path, snp_report: bytes) -> None:
    guest = SevGuestEmulator(tmp_path / "sev-guest", current_vmpl=2)  # under an SVSM
    fs = snp_emulation(tmp_path / "report", snp_report)
    b = backend(
        "sev-snp", fs, key_source="derived", sev_guest_device=guest.device, sev_guest_ioctl=guest
    )  # asks for VMPL 0: below the guest's
    with pytest.raises(BackendUnavailable, match="status 0x16 SEV_RET_INVALID_PARAM"):
        b.sealing_key()


def test_snp_file_key_warns_once_at_start(
    tmp_path: Path,
    snp_report: bytes,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = bytes(range(32))
    (tmp_path / "key").write_bytes(key)
    fs = snp_emulation(tmp_path / "report", snp_report)
    with caplog.at_level(logging.WARNING, logger="blindinfer._tee.configfs_tsm"):
        b = create_backend(
            "sev-snp", tmp_path / "d", tsm_root=fs.root, fs=fs, sealing_key_file=tmp_path / "key"
        )
        assert b.sealing_key() == key
        assert b.sealing_key() == key
    warnings = [r for r in caplog.records if "development only" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "the sealing key comes from a file the operator supplies" in warnings[0].getMessage()
    assert key.hex() not in caplog.text
    assert b.key_source == "file"  # still the default


def test_snp_derived_key_does_not_warn_nor_log_the_key(
    tmp_path: Path, snp_report: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    guest = SevGuestEmulator(tmp_path / "sev-guest")
    fs = snp_emulation(tmp_path / "report", snp_report)
    with caplog.at_level(logging.DEBUG):
        b = backend(
            "sev-snp",
            fs,
            key_source="derived",
            sev_guest_device=guest.device,
            sev_guest_ioctl=guest,
        )
        key = b.sealing_key()
    assert "development only" not in caplog.text
    assert key.hex() not in caplog.text


def test_string_options_from_the_command_line(tmp_path: Path, snp_report: bytes) -> None:
    fs = snp_emulation(tmp_path / "report", snp_report)
    b = create_backend(
        "sev-snp", tmp_path / "d", tsm_root=str(fs.root), fs=fs, privlevel="1", retries="2"
    )
    assert snp_report_data(b.get_evidence(RD).evidence) == RD


def test_report_data_parsers_are_the_verifiers(snp_report: bytes, tdx_quote: bytes) -> None:
    """Producer checks use attestation/'s parsers: wrong sizes and cut quotes are ValueErrors."""
    with pytest.raises(ValueError, match="1184"):
        snp_report_data(snp_report[:0x90])
    with pytest.raises(ValueError, match="truncated"):
        quote_report_data(tdx_quote[:700])
