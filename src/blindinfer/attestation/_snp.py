"""Verifier for AMD SEV-SNP attestation reports, and the one place that knows their format.

Format: the ATTESTATION_REPORT structure of the AMD SEV-SNP Firmware ABI Specification (AMD pub.
56860, rev. 1.57, Table 23 "ATTESTATION_REPORT Structure"; the other structures are cited by
name below): 1184 (0x4A0) bytes, little-endian. Report versions 2 and 3 are parsed; version 3
only adds CPUID_FAM_ID/CPUID_MOD_ID/CPUID_STEP in bytes that version 2 reserves. Versions 4 and 5
are accepted too: they only define further bytes that older versions reserve (mitigation
vectors), which this verifier does not interpret.

Trust: the report is signed (ECDSA P-384, SHA-384, over bytes 0x000..0x29F) by the chip's VCEK;
the VCEK certificate is signed by the AMD SEV Key (ASK), which is signed by the AMD Root Key (ARK)
of the processor family, all RSASSA-PSS SHA-384 (AMD "Versioned Chip Endorsement Key (VCEK)
Certificate and KDS Interface Specification", pub. 57230). The ARKs for Milan, Genoa and Turin
are pinned in ``roots/``; the VCEK and the ASK come with the evidence as collateral
(``"vcek"``: DER or PEM, ``"chain"``: PEM with the ASK and optionally the ARK).

The VCEK is specific to one chip and one TCB version: its hwID extension must equal the report's
CHIP_ID and its SPL extensions must equal the report's REPORTED_TCB.

The producer (``tee/configfs_tsm``) and the KDS collateral provider (``collateral/amd``) use the
parsing functions here (:func:`parse_report`, :func:`decode_tcb`, :func:`product_of`,
:func:`vcek_hwid`, :func:`kds_name`) rather than knowing the layout themselves.

Not supported: reports signed by a VLEK (SIGNING_KEY = 1) or by no key (7); revocation lists
(the AMD CRLs are not fetched here). On Turin (family 1Ah) the TCB layout differs (an FMC SPL
byte first) and the VCEK hwID is 8 bytes: only CHIP_ID[0:8] is compared then.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Annotated, Any, ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import SignatureAlgorithmOID

from blindinfer.attestation import _x509
from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import (
    TablePolicy,
    expect_hex_in,
    flag,
    hex_values,
    uint,
    uint_table,
)
from blindinfer.errors import (
    AttestationError,
    CollateralError,
    EvidenceError,
    PolicyError,
)

KIND = "snp"
# Processor families with their own ARK, in this package's spelling (lower case). AMD spells
# them capitalised ("Milan") in KDS URLs, certificate names and the VCEK productName: kds_name().
PRODUCTS = ("milan", "genoa", "turin")

# --- ATTESTATION_REPORT layout (ABI spec, see the module docstring) --------------------------
REPORT_SIZE = 0x4A0
SIGNED_END = 0x2A0  # the signature covers bytes 0x000..0x29F
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1
OFF_REPORT_DATA, OFF_MEASUREMENT, OFF_HOST_DATA = 0x50, 0x90, 0xC0
OFF_ID_KEY_DIGEST, OFF_AUTHOR_KEY_DIGEST = 0xE0, 0x110
OFF_REPORT_ID, OFF_REPORT_ID_MA = 0x140, 0x160
OFF_REPORTED_TCB, OFF_CPUID = 0x180, 0x188
OFF_CHIP_ID = 0x1A0
OFF_COMMITTED_TCB, OFF_CURRENT_BUILD, OFF_COMMITTED_BUILD, OFF_LAUNCH_TCB = (
    0x1E0,
    0x1E8,
    0x1EC,
    0x1F0,
)
# SIGNATURE (ABI spec, "ECDSA P-384 with SHA-384 Signature Format"): R and S are 72-byte
# little-endian fields; the rest of the 512-byte signature area is reserved (must be zero).
SIG_COMPONENT = 72
P384_BYTES = 48

# GUEST_POLICY bits (ABI spec, "Guest Policy Structure").
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
# Flags at 0x48 (ATTESTATION_REPORT): bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_ID, bits 4:2 SIGNING_KEY.
FLAG_AUTHOR_KEY_EN = 1 << 0
FLAG_MASK_CHIP_ID = 1 << 1
SIGNING_KEY_NAMES = {0: "VCEK", 1: "VLEK", 7: "none"}

# VCEK certificate extensions (KDS interface spec, pub. 57230, "VCEK Certificate Extensions").
OID_PRODUCT_NAME = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
TCB_OIDS = {
    "bootloader": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1"),
    "tee": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2"),
    "snp": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3"),
    "microcode": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8"),
    "fmc": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9"),  # Turin only
}
TCB_PARTS = ("bootloader", "tee", "snp", "microcode")


# --- parsing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """The fields of an ATTESTATION_REPORT that this verifier uses (raw, not yet trusted)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int]
    chip_id: bytes
    committed_tcb: bytes
    current_build: tuple[int, int, int]
    committed_build: tuple[int, int, int]
    launch_tcb: bytes
    sig_r: int
    sig_s: int

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 0b111


