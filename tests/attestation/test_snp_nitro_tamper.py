"""Tamper corpora: every flipped byte of real SEV-SNP and Nitro evidence must be refused, and only
ever with an AttestationError subclass (never a parser or cryptography exception)."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer.attestation import _nitro as nitro
from blindinfer.attestation import _snp as snp
from blindinfer.errors import AttestationError

SNP_AT = datetime(2025, 1, 1, tzinfo=UTC)
NITRO_AT = datetime(2023, 9, 18, 15, 3, 30, 860000, tzinfo=UTC)


def _flip(data: bytes, pos: int, mask: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


def _masks(n: int) -> list[int]:
    """Alternate single-bit flips with whole-byte flips."""
    return [0xFF if i % 3 == 0 else 1 << (i % 8) for i in range(n)]


def _survivors(
    data: bytes, positions: list[int], verify: Callable[[bytes], object]
) -> list[tuple[int, int]]:
    """Flip each position; return the (position, mask) pairs that verified anyway."""
    accepted = []
    for pos, mask in zip(positions, _masks(len(positions)), strict=True):
        try:
            verify(_flip(data, pos, mask))
        except AttestationError:
            continue
        accepted.append((pos, mask))
    return accepted


# --- SEV-SNP -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snp_report(vectors: Path) -> bytes:
    return (vectors / "snp" / "attestation.bin").read_bytes()


@pytest.fixture(scope="module")
def snp_collateral(vectors: Path) -> dict[str, bytes]:
    return {
        "vcek": (vectors / "snp" / "vcek.testcer").read_bytes(),
        "chain": (vectors / "snp" / "ask_ark_milan.pem").read_bytes(),
    }


def test_snp_untampered_baseline(snp_report: bytes, snp_collateral: dict[str, bytes]) -> None:
    snp.verify(snp_report, snp_collateral, at=SNP_AT)


def test_snp_report_byte_flips_are_refused(
    snp_report: bytes, snp_collateral: dict[str, bytes]
) -> None:
    # Every 5th byte over the whole report (signed body 0x000..0x29F and signature area up to
    # 0x4A0), plus every byte of the fields that matter most.
    positions = sorted(
        set(range(0, len(snp_report), 5))
        | set(range(0x50, 0x58))  # REPORT_DATA
        | set(range(0x90, 0x98))  # MEASUREMENT
        | set(range(0x180, 0x188))  # REPORTED_TCB
        | set(range(0x2A0, 0x2A8))  # SIGNATURE R
        | set(range(0x2E8, 0x2F0))  # SIGNATURE S
    )
    assert len(positions) >= 200
    assert positions[0] == 0 and positions[-1] >= 0x49A
    survivors = _survivors(
        snp_report, positions, lambda r: snp.verify(r, snp_collateral, at=SNP_AT)
    )
    assert survivors == []


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_snp_vcek_byte_flips_are_refused(
    snp_report: bytes, snp_collateral: dict[str, bytes]
) -> None:
    vcek = snp_collateral["vcek"]
    positions = list(range(0, len(vcek), max(1, len(vcek) // 150)))
    survivors = _survivors(
        vcek,
        positions,
        lambda v: snp.verify(snp_report, {**snp_collateral, "vcek": v}, at=SNP_AT),
    )
    assert survivors == []


def test_snp_ask_byte_flips_are_refused(
    snp_report: bytes, snp_collateral: dict[str, bytes]
) -> None:
    ask, ark = x509.load_pem_x509_certificates(snp_collateral["chain"])
    ask_der, ark_pem = ask.public_bytes(Encoding.DER), ark.public_bytes(Encoding.PEM)

    def verify(der: bytes) -> object:
        pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
        chain = pem + b"-----END CERTIFICATE-----\n" + ark_pem
        return snp.verify(snp_report, {**snp_collateral, "chain": chain}, at=SNP_AT)

    verify(ask_der)  # the re-encoded chain still verifies untampered
    positions = list(range(0, len(ask_der), max(1, len(ask_der) // 120)))
    assert _survivors(ask_der, positions, verify) == []


def test_snp_garbage_never_crashes(snp_collateral: dict[str, bytes]) -> None:
    rng = random.Random(1184)
    for size in (0, 1, 100, 1183, 1184, 1184, 1184, 1185, 4096):
        blob = bytes(rng.getrandbits(8) for _ in range(size))
        snp.detect(blob)
        with pytest.raises(AttestationError):
            snp.verify(blob, snp_collateral, at=SNP_AT)


# --- Nitro -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nitro_doc(vectors: Path) -> bytes:
    return base64.b64decode((vectors / "nitro" / "valid-attestation-doc-base64").read_text())


def test_nitro_untampered_baseline(nitro_doc: bytes) -> None:
    nitro.verify(nitro_doc, {}, at=NITRO_AT)


def test_nitro_byte_flips_are_refused(nitro_doc: bytes) -> None:
    n = len(nitro_doc)
    positions = sorted(
        set(range(0, 16))  # array head, protected header {1: -35}, unprotected, payload head
        | set(range(16, n - 96, (n - 112) // 200))  # the payload (fields, PCRs, certificates)
        | set(range(n - 98, n, 4))  # the signature's head and r || s
    )
    assert len(positions) >= 200
    survivors = _survivors(nitro_doc, positions, lambda d: nitro.verify(d, {}, at=NITRO_AT))
    assert survivors == []


def test_nitro_truncations_and_garbage_never_crash(nitro_doc: bytes) -> None:
    for cut in range(0, len(nitro_doc), 97):
        nitro.detect(nitro_doc[:cut])
        with pytest.raises(AttestationError):
            nitro.verify(nitro_doc[:cut], {}, at=NITRO_AT)
    with pytest.raises(AttestationError):
        nitro.verify(nitro_doc + b"\x00", {}, at=NITRO_AT)
    rng = random.Random(18)
    for size in (1, 4, 64, 4096):
        blob = bytes(rng.getrandbits(8) for _ in range(size))
        nitro.detect(blob)
        with pytest.raises(AttestationError):
            nitro.verify(blob, {}, at=NITRO_AT)
