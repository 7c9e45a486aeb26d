"""Test-only forgery kit: real SEV-SNP and Nitro formats, signed by roots made inside the test.

Evidence built here verifies only when the test passes its own root (``roots=[...]``) to the
verifier; against the pinned AMD / AWS roots it must be refused. Useful for end-to-end tests that
need evidence binding a chosen TLS key.

- SEV-SNP: ``make_test_snp_chain()`` (ARK/ASK RSASSA-PSS SHA-384, VCEK ECDSA P-384 with the AMD
  hwID and SPL extensions), ``build_snp_report(...)`` (ABI spec Table 23 layout) and
  ``sign_snp_report(report, vcek_key)``.
- Nitro: ``make_test_nitro_chain()`` (root -> intermediate -> leaf, ECDSA P-384) and
  ``make_test_nitro_root_and_doc(user_data=..., pcrs=...)`` (COSE_Sign1, ES384).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2034, 1, 1, tzinfo=UTC)
VERIFY_AT = datetime(2025, 6, 1, tzinfo=UTC)

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_AMD_OID = "1.3.6.1.4.1.3704.1"

DEFAULT_CHIP_ID = bytes(range(1, 65))
DEFAULT_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
TURIN_TCB = {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}


def _name(cn: str, *, amd: bool = False) -> x509.Name:
    if amd:  # AMD's distinguished names, attribute for attribute (OU, C, L, ST, O, CN)
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
                x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "blindinfer test"),
        ]
    )


def _builder(
    subject: str,
    issuer: str,
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    ca: bool,
    amd: bool = False,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject, amd=amd))
        .issuer_name(_name(issuer, amd=amd))
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- SEV-SNP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnpChain:
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    product: str
    chip_id: bytes
    tcb: dict[str, int]

    @property
    def ark_der(self) -> bytes:
        return _der(self.ark)

    def collateral(self) -> dict[str, bytes]:
        """``{"vcek": DER, "chain": ASK + ARK PEM}``, as the verifier expects."""
        return {"vcek": _der(self.vcek), "chain": _pem(self.ask) + _pem(self.ark)}


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


@cache
def _rsa_key(label: str) -> rsa.RSAPrivateKey:
    del label  # one cached key per role
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_test_snp_chain(
    product: str = "milan",
    chip_id: bytes = DEFAULT_CHIP_ID,
    tcb: dict[str, int] | None = None,
    *,
    hwid: bytes | None = None,
) -> SnpChain:
    """A test ARK -> ASK -> VCEK chain named like AMD's (``ARK-Milan``, ``SEV-Milan``...).

    The VCEK carries the hwID extension (``hwid``, default ``chip_id``; Turin: its first 8 bytes)
    and the SPL extensions of ``tcb``.
    """
    tcb = dict(tcb or (TURIN_TCB if product == "turin" else DEFAULT_TCB))
    fam = product.capitalize()
    ark_key, ask_key = _rsa_key(f"ark-{product}"), _rsa_key(f"ask-{product}")
    ark = _builder(f"ARK-{fam}", f"ARK-{fam}", ark_key.public_key(), ca=True, amd=True).sign(
        ark_key, hashes.SHA384(), rsa_padding=_PSS
    )
    ask = _builder(f"SEV-{fam}", f"ARK-{fam}", ask_key.public_key(), ca=True, amd=True).sign(
        ark_key, hashes.SHA384(), rsa_padding=_PSS
    )
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    if hwid is None:
        hwid = chip_id[:8] if product == "turin" else chip_id
    oids = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}
    builder = _builder("SEV-VCEK", f"SEV-{fam}", vcek_key.public_key(), ca=False, amd=True)
    product_name = f"{fam}-B0".encode()  # IA5String, like AMD's "Milan-B0"
    builder = builder.add_extension(
        x509.UnrecognizedExtension(
            x509.ObjectIdentifier(f"{_AMD_OID}.2"), bytes([0x16, len(product_name)]) + product_name
        ),
        critical=False,
    )
    for part, value in tcb.items():
        ext = x509.UnrecognizedExtension(
            x509.ObjectIdentifier(f"{_AMD_OID}.{oids[part]}"), _der_int(value)
        )
        builder = builder.add_extension(ext, critical=False)
    builder = builder.add_extension(
        x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{_AMD_OID}.4"), hwid), critical=False
    )
    vcek = builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)
    return SnpChain(ark, ask, vcek, vcek_key, product, chip_id, tcb)


def encode_tcb(tcb: dict[str, int], product: str = "milan") -> bytes:
    """TCB_VERSION bytes (ABI spec): Milan/Genoa BL,TEE,-,-,-,-,SNP,UCODE; Turin FMC,BL,TEE,SNP."""
    out = bytearray(8)
    if product == "turin":
        out[0], out[1], out[2], out[3] = tcb["fmc"], tcb["bootloader"], tcb["tee"], tcb["snp"]
    else:
        out[0], out[1], out[6] = tcb["bootloader"], tcb["tee"], tcb["snp"]
    out[7] = tcb["microcode"]
    return bytes(out)


def build_snp_report(
    *,
    report_data: bytes = b"\x00" * 64,
    measurement: bytes = b"\x11" * 48,
    host_data: bytes = b"\x00" * 32,
    policy: int = 0x30000,
    vmpl: int = 0,
    guest_svn: int = 0,
    version: int = 3,
    family_id: bytes = b"\x00" * 16,
    image_id: bytes = b"\x00" * 16,
    chip_id: bytes = DEFAULT_CHIP_ID,
    tcb: dict[str, int] | None = None,
    product: str = "milan",
    flags: int = 0,
) -> bytearray:
    """An unsigned 1184-byte ATTESTATION_REPORT (ABI spec Table 23 offsets)."""
    tcb_raw = encode_tcb(tcb or (TURIN_TCB if product == "turin" else DEFAULT_TCB), product)
    r = bytearray(0x4A0)
    struct.pack_into("<IIQ", r, 0x00, version, guest_svn, policy)
    r[0x10:0x20], r[0x20:0x30] = family_id, image_id
    struct.pack_into("<II", r, 0x30, vmpl, 1)
    r[0x38:0x40] = tcb_raw  # CURRENT_TCB
    struct.pack_into("<QI", r, 0x40, 1, flags)
    r[0x50:0x90], r[0x90:0xC0], r[0xC0:0xE0] = report_data, measurement, host_data
    r[0x140:0x160] = b"\x42" * 32  # REPORT_ID
    r[0x160:0x180] = b"\xff" * 32  # REPORT_ID_MA
    r[0x180:0x188] = tcb_raw  # REPORTED_TCB
    if version >= 3:
        r[0x188:0x18B] = (b"\x1a\x02\x00") if product == "turin" else b"\x19\x01\x01"
    r[0x1A0:0x1E0] = chip_id
    r[0x1E0:0x1E8] = tcb_raw  # COMMITTED_TCB
    r[0x1E8:0x1EC] = r[0x1EC:0x1F0] = b"\x03\x37\x01\x00"  # build 3, 1.55
    r[0x1F0:0x1F8] = tcb_raw  # LAUNCH_TCB
    return r


def sign_snp_report(report: bytes | bytearray, vcek_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign bytes 0x000..0x29F (ECDSA P-384 SHA-384); R and S as 72-byte little-endian fields."""
    out = bytearray(report)
    der = vcek_key.sign(bytes(out[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    out[0x2A0:0x4A0] = b"\x00" * 0x200
    out[0x2A0:0x2E8] = r.to_bytes(72, "little")
    out[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(out)


def make_test_snp_evidence(
    product: str = "milan", **report_fields: Any
) -> tuple[bytes, dict[str, bytes], bytes]:
    """(signed report, collateral, test ARK DER) for a fresh test chain."""
    chain = make_test_snp_chain(product)
    report = build_snp_report(
        chip_id=chain.chip_id, tcb=chain.tcb, product=product, **report_fields
    )
    return sign_snp_report(report, chain.vcek_key), chain.collateral(), chain.ark_der


# --- AWS Nitro ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NitroChain:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @property
    def root_der(self) -> bytes:
        return _der(self.root)


def make_test_nitro_chain(
    not_before: datetime = NOT_BEFORE, not_after: datetime = NOT_AFTER
) -> NitroChain:
    """root (self-signed CA) -> intermediate CA -> leaf, all ECDSA P-384 / SHA-384.

    Like AWS's leaf, the test leaf has no AuthorityKeyIdentifier.
    """
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(3)]
    names = ["test.nitro-enclaves", "zone.test.nitro-enclaves", "i-0test-enc0test.test.aws"]
    certs: list[x509.Certificate] = []
    for i, key in enumerate(keys):
        issuer_key = keys[max(i - 1, 0)]
        builder = _builder(
            names[i],
            names[max(i - 1, 0)],
            key.public_key(),
            ca=i < 2,
            not_before=not_before,
            not_after=not_after,
        )
        certs.append(builder.sign(issuer_key, hashes.SHA384()))
    return NitroChain(certs[0], certs[1], certs[2], keys[2])


def sign_cose_sign1(
    payload: bytes, key: ec.EllipticCurvePrivateKey, *, tagged: bool = False
) -> bytes:
    """COSE_Sign1 with protected {1: -35}, signature r||s over the RFC 9052 Sig_structure."""
    protected = cbor2.dumps({1: -35})
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
    doc: object = [protected, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")]
    if tagged:
        doc = cbor2.CBORTag(18, doc)
    return bytes(cbor2.dumps(doc))


def make_nitro_payload(
    chain: NitroChain,
    *,
    user_data: bytes | None = None,
    pcrs: dict[int, bytes] | None = None,
    public_key: bytes | None = None,
    nonce: bytes | None = None,
    timestamp: datetime = VERIFY_AT,
) -> bytes:
    if pcrs is None:
        pcrs = {i: bytes([i + 1]) * 48 for i in (0, 1, 2, 3, 4)} | {8: b"\x00" * 48}
    return bytes(
        cbor2.dumps(
            {
                "module_id": "i-0test-enc0test",
                "digest": "SHA384",
                "timestamp": int(timestamp.timestamp() * 1000),
                "pcrs": pcrs,
                "certificate": _der(chain.leaf),
                "cabundle": [_der(chain.root), _der(chain.intermediate)],
                "public_key": public_key,
                "user_data": user_data,
                "nonce": nonce,
            }
        )
    )


def make_test_nitro_root_and_doc(
    *,
    user_data: bytes | None = None,
    pcrs: dict[int, bytes] | None = None,
    public_key: bytes | None = None,
    nonce: bytes | None = None,
    timestamp: datetime = VERIFY_AT,
    tagged: bool = False,
) -> tuple[bytes, bytes]:
    """(test root DER, COSE_Sign1 document) for a fresh chain; verify at ``VERIFY_AT``."""
    chain = make_test_nitro_chain()
    payload = make_nitro_payload(
        chain,
        user_data=user_data,
        pcrs=pcrs,
        public_key=public_key,
        nonce=nonce,
        timestamp=timestamp,
    )
    return chain.root_der, sign_cose_sign1(payload, chain.leaf_key, tagged=tagged)


__all__ = [
    "VERIFY_AT",
    "NitroChain",
    "SnpChain",
    "build_snp_report",
    "make_nitro_payload",
    "make_test_nitro_chain",
    "make_test_nitro_root_and_doc",
    "make_test_snp_chain",
    "make_test_snp_evidence",
    "sign_cose_sign1",
    "sign_snp_report",
]