def _bytes(raw: bytes, off: int, size: int) -> bytes:
    return raw[off : off + size]


def _version_triplet(raw: bytes, off: int) -> tuple[int, int, int]:
    """BUILD, MINOR, MAJOR bytes (ATTESTATION_REPORT CURRENT_*/COMMITTED_*) -> (maj, min, b)."""
    build, minor, major = raw[off], raw[off + 1], raw[off + 2]
    return (major, minor, build)


def _signature_component(raw: bytes, off: int, name: str) -> int:
    field = raw[off : off + SIG_COMPONENT]
    if any(field[P384_BYTES:]):
        raise EvidenceError(f"SEV-SNP report signature {name} has non-zero bytes above 384 bits")
    return int.from_bytes(field, "little")


def parse_report(raw: bytes) -> Report:
    """Split a report into fields; refuse wrong sizes, versions and signature formats."""
    if len(raw) != REPORT_SIZE:
        raise EvidenceError(f"SEV-SNP report must be {REPORT_SIZE} bytes, got {len(raw)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceError(
            f"unsupported SEV-SNP report version {version} (supported: {SUPPORTED_VERSIONS})"
        )
    vmpl, sig_algo = struct.unpack_from("<II", raw, 0x30)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise EvidenceError(f"unsupported SEV-SNP signature algorithm {sig_algo} (expected 1)")
    platform_info, flags = struct.unpack_from("<QI", raw, 0x40)
    sig_area = raw[SIGNED_END:]
    if any(sig_area[2 * SIG_COMPONENT :]):
        raise EvidenceError("SEV-SNP report: reserved bytes of the signature area are not zero")
    return Report(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=_bytes(raw, 0x10, 16),
        image_id=_bytes(raw, 0x20, 16),
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=_bytes(raw, 0x38, 8),
        platform_info=platform_info,
        flags=flags,
        report_data=_bytes(raw, OFF_REPORT_DATA, 64),
        measurement=_bytes(raw, OFF_MEASUREMENT, 48),
        host_data=_bytes(raw, OFF_HOST_DATA, 32),
        id_key_digest=_bytes(raw, OFF_ID_KEY_DIGEST, 48),
        author_key_digest=_bytes(raw, OFF_AUTHOR_KEY_DIGEST, 48),
        report_id=_bytes(raw, OFF_REPORT_ID, 32),
        report_id_ma=_bytes(raw, OFF_REPORT_ID_MA, 32),
        reported_tcb=_bytes(raw, OFF_REPORTED_TCB, 8),
        cpuid=(raw[OFF_CPUID], raw[OFF_CPUID + 1], raw[OFF_CPUID + 2]),
        chip_id=_bytes(raw, OFF_CHIP_ID, 64),
        committed_tcb=_bytes(raw, OFF_COMMITTED_TCB, 8),
        current_build=_version_triplet(raw, OFF_CURRENT_BUILD),
        committed_build=_version_triplet(raw, OFF_COMMITTED_BUILD),
        launch_tcb=_bytes(raw, OFF_LAUNCH_TCB, 8),
        sig_r=_signature_component(raw, SIGNED_END, "R"),
        sig_s=_signature_component(raw, SIGNED_END + SIG_COMPONENT, "S"),
    )


