"""Tamper corpus for the DCAP verifiers: every altered quote or collateral must be refused.

Each flipped copy must raise an AttestationError subclass and nothing else (no crash, no
ValueError / KeyError / cryptography exception escaping). A full pass over all bytes of both
quotes (XOR 0x01 and XOR 0xFF, ~19,000 verifications) was run during development and refused
every copy; the corpus here flips 1000+ positions per quote, evenly spread to keep the suite quick.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from blindinfer.attestation import _sgx as sgx
from blindinfer.attestation import _tdx as tdx
from blindinfer.attestation._claims import Claims
from blindinfer.errors import AttestationError, CollateralError, EvidenceError

INSIDE = datetime(2025, 7, 1, tzinfo=UTC)
Verify = Callable[..., Claims]
CASES = {"sgx": (sgx.verify, "sgx/sgx_quote"), "tdx": (tdx.verify, "tdx/tdx_quote")}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # cryptography on mangled names


def load(vectors: Path, kind: str) -> tuple[Verify, bytes, dict[str, bytes]]:
    verify, rel = CASES[kind]
    quote = (vectors / rel).read_bytes()
    coll = {"dcap": (vectors / f"{rel}_collateral.json").read_bytes()}
    return verify, quote, coll


def signed_length(quote: bytes) -> int:
    """Header + body + signature data length field + signature data (Intel DCAP Appendix A)."""
    version = struct.unpack_from("<H", quote)[0]
    if version == 5:
        body_end = 48 + 6 + struct.unpack_from("<I", quote, 50)[0]
    else:
        body_end = 48 + (384 if version == 3 else 584)
    return body_end + 4 + int(struct.unpack_from("<I", quote, body_end)[0])


def positions(quote: bytes, count: int = 1000) -> list[int]:
    """``count`` positions spread evenly over the signed parts, plus every structural field."""
    end = signed_length(quote)
    spread = {round(i * (end - 1) / (count - 1)) for i in range(count)}
    tail = quote[:end]
    chain_start = tail.find(b"-----BEGIN CERTIFICATE-----")
    root_start = tail.rfind(b"-----BEGIN CERTIFICATE-----")
    newline = tail.find(b"\n", chain_start)
    structural = {0, 1, 2, 4, 8, 10, 12, 28, 47, 48, end - 1}  # header fields, last byte
    structural |= set(range(48, 54))  # first body (or v5 body descriptor) bytes
    structural |= {chain_start - 4, chain_start - 6, newline, root_start + 100, end - 2}
    return sorted(p for p in spread | structural if 0 <= p < end)


def refusals(verify: Verify, coll: dict[str, bytes], copies: list[tuple[str, bytes]]) -> list[str]:
    """Descriptions of the copies that were NOT refused with an AttestationError."""
    bad = []
    for label, data in copies:
        try:
            verify(data, coll, at=INSIDE)
            bad.append(f"{label}: accepted")
        except AttestationError:
            pass
        except Exception as exc:
            bad.append(f"{label}: {type(exc).__name__}: {exc}")
    return bad


@pytest.mark.parametrize("kind", sorted(CASES))
def test_untampered_quote_verifies(vectors: Path, kind: str) -> None:
    verify, quote, coll = load(vectors, kind)
    assert verify(quote, coll, at=INSIDE).kind == kind


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_flipped_byte_is_refused(vectors: Path, kind: str) -> None:
    verify, quote, coll = load(vectors, kind)
    spots = positions(quote)
    assert len(spots) >= 1000
    copies = []
    for n, pos in enumerate(spots):
        mask = 0x01 if n % 2 else 0xFF  # a single bit, or the whole byte
        data = bytearray(quote)
        data[pos] ^= mask
        copies.append((f"byte {pos} ^ {mask:#04x}", bytes(data)))
    assert refusals(verify, coll, copies) == []


@pytest.mark.parametrize("kind", sorted(CASES))
def test_truncated_extended_and_random_quotes_are_refused(vectors: Path, kind: str) -> None:
    verify, quote, coll = load(vectors, kind)
    rng = random.Random(1234)
    copies = [(f"first {n} bytes", quote[:n]) for n in (0, 1, 47, 48, 431, 633, 1000, 4000)]
    end = signed_length(quote)
    copies += [("last signed byte cut", quote[: end - 1]), ("appended 0x01", quote + b"\1")]
    copies += [(f"random {n}", rng.randbytes(n)) for n in (48, 632, 4600, 5006)]
    copies += [("header + random", quote[:48] + rng.randbytes(len(quote) - 48))]
    assert refusals(verify, coll, copies) == []
    for _, data in copies:
        assert isinstance(sgx.detect(data), bool) and isinstance(tdx.detect(data), bool)


def test_tdx_padding_after_signature_data(vectors: Path) -> None:
    verify, quote, coll = load(vectors, "tdx")
    end = signed_length(quote)
    assert end < len(quote) and not quote[end:].strip(b"\0")  # the vector carries zero padding
    assert verify(quote[:end], coll, at=INSIDE).kind == "tdx"
    with pytest.raises(EvidenceError, match="non-zero"):
        verify(quote[:-1] + b"\x01", coll, at=INSIDE)


# --- collateral ---------------------------------------------------------------------------------


def _edit_char(text: str, pos: int) -> str:
    while text[pos] in "\n-= ":
        pos += 1
    new = "A" if text[pos] != "A" else "B"
    if text[pos] in "0123456789abcdef":
        new = "0" if text[pos] != "0" else "1"
    return text[:pos] + new + text[pos + 1 :]


def _tcb_info_edits(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    info = json.loads(doc["tcb_info"])
    later = dict(info, nextUpdate="2099-01-01T00:00:00Z")
    levels = info["tcbLevels"]
    promoted = dict(
        info, tcbLevels=[dict(lv, tcbStatus="UpToDate", advisoryIDs=[]) for lv in levels]
    )
    return [
        ("tcb_info nextUpdate moved", dict(doc, tcb_info=json.dumps(later, separators=(",", ":")))),
        (
            "tcb_info levels promoted",
            dict(doc, tcb_info=json.dumps(promoted, separators=(",", ":"))),
        ),
    ]


@pytest.mark.parametrize("kind", sorted(CASES))
def test_tampered_collateral_is_refused(vectors: Path, kind: str) -> None:
    verify, quote, coll = load(vectors, kind)
    doc = json.loads(coll["dcap"])
    variants = _tcb_info_edits(doc)
    for key, value in doc.items():
        if isinstance(value, str) and value:
            for frac in (0.1, 0.35, 0.5, 0.65, 0.9):
                pos = int(len(value) * frac)
                variants.append((f"{key}[{pos}]", dict(doc, **{key: _edit_char(value, pos)})))
    outcome: dict[str, str] = {}
    for label, d in variants:
        try:
            verify(quote, {"dcap": json.dumps(d).encode()}, at=INSIDE)
            outcome[label] = "accepted"
        except Exception as exc:
            outcome[label] = f"{type(exc).__name__}: {exc}"
    wrong = {k: v for k, v in outcome.items() if not v.startswith("CollateralError")}
    assert wrong == {}


def test_tcb_signature_char_flip_is_collateral_error(vectors: Path) -> None:
    verify, quote, coll = load(vectors, "sgx")
    doc = json.loads(coll["dcap"])
    doc["tcb_info_signature"] = _edit_char(doc["tcb_info_signature"], 10)
    with pytest.raises(CollateralError, match="tcb_info"):
        verify(quote, {"dcap": json.dumps(doc).encode()}, at=INSIDE)


# --- trust anchor -------------------------------------------------------------------------------


def _self_signed_root() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    now = datetime(2020, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365 * 40))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_wrong_root_is_refused(vectors: Path, kind: str) -> None:
    verify, quote, coll = load(vectors, kind)
    with pytest.raises(EvidenceError, match="trusted root"):
        verify(quote, coll, at=INSIDE, roots=[_self_signed_root()])
    with pytest.raises(AttestationError):
        verify(quote, coll, at=INSIDE, roots=[b"not a certificate"])