def decode_tcb(raw: bytes, product: str | None) -> dict[str, int]:
    """TCB_VERSION (ABI spec, "TCB_VERSION Structure"): 8 bytes, one SPL per byte.

    Milan/Genoa: [0] BOOT_LOADER, [1] TEE, [2..5] reserved, [6] SNP, [7] MICROCODE.
    Turin: [0] FMC, [1] BOOT_LOADER, [2] TEE, [3] SNP, [4..6] reserved, [7] MICROCODE.
    """
    if product == "turin":
        return {
            "fmc": raw[0],
            "bootloader": raw[1],
            "tee": raw[2],
            "snp": raw[3],
            "microcode": raw[7],
        }
    return {"bootloader": raw[0], "tee": raw[1], "snp": raw[6], "microcode": raw[7]}


def product_of(report: Report) -> str | None:
    """The processor family from CPUID_FAM_ID/CPUID_MOD_ID (report version >= 3), else None.

    Family 19h models 00h-0Fh are Milan; 10h-1Fh and A0h-AFh are Genoa (with Bergamo and
    Siena, which share Genoa's ARK and KDS endpoint); family 1Ah models 00h-11h are Turin.
    """
    if report.version < 3:
        return None
    family, model, _stepping = report.cpuid
    if family == 0x19 and model <= 0x0F:
        return "milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "genoa"
    if family == 0x1A and model <= 0x11:
        return "turin"
    return None


def kds_name(product: str) -> str:
    """AMD's spelling of a product (KDS path segment, ``ARK-Milan``, ``Milan-B0``)."""
    return product.capitalize()


def vcek_hwid(report: Report, product: str) -> bytes:
    """The hwID a VCEK carries for this chip: CHIP_ID, of which Turin uses the first 8 bytes."""
    return report.chip_id[:8] if product == "turin" else report.chip_id


def detect(data: bytes) -> bool:
    try:
        if len(data) != REPORT_SIZE:
            return False
        (version,) = struct.unpack_from("<I", data, 0)
        (sig_algo,) = struct.unpack_from("<I", data, 0x34)
        return version in SUPPORTED_VERSIONS and sig_algo == SIG_ALGO_ECDSA_P384_SHA384
    except Exception:
        return False


# --- certificates ------------------------------------------------------------------------------

# RSASSA-PSS-params (RFC 4055 section 3.1), decoded by cryptography's declarative ASN.1. AMD
# encodes the default trailerField (1) explicitly, which strict DER forbids, hence no Default().


@asn1.sequence
class _HashAlgorithm:
    algorithm: x509.ObjectIdentifier
    parameters: asn1.Null | None


@asn1.sequence
class _MaskGenAlgorithm:
    algorithm: x509.ObjectIdentifier
    parameters: _HashAlgorithm


@asn1.sequence
class _PssParams:
    hash_algorithm: Annotated[_HashAlgorithm, asn1.Explicit(0)]
    mask_gen_algorithm: Annotated[_MaskGenAlgorithm, asn1.Explicit(1)]
    salt_length: Annotated[int, asn1.Explicit(2)]
    trailer_field: Annotated[int | None, asn1.Explicit(3)]


@asn1.sequence
class _PssAlgorithmIdentifier:
    algorithm: x509.ObjectIdentifier
    parameters: _PssParams


@asn1.sequence
class _Certificate:
    """Certificate (RFC 5280 section 4.1) with an RSASSA-PSS signatureAlgorithm."""

    tbs_certificate: asn1.TLV
    signature_algorithm: _PssAlgorithmIdentifier
    signature_value: asn1.BitString


_SHA384 = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.2")
_MGF1 = x509.ObjectIdentifier("1.2.840.113549.1.1.8")


def _check_pss_params(cert: x509.Certificate, role: str) -> None:
    """All AMD certificates: RSASSA-PSS with SHA-384, MGF1-SHA-384, salt length 48 (KDS).

    ``verify_directly_issued_by`` verifies with whatever parameters the certificate declares
    (and has already made sure the signed and unsigned copies agree); this pins them.
    """
    try:
        params = asn1.decode_der(_Certificate, cert.public_bytes(Encoding.DER))
        pss = params.signature_algorithm.parameters
        ok = (
            pss.hash_algorithm.algorithm == _SHA384
            and pss.mask_gen_algorithm.algorithm == _MGF1
            and pss.mask_gen_algorithm.parameters.algorithm == _SHA384
            and pss.salt_length == 48
            and pss.trailer_field in (None, 1)
        )
    except ValueError:
        ok = False
    if not ok:
        raise EvidenceError(
            f"SEV-SNP {role} certificate {_x509.common_name(cert)!r} is not RSASSA-PSS signed "
            f"with SHA-384, MGF1-SHA-384 and salt length 48"
        )


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    return _x509.load_certs(data, f"SEV-SNP collateral: {what}", CollateralError)


@cache
def _pinned_arks() -> tuple[x509.Certificate, ...]:
    roots = resources.files("blindinfer.attestation").joinpath("roots")
    return tuple(
        x509.load_pem_x509_certificate(roots.joinpath(f"amd_ark_{p}.pem").read_bytes())
        for p in PRODUCTS
    )


def _trusted_arks(roots: Sequence[bytes] | None) -> list[x509.Certificate]:
    if roots is None:
        return list(_pinned_arks())
    out: list[x509.Certificate] = []
    for der in roots:
        out.extend(_load_certs(der, "trusted ARK"))
    return out


def _product_of_ark(ark: x509.Certificate) -> str | None:
    """AMD names its roots ``ARK-Milan``, ``ARK-Genoa``, ``ARK-Turin``."""
    name = _x509.common_name(ark).lower()
    return name[4:] if name.startswith("ark-") and name[4:] in PRODUCTS else None


def _find_ask(chain: list[x509.Certificate], vcek: x509.Certificate) -> x509.Certificate:
    for cert in chain:
        if cert.subject == vcek.issuer and cert.subject != cert.issuer:
            return cert
    have = [_x509.common_name(c) for c in chain]
    raise EvidenceError(
        f"SEV-SNP chain has no ASK for VCEK issuer {vcek.issuer.rfc4514_string()!r} "
        f"(the chain holds {have}); is it the chain for the right product?"
    )


def _find_ark(
    ask: x509.Certificate, chain: list[x509.Certificate], trusted: list[x509.Certificate]
) -> x509.Certificate:
    """The trusted ARK that issued the ASK; an ARK shipped in the chain must be that same key."""
    candidates = [a for a in trusted if a.subject == ask.issuer]
    if not candidates:
        raise EvidenceError(
            f"SEV-SNP ASK {_x509.common_name(ask)!r} is issued by {ask.issuer.rfc4514_string()!r},"
            f" which is not a trusted AMD root (trusted: {[_x509.common_name(a) for a in trusted]})"
        )
    shipped = [c for c in chain if c.subject == ask.issuer and c.issuer == c.subject]
    for ark in candidates:
        if all(s.public_key() == ark.public_key() for s in shipped):
            return ark
    raise EvidenceError(
        f"SEV-SNP chain's ARK {_x509.common_name(shipped[0])!r} is not the pinned AMD root"
    )


@dataclass(frozen=True)
class _Chain:
    vcek: x509.Certificate
    ask: x509.Certificate
    ark: x509.Certificate
    product: str | None


def verify_chain(
    collateral: Mapping[str, bytes], at: datetime, roots: Sequence[bytes] | None
) -> _Chain:
    """VCEK <- ASK <- ARK: names, RSASSA-PSS signatures, CA flags and validity at ``at``."""
    if "vcek" not in collateral:
        raise CollateralError("SEV-SNP collateral has no VCEK certificate ('vcek')")
    if "chain" not in collateral:
        raise CollateralError("SEV-SNP collateral has no ASK/ARK chain ('chain')")
    vceks = _load_certs(collateral["vcek"], "vcek")
    if len(vceks) != 1:
        raise CollateralError(
            f"SEV-SNP collateral 'vcek' must hold one certificate, not {len(vceks)}"
        )
    vcek = vceks[0]
    chain = _load_certs(collateral["chain"], "chain")
    ask = _find_ask(chain, vcek)
    ark = _find_ark(ask, chain, _trusted_arks(roots))
    path = [(ark, "SEV-SNP ARK"), (ask, "SEV-SNP ASK"), (vcek, "SEV-SNP VCEK")]
    for cert, label in path:
        _check_pss_params(cert, label.removeprefix("SEV-SNP "))
    _x509.check_chain(
        path,
        EvidenceError,
        algorithms={SignatureAlgorithmOID.RSASSA_PSS},
        algorithm_name="RSASSA-PSS",
    )
    for cert, label in path[::-1]:
        _x509.check_validity(cert, at, label, CollateralError)
    product = _product_of_ark(ark)
    _check_product_name(vcek, product)
    return _Chain(vcek=vcek, ask=ask, ark=ark, product=product)


def _ext_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    """The extnValue contents of an AMD extension (cryptography does not know these OIDs)."""
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return ext.value if isinstance(ext, x509.UnrecognizedExtension) else None


def _ext_int(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> int | None:
    """An SPL extension: a DER INTEGER (KDS spec, "VCEK Certificate Extensions")."""
    raw = _ext_value(cert, oid)
    try:
        return asn1.decode_der(int, raw) if raw is not None else None
    except ValueError:
        return None


def _check_product_name(vcek: x509.Certificate, product: str | None) -> None:
    """The VCEK productName extension (IA5String, e.g. "Milan-B0") must match the chain."""
    raw = _ext_value(vcek, OID_PRODUCT_NAME)
    if raw is None or product is None:
        return
    try:
        text = asn1.decode_der(asn1.IA5String, raw).as_str()
    except ValueError:
        return  # as before: only a readable name that contradicts the chain is refused
    name = text.split("-")[0].lower()
    if name in PRODUCTS and name != product:
        raise EvidenceError(f"SEV-SNP VCEK is for product {name!r} but its chain is {product!r}")


def _check_vcek_binding(report: Report, vcek: x509.Certificate, product: str | None) -> None:
    """The VCEK is per chip (hwID == CHIP_ID) and per TCB (SPL extensions == REPORTED_TCB)."""
    hwid = _ext_value(vcek, OID_HWID)
    if hwid is None:
        raise EvidenceError("SEV-SNP VCEK has no hwID extension (1.3.6.1.4.1.3704.1.4)")
    if report.flags & FLAG_MASK_CHIP_ID:
        raise EvidenceError("SEV-SNP report has MASK_CHIP_ID set; it cannot be bound to a VCEK")
    if len(hwid) not in (8, 64) or report.chip_id[: len(hwid)] != hwid:
        raise EvidenceError(
            f"SEV-SNP report CHIP_ID {report.chip_id.hex()} does not match the VCEK hwID "
            f"{hwid.hex()}: the VCEK belongs to another chip"
        )
    reported = decode_tcb(report.reported_tcb, product)
    for part, value in reported.items():
        cert_value = _ext_int(vcek, TCB_OIDS[part])
        if cert_value != value:
            raise EvidenceError(
                f"SEV-SNP reported TCB {part} SPL is {value} but the VCEK was issued for "
                f"{cert_value}: the VCEK is for another TCB version"
            )


def _check_report_signature(report: Report, vcek: x509.Certificate) -> None:
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise EvidenceError("SEV-SNP VCEK public key is not an ECDSA P-384 key")
    signature = encode_dss_signature(report.sig_r, report.sig_s)
    try:
        key.verify(signature, report.raw[:SIGNED_END], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError("SEV-SNP report signature does not verify with the VCEK") from None


# --- verification ------------------------------------------------------------------------------


def _fields(report: Report, product: str | None) -> dict[str, Any]:
    def version(v: tuple[int, int, int]) -> str:
        return ".".join(str(x) for x in v)

    return {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "migrate_ma": bool(report.policy & POLICY_MIGRATE_MA),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "vmpl": report.vmpl,
        "signing_key": SIGNING_KEY_NAMES.get(report.signing_key, str(report.signing_key)),
        "author_key_en": bool(report.flags & FLAG_AUTHOR_KEY_EN),
        "platform_info": report.platform_info,
        "current_tcb": decode_tcb(report.current_tcb, product),
        "reported_tcb": decode_tcb(report.reported_tcb, product),
        "committed_tcb": decode_tcb(report.committed_tcb, product),
        "launch_tcb": decode_tcb(report.launch_tcb, product),
        "current_version": version(report.current_build),
        "committed_version": version(report.committed_build),
        "cpuid": list(report.cpuid) if report.version >= 3 else None,
        "chip_id": report.chip_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "product": product,
    }


def verify(
    evidence: bytes,
    collateral: Mapping[str, bytes],
    *,
    at: datetime,
    roots: Sequence[bytes] | None = None,
) -> Claims:
    """Check the report signature, the VCEK <- ASK <- ARK chain at ``at`` and the VCEK binding.

    ``roots`` (DER ARK certificates) replaces the pinned AMD roots.
    """
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    report = parse_report(bytes(evidence))
    if report.signing_key != 0:
        name = SIGNING_KEY_NAMES.get(report.signing_key, str(report.signing_key))
        raise EvidenceError(f"SEV-SNP report is signed by {name}; only VCEK signing is supported")
    try:
        chain = verify_chain(collateral, at, roots)
        _check_report_signature(report, chain.vcek)
        _check_vcek_binding(report, chain.vcek, chain.product)
    except AttestationError:
        raise
    except Exception as exc:  # a malformed certificate can make cryptography raise anything
        raise CollateralError(
            f"SEV-SNP certificates are malformed: {type(exc).__name__}: {exc}"
        ) from exc
    return Claims(
        kind=KIND,
        report_data=report.report_data,
        measurements={"measurement": report.measurement.hex(), "host_data": report.host_data.hex()},
        debug=bool(report.policy & POLICY_DEBUG),
        fields=_fields(report, chain.product),
        verified_at=at,
    )


# --- policy ------------------------------------------------------------------------------------

# REPORTED_TCB parts a policy may demand a minimum of (``fmc`` exists on Turin only).
_TCB_KEYS = (*TCB_PARTS, "fmc")


@dataclass(frozen=True)
class KindPolicy(TablePolicy):
    """``[snp]``: pins the launch measurement and judges the guest policy, VMPL and TCB.

    - ``measurement`` (48 bytes) / ``host_data`` (32) / ``family_id`` / ``image_id`` (16): hex
      or lists of hex;
    - ``allow_debug`` (default false): accept guests whose POLICY allows debugging (bit 19);
    - ``allow_migration_agent`` (default false): accept guests that may have a migration agent;
    - ``min_tcb = {bootloader=, tee=, snp=, microcode=}`` (and ``fmc`` on Turin): minimum SPLs of
      the REPORTED_TCB;
    - ``vmpl`` (exact) or ``max_vmpl``; ``min_guest_svn``.
    """

    kind: ClassVar[str] = KIND
    measurement: Annotated[list[str] | None, hex_values(48)] = None
    host_data: Annotated[list[str] | None, hex_values(32)] = None
    allow_debug: Annotated[bool, flag] = False
    allow_migration_agent: Annotated[bool, flag] = False
    min_tcb: Annotated[dict[str, int] | None, uint_table(_TCB_KEYS)] = None
    vmpl: Annotated[int | None, uint()] = None
    max_vmpl: Annotated[int | None, uint()] = None
    min_guest_svn: Annotated[int | None, uint()] = None
    family_id: Annotated[list[str] | None, hex_values(16)] = None
    image_id: Annotated[list[str] | None, hex_values(16)] = None

    @classmethod
    def from_claims(cls, claims: Claims) -> KindPolicy:
        f = claims.fields
        return cls(
            measurement=[claims.measurements["measurement"]],
            host_data=[claims.measurements["host_data"]],
            allow_debug=claims.debug,
            allow_migration_agent=bool(f["migrate_ma"]),
            min_tcb={k: int(v) for k, v in dict(f["reported_tcb"]).items()},
            vmpl=int(f["vmpl"]),
            min_guest_svn=int(f["guest_svn"]),
            family_id=[str(f["family_id"])],
            image_id=[str(f["image_id"])],
        )

    def check(self, claims: Claims) -> None:
        if claims.kind != KIND:
            raise PolicyError(f"expected snp claims, got {claims.kind}")
        f = claims.fields
        if claims.debug and not self.allow_debug:
            raise PolicyError(
                f"policy mismatch on snp.allow_debug: expected false (debugging not allowed), "
                f"evidence has POLICY {int(f['policy']):#x} with DEBUG (bit 19) set"
            )
        if f["migrate_ma"] and not self.allow_migration_agent:
            raise PolicyError(
                f"policy mismatch on snp.allow_migration_agent: expected false, evidence has "
                f"POLICY {int(f['policy']):#x} with MIGRATE_MA (bit 18) set"
            )
        expect_hex_in("snp.measurement", self.measurement, claims.measurements["measurement"])
        expect_hex_in("snp.host_data", self.host_data, claims.measurements["host_data"])
        expect_hex_in("snp.family_id", self.family_id, str(f["family_id"]))
        expect_hex_in("snp.image_id", self.image_id, str(f["image_id"]))
        self._check_numbers(f)

    def _check_numbers(self, f: Mapping[str, Any]) -> None:
        vmpl, svn = int(f["vmpl"]), int(f["guest_svn"])
        if self.vmpl is not None and vmpl != self.vmpl:
            raise PolicyError(
                f"policy mismatch on snp.vmpl: expected {self.vmpl}, evidence has {vmpl}"
            )
        if self.max_vmpl is not None and vmpl > self.max_vmpl:
            raise PolicyError(
                f"policy mismatch on snp.max_vmpl: expected at most {self.max_vmpl}, "
                f"evidence has {vmpl}"
            )
        if self.min_guest_svn is not None and svn < self.min_guest_svn:
            raise PolicyError(
                f"policy mismatch on snp.min_guest_svn: expected at least {self.min_guest_svn}, "
                f"evidence has {svn}"
            )
        reported: Mapping[str, int] = f["reported_tcb"]
        for part, minimum in (self.min_tcb or {}).items():
            have = reported.get(part)
            if have is None or have < minimum:
                raise PolicyError(
                    f"policy mismatch on snp.min_tcb.{part}: expected at least {minimum}, "
                    f"evidence has {have if have is not None else 'none'}"
                )
