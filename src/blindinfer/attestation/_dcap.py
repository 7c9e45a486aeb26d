"""Shared Intel DCAP plumbing for the SGX (quote v3) and TDX (quote v4/v5) verifiers.

The quote's own cryptography (QE report and ISV signatures) and TCB level matching are done by
dcap-qvl (``verify_with_root_ca``, with the verification time passed explicitly). Before dcap-qvl
is called, this module checks:

- a strict parse of the quote layout, so that no byte of the quote is left unchecked: dcap-qvl
  ignores size fields it does not need, PEM whitespace and the root certificate embedded in the
  quote (it anchors on the root it is given); here every size must add up exactly, the embedded
  PCK chain must be canonical PEM and end in the trusted root, and only zero padding may follow
  the signature data;
- the collateral, each check deciding the error class by what it checked (CollateralError: fetch
  fresh collateral; EvidenceError: the quote itself is refused): issuer chains ending in the
  root; the TCB info and QE identity signatures; the CRL signatures; that the TCB info and QE
  identity are for this kind of quote and the TCB info for this platform's FMSPC; revocation of
  every certificate in the PCK chain and the collateral chains; validity windows of every item,
  so that an expired item is named with its date. Whatever dcap-qvl still refuses after that is
  the quote's fault: EvidenceError, whatever its message says;
- the TCB-status / advisory / masked-attribute policy checks both kinds share.

Layout references: Intel SGX ECDSA Quote Library API, Appendix A "Quote Format" (quote v3: header,
ISV enclave report body, ECDSA 256-bit quote signature data, QE certification data) and Intel TDX
DCAP Quoting Library API, Appendix A (quote v4: TD quote body and certification data type 6 "QE
Report Certification Data"; quote v5: quote body descriptor, TD report 1.0 / 1.5 bodies).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer.attestation import _x509
from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import names
from blindinfer.errors import (
    AttestationError,
    CollateralError,
    EvidenceError,
    PolicyError,
)

# What cryptography raises on malformed certificates and CRLs.
_PARSE_ERRORS = _x509.PARSE_ERRORS

COLLATERAL_KEY = "dcap"
ROOT_PEM = "intel_sgx_root_ca.pem"
# SHA-256 of the Intel SGX Root CA certificate (DER), 44:A0:19:6B:...:74:D3.
ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

# Quote header (48 bytes): version u16, attestation key type u16, TEE type u32 (reserved, 0, in
# v3), QE SVN u16, PCE SVN u16, QE vendor id 16 bytes, user data 20 bytes. All little-endian.
HEADER = struct.Struct("<HHIHH16s20s")
ECDSA_P256 = 2
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
# Body types of the v5 quote body descriptor, and the body size each implies.
BODY_SGX, BODY_TD10, BODY_TD15 = 1, 2, 3
BODY_SIZES = {BODY_SGX: 384, BODY_TD10: 584, BODY_TD15: 648}
# Certification data types: 5 = PCK certificate chain (PEM), 6 = QE report certification data.
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
SIG_LEN = KEY_LEN = 64
QE_REPORT_LEN = 384

# SGX extensions of a PCK certificate (Intel SGX PCK Certificate and CRL Profile, "SGX
# Extensions"): a SEQUENCE of SEQUENCE { OID, value }; the FMSPC item is an OCTET STRING of 6.
SGX_EXTENSIONS_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
# The FMSPC OID's DER content octets (after the one-byte tag and one-byte length).
FMSPC_OID = asn1.encode_der(x509.ObjectIdentifier("1.2.840.113741.1.13.1.4"))[2:]
DER_SEQUENCE, DER_OCTET_STRING, DER_OID = 0x30, 0x04, 0x06
FMSPC_LEN = 6
# The "id" of the TCB info and QE identity for each TEE type (Intel PCS API v4, "TCB Info" and
# "Enclave Identity" v2/v3). TCB info version 2 (PCS v3) has no id and is SGX-only.
TCB_INFO_IDS = {TEE_SGX: "SGX", TEE_TDX: "TDX"}
QE_IDENTITY_IDS = {TEE_SGX: "QE", TEE_TDX: "TD_QE"}

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
DEFAULT_TCB_STATUS = ("UpToDate",)
# The ``allowed_tcb_status`` policy key: Intel's status names only (a typo must not pass).
TCB_STATUS_NAMES = names(TCB_STATUSES, "TCB status names of Intel's PCS")


def default_tcb_status() -> list[str]:
    return list(DEFAULT_TCB_STATUS)


COLLATERAL_HINT = (
    "fetch fresh collateral (the server serves it beside the quote; "
    "`blindinfer verify --collateral FILE`)"
)


# --- quote layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuoteLayout:
    """The parts of a DCAP quote, located by a strict parse (sizes must add up exactly)."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    body_type: int
    body: bytes
    pck_chain: tuple[x509.Certificate, ...]


class _Reader:
    """Bounds-checked little-endian reader over one quote region."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EvidenceError(f"{self.what}: truncated at {field} (offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def sized(self, field: str, width: int) -> bytes:
        size = self.u16(field) if width == 2 else self.u32(field)
        return self.take(size, field)

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise EvidenceError(
                f"{self.what}: {len(self.data) - self.pos} unexpected byte(s) after offset "
                f"{self.pos} (a size field does not match the data)"
            )


def header_fields(data: bytes) -> tuple[int, int, int] | None:
    """(version, attestation key type, TEE type) of a quote header, or None if too short."""
    if len(data) < HEADER.size:
        return None
    version, akt, tee, *_ = HEADER.unpack_from(data)
    return int(version), int(akt), int(tee)


def _body(r: _Reader, version: int, tee_type: int) -> tuple[int, bytes]:
    """Quote body: implied by version and TEE type (v3/v4) or by the v5 body descriptor."""
    if version == 5:
        body_type = r.u16("body type")
        size = r.u32("body size")
        if BODY_SIZES.get(body_type) != size:
            raise EvidenceError(f"quote v5 body type {body_type} with size {size} is not valid")
    elif version == 3 or tee_type == TEE_SGX:
        body_type = BODY_SGX
    else:
        body_type = BODY_TD10
    if (body_type == BODY_SGX) != (tee_type == TEE_SGX):
        raise EvidenceError(f"quote body type {body_type} does not match TEE type {tee_type:#x}")
    return body_type, r.take(BODY_SIZES[body_type], "body")


def _qe_certification(data: bytes) -> bytes:
    """QE report, its signature and auth data, then the PCK chain; returns the chain bytes."""
    r = _Reader(data, "quote QE certification data")
    r.take(QE_REPORT_LEN + SIG_LEN, "QE report and signature")
    r.sized("QE authentication data", 2)
    cert_type = r.u16("certification data type")
    chain = r.sized("certification data", 4)
    r.finish()
    if cert_type != CERT_PCK_CHAIN:
        raise EvidenceError(
            f"quote certification data type {cert_type} is not supported: the quote must embed "
            f"the PCK certificate chain (type {CERT_PCK_CHAIN})"
        )
    return chain


def _signature_data(data: bytes, version: int) -> bytes:
    """ECDSA 256-bit quote signature data; returns the embedded PCK chain (PEM bytes)."""
    r = _Reader(data, "quote signature data")
    r.take(SIG_LEN + KEY_LEN, "ECDSA signature and attestation key")
    if version == 3:
        chain = _qe_certification(r.take(len(data) - r.pos, "QE certification data"))
    else:
        cert_type = r.u16("certification data type")
        inner = r.sized("certification data", 4)
        r.finish()
        if cert_type != CERT_QE_REPORT:
            raise EvidenceError(
                f"quote v{version} certification data type {cert_type} is not supported "
                f"(expected {CERT_QE_REPORT}, QE report certification data)"
            )
        chain = _qe_certification(inner)
    return chain


def _touch(cert: x509.Certificate) -> x509.Certificate:
    """Force the lazy parse of a certificate's names and validity (ValueError if malformed)."""
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    _ = cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert


def _pem_chain(raw: bytes) -> tuple[x509.Certificate, ...]:
    """The PCK chain must be canonical PEM (optionally NUL-terminated): leaf, CA, root."""
    pem = raw[:-1] if raw.endswith(b"\x00") else raw
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except _PARSE_ERRORS as exc:
        raise EvidenceError(f"quote PCK certificate chain is not valid PEM: {exc}") from exc
    try:  # cryptography parses names and dates lazily: touch them here, once
        canonical = b"".join(_touch(c).public_bytes(Encoding.PEM) for c in certs)
    except _PARSE_ERRORS as exc:
        raise EvidenceError(f"quote PCK certificate chain is malformed: {exc}") from exc
    if canonical != pem:
        raise EvidenceError("quote PCK certificate chain is not in canonical PEM form")
    if len(certs) != 3:
        raise EvidenceError(f"quote PCK certificate chain has {len(certs)} certificates, not 3")
    return certs


def parse_layout(quote: bytes) -> QuoteLayout:
    """Strictly parse a DCAP quote (v3, v4 or v5); EvidenceError on any inconsistency."""
    r = _Reader(quote, "quote")
    version, akt, tee, qe_svn, pce_svn, _vendor, _user = HEADER.unpack(r.take(HEADER.size, "hdr"))
    if version not in (3, 4, 5):
        raise EvidenceError(f"unsupported DCAP quote version {version} (expected 3, 4 or 5)")
    if akt != ECDSA_P256:
        raise EvidenceError(f"unsupported attestation key type {akt} (expected 2, ECDSA P-256)")
    if tee not in (TEE_SGX, TEE_TDX):
        raise EvidenceError(f"unknown TEE type {tee:#x} in the quote header")
    body_type, body = _body(r, version, tee)
    chain = _pem_chain(_signature_data(r.sized("signature data", 4), version))
    padding = quote[r.pos :]
    if padding.strip(b"\x00"):
        raise EvidenceError(f"quote has {len(padding)} non-zero byte(s) after its signature data")
    return QuoteLayout(version, akt, tee, qe_svn, pce_svn, body_type, body, chain)


# --- trust anchor and collateral ---------------------------------------------------------------


@cache
def pinned_root_der() -> bytes:
    """The Intel SGX Root CA shipped in ``attestation/roots`` (DER), checked by fingerprint."""
    pem = resources.files("blindinfer.attestation").joinpath("roots", ROOT_PEM).read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    if hashlib.sha256(der).hexdigest() != ROOT_SHA256:
        raise EvidenceError(f"the pinned Intel root {ROOT_PEM} does not have the expected hash")
    return der


def _root_der(roots: Sequence[bytes] | None) -> bytes:
    if roots is None:
        return pinned_root_der()
    if not roots:
        raise EvidenceError("an empty list of trusted roots was given; no quote can verify")
    return bytes(roots[0])


def load_collateral(collateral: Mapping[str, bytes], kind: str) -> Any:
    """dcap-qvl QuoteCollateralV3 from ``collateral["dcap"]`` (JSON bytes)."""
    raw = collateral.get(COLLATERAL_KEY)
    if raw is None:
        raise CollateralError(
            f"DCAP collateral is needed to verify {kind} evidence (TCB info, QE identity, CRLs): "
            f"the server serves it beside the quote; pass it with "
            f"`blindinfer verify --collateral FILE`"
        )
    try:
        text = bytes(raw).decode("utf-8")
        if not isinstance(json.loads(text), dict):
            raise ValueError("not a JSON object")
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except Exception as exc:
        raise CollateralError(
            f"DCAP collateral is not valid QuoteCollateralV3 JSON: {exc}"
        ) from exc


def check_chain(
    certs: Sequence[x509.Certificate], root: bytes, what: str, error: type[AttestationError]
) -> None:
    """Each certificate must be signed by the next (a CA), and the last must be the trusted root.

    dcap-qvl anchors on the root it is given and skips a root embedded in a chain; checking the
    whole chain here makes every byte of it count (and names the failing part).
    """
    if not certs or certs[-1].public_bytes(Encoding.DER) != root:
        raise error(f"{what} does not end in the trusted root CA")
    _x509.check_chain([(c, what) for c in reversed(certs)], error)


def _collateral_chain(coll: Any, key: str) -> list[x509.Certificate]:
    try:
        return [
            _touch(c) for c in x509.load_pem_x509_certificates(str(getattr(coll, key)).encode())
        ]
    except _PARSE_ERRORS as exc:
        raise CollateralError(f"DCAP collateral {key} is not a valid PEM chain: {exc}") from exc


SIGNED_ITEMS = (("tcb_info", "tcb_info_issuer_chain"), ("qe_identity", "qe_identity_issuer_chain"))


def check_collateral_chains(
    coll: Any, layout: QuoteLayout, root: bytes
) -> dict[str, list[x509.Certificate]]:
    """Issuer chains of TCB info and QE identity end in the root; the PCK CRL's issuer chain is
    the quote's PCK chain above the leaf (the CA that issued the PCK certificate, then the root).
    Returns the two signing chains by collateral key.
    """
    chains = {}
    for _, key in SIGNED_ITEMS:
        chains[key] = _collateral_chain(coll, key)
        check_chain(chains[key], root, f"DCAP collateral {key}", CollateralError)
    crl_chain = [
        c.public_bytes(Encoding.DER) for c in _collateral_chain(coll, "pck_crl_issuer_chain")
    ]
    if crl_chain != [c.public_bytes(Encoding.DER) for c in layout.pck_chain[1:]]:
        raise CollateralError(
            "DCAP collateral pck_crl_issuer_chain is not the chain of the CA that issued this "
            "quote's PCK certificate (collateral for another platform, or altered)"
        )
    return chains


@dataclass(frozen=True)
class Crls:
    root_ca: x509.CertificateRevocationList  # issued by the root CA: revokes the CAs below it
    pck: x509.CertificateRevocationList  # issued by the PCK CA: revokes PCK certificates


def check_collateral_signatures(
    coll: Any, layout: QuoteLayout, chains: Mapping[str, Sequence[x509.Certificate]]
) -> Crls:
    """TCB info and QE identity: the ``signature`` of PCS's response (hex, raw ECDSA P-256
    ``r || s``) over the exact UTF-8 bytes of the ``tcbInfo`` / ``enclaveIdentity`` JSON value as
    served, by the leaf of the chain in the ``TCB-Info-Issuer-Chain`` /
    ``SGX-Enclave-Identity-Issuer-Chain`` header (Intel PCS API v4, "Get TCB Info", "Get
    Quoting Enclave Identity"). Root CA CRL: signed by the root; PCK CRL: by the CA that issued
    the PCK certificate (Intel SGX PCK Certificate and CRL Profile). All CollateralError.
    """
    for item, chain_key in SIGNED_ITEMS:
        _x509.verify_raw_ecdsa_p256(
            chains[chain_key][0],
            str(getattr(coll, item)).encode("utf-8"),
            bytes(getattr(coll, f"{item}_signature")),
            f"DCAP collateral {item}",
            CollateralError,
        )
    root, pck_ca = layout.pck_chain[-1], layout.pck_chain[1]
    return Crls(
        root_ca=_x509.load_crl(
            coll.root_ca_crl, root, "DCAP collateral root_ca_crl", CollateralError
        ),
        pck=_x509.load_crl(coll.pck_crl, pck_ca, "DCAP collateral pck_crl", CollateralError),
    )


def pck_fmspc(pck: x509.Certificate, kind: str) -> str:
    """FMSPC (6 bytes, lowercase hex) from the PCK certificate's SGX extensions; EvidenceError if
    absent or malformed (the certificate is the quote's)."""
    try:
        ext = pck.extensions.get_extension_for_oid(SGX_EXTENSIONS_OID).value
        raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
        ((tag, items),) = _x509.der_elements(raw)
        for item_tag, item in _x509.der_elements(items) if tag == DER_SEQUENCE else []:
            parts = _x509.der_elements(item) if item_tag == DER_SEQUENCE else []
            if len(parts) == 2 and parts[0] == (DER_OID, FMSPC_OID):
                value_tag, value = parts[1]
                if value_tag == DER_OCTET_STRING and len(value) == FMSPC_LEN:
                    return value.hex()
    except (x509.ExtensionNotFound, *_PARSE_ERRORS):
        pass
    raise EvidenceError(
        f"the {kind} quote's PCK certificate has no valid FMSPC in its SGX extensions "
        f"(OID {SGX_EXTENSIONS_OID.dotted_string})"
    )


def _json_object(coll: Any, item: str) -> dict[str, Any]:
    try:
        doc = json.loads(str(getattr(coll, item)))
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise CollateralError(f"DCAP collateral {item} is not a JSON object")
    return doc


def check_collateral_subject(coll: Any, layout: QuoteLayout, kind: str, fmspc: str) -> None:
    """The TCB info and QE identity are for this kind of quote, the TCB info for this platform
    (its ``fmspc`` is the PCK certificate's): else the collateral is another quote's."""
    info, qe = _json_object(coll, "tcb_info"), _json_object(coll, "qe_identity")
    for item, doc, ids in (("tcb_info", info, TCB_INFO_IDS), ("qe_identity", qe, QE_IDENTITY_IDS)):
        want = ids[layout.tee_type]
        got = doc.get("id", ids[TEE_SGX])
        if got != want:
            raise CollateralError(
                f"DCAP collateral {item} has id {got!r}, not {want!r}: it is for another kind "
                f"of quote than this {kind} quote; {COLLATERAL_HINT}"
            )
    got_fmspc = str(info.get("fmspc", "")).lower()
    if got_fmspc != fmspc:
        raise CollateralError(
            f"DCAP collateral tcb_info is for FMSPC {got_fmspc or 'none'}, but this {kind} "
            f"quote's PCK certificate has FMSPC {fmspc}: collateral for another platform; "
            f"{COLLATERAL_HINT}"
        )


def _revoked(cert: x509.Certificate, crl: x509.CertificateRevocationList) -> bool:
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def check_revocation(
    layout: QuoteLayout, chains: Mapping[str, Sequence[x509.Certificate]], crls: Crls, kind: str
) -> None:
    """No certificate below the root is revoked (RFC 5280 section 6.3). A revoked PCK
    certificate or PCK CA is the quote's: Intel withdrew trust in that platform or CA, and fresh
    collateral cannot help (EvidenceError). A revoked collateral signer is CollateralError."""
    quote_certs = (
        (layout.pck_chain[0], crls.pck, "PCK certificate", "pck_crl"),
        (layout.pck_chain[1], crls.root_ca, "PCK CA certificate", "root_ca_crl"),
    )
    for cert, crl, label, crl_name in quote_certs:
        if _revoked(cert, crl):
            raise EvidenceError(
                f"the {kind} quote's {label} {_x509.common_name(cert)!r} (serial "
                f"{cert.serial_number:#x}) is revoked by the collateral's {crl_name}"
            )
    for key, chain in chains.items():
        for cert in chain[:-1]:
            if _revoked(cert, crls.root_ca):
                raise CollateralError(
                    f"DCAP collateral {key} certificate {_x509.common_name(cert)!r} (serial "
                    f"{cert.serial_number:#x}) is revoked by root_ca_crl; {COLLATERAL_HINT}"
                )


# Validity windows: (item, start, end). Each getter reads one item of the collateral.
Window = tuple[str, datetime | None, datetime | None]


def _iso(value: Any) -> datetime | None:
    try:
        out = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return out if out.tzinfo else out.replace(tzinfo=UTC)


def _json_window(name: str, text: Any) -> list[Window]:
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return []
    if not isinstance(doc, dict):
        return []
    return [(name, _iso(doc.get("issueDate")), _iso(doc.get("nextUpdate")))]


def _crl_window(name: str, der: Any) -> list[Window]:
    try:
        crl = x509.load_der_x509_crl(bytes(der))
    except _PARSE_ERRORS:
        return []
    return [(name, crl.last_update_utc, crl.next_update_utc)]


def _cert_windows(name: str, certs: Sequence[x509.Certificate]) -> list[Window]:
    return [
        (
            f"{name} certificate {c.subject.rfc4514_string()!r}",
            c.not_valid_before_utc,
            c.not_valid_after_utc,
        )
        for c in certs
    ]


def _chain_windows(name: str, pem: Any) -> list[Window]:
    try:
        certs = [_touch(c) for c in x509.load_pem_x509_certificates(str(pem).encode())]
    except _PARSE_ERRORS:
        return []  # dcap-qvl refuses the chain itself
    return _cert_windows(name, certs)


def collateral_windows(coll: Any, layout: QuoteLayout) -> list[Window]:
    """Every dated item verification depends on, with its validity window."""
    return [
        *_json_window("tcb_info", coll.tcb_info),
        *_json_window("qe_identity", coll.qe_identity),
        *_crl_window("root_ca_crl", coll.root_ca_crl),
        *_crl_window("pck_crl", coll.pck_crl),
        *_chain_windows("tcb_info_issuer_chain", coll.tcb_info_issuer_chain),
        *_chain_windows("qe_identity_issuer_chain", coll.qe_identity_issuer_chain),
        *_chain_windows("pck_crl_issuer_chain", coll.pck_crl_issuer_chain),
        *_cert_windows("quote PCK chain", layout.pck_chain),
    ]


def _stale(windows: Sequence[Window], at: datetime) -> list[str]:
    out = []
    for name, start, end in windows:
        if start is not None and at < start:
            out.append(f"{name} is not valid before {start.isoformat()}")
        if end is not None and at > end:
            out.append(f"{name} expired at {end.isoformat()}")
    return out


def check_windows(windows: Sequence[Window], at: datetime) -> None:
    """CollateralError naming every item that is not valid at ``at``."""
    stale = _stale(windows, at)
    if stale:
        raise CollateralError(
            f"DCAP collateral is not valid at {at.isoformat()}: {'; '.join(stale)}; "
            f"{COLLATERAL_HINT}"
        )


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DcapResult:
    """A verified quote: its layout plus dcap-qvl's verdict."""

    layout: QuoteLayout
    tcb_status: str
    advisory_ids: tuple[str, ...]
    platform_tcb_status: str | None
    qe_tcb_status: str | None
    fmspc: str


def _clean(exc: BaseException) -> str:
    text = str(exc).removeprefix("Verification failed: ")
    return re.sub(r"\s*\n\s*(Caused by:)?\s*", " ", text).strip()


def _quote_failure(exc: BaseException, kind: str) -> EvidenceError:
    """A dcap-qvl refusal once blindinfer's own collateral checks passed: the quote's fault.

    The class never depends on dcap-qvl's wording; the text only picks a more helpful message.
    """
    msg = _clean(exc)
    if "no matching tcb level" in msg.lower():
        return EvidenceError(
            f"{kind} quote refused: no matching TCB level ({msg}): the platform's TCB is below "
            f"every level in Intel's TCB info, so Intel no longer vouches for it; update the "
            f"platform's microcode/firmware"
        )
    return EvidenceError(f"{kind} quote verification failed: {msg}")


def _status(report: Mapping[str, Any], key: str) -> str | None:
    value = report.get(key)
    return str(value["status"]) if isinstance(value, dict) and "status" in value else None


def _run_dcap(quote: bytes, coll: Any, root: bytes, ts: int) -> Any:
    # dcap-qvl is Rust: a panic would surface as pyo3's PanicException (a BaseException), so
    # everything but interpreter exits is caught by the caller through this narrow wrapper.
    try:
        return dcap_qvl.verify_with_root_ca(quote, coll, root, ts)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise _DcapFailure(exc) from exc


class _DcapFailure(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def verify_quote(
    quote: bytes,
    collateral: Mapping[str, bytes],
    *,
    kind: str,
    tee_type: int,
    versions: tuple[int, ...],
    at: datetime,
    roots: Sequence[bytes] | None,
) -> DcapResult:
    """Verify a DCAP quote of one kind at time ``at``; AttestationError subclasses only."""
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    layout = parse_layout(bytes(quote))
    if layout.tee_type != tee_type:
        other = "tdx" if layout.tee_type == TEE_TDX else "sgx"
        raise EvidenceError(
            f"this quote has TEE type {layout.tee_type:#x}: it is {other} evidence, not {kind} "
            f"evidence; verify it as kind {other}"
        )
    if layout.version not in versions:
        raise EvidenceError(
            f"{kind} evidence must be a DCAP quote version {' or '.join(map(str, versions))}; "
            f"this one is version {layout.version}"
        )
    root = _root_der(roots)
    check_chain(layout.pck_chain, root, f"the {kind} quote's PCK certificate chain", EvidenceError)
    fmspc = pck_fmspc(layout.pck_chain[0], kind)
    coll = load_collateral(collateral, kind)
    chains = check_collateral_chains(coll, layout, root)
    crls = check_collateral_signatures(coll, layout, chains)
    check_collateral_subject(coll, layout, kind, fmspc)
    check_revocation(layout, chains, crls, kind)
    check_windows(collateral_windows(coll, layout), at)
    ts = int(at.timestamp())
    try:
        report = _run_dcap(bytes(quote), coll, root, ts)
        doc = json.loads(report.to_json())
        status, advisories = str(report.status), tuple(str(a) for a in report.advisory_ids)
    except _DcapFailure as failure:
        raise _quote_failure(failure.cause, kind) from failure.cause
    except (TypeError, ValueError, AttributeError) as exc:
        raise EvidenceError(f"unexpected dcap-qvl result for a {kind} quote: {exc}") from exc
    if status not in TCB_STATUSES or status == "Revoked":
        raise EvidenceError(f"{kind} quote has TCB status {status!r}; it cannot be trusted")
    return DcapResult(
        layout=layout,
        tcb_status=status,
        advisory_ids=advisories,
        platform_tcb_status=_status(doc, "platform_status"),
        qe_tcb_status=_status(doc, "qe_status"),
        fmspc=fmspc,
    )


# --- shared policy helpers ---------------------------------------------------------------------


def check_masked_hex(name: str, expected: str | None, mask: str | None, actual: str) -> None:
    """(actual & mask) must equal (expected & mask), byte by byte."""
    if expected is None or mask is None:
        return
    m, e, a = bytes.fromhex(mask), bytes.fromhex(expected), bytes.fromhex(actual)
    if len(a) != len(m) or any((x & k) != (y & k) for x, y, k in zip(a, e, m, strict=False)):
        raise PolicyError(
            f"policy mismatch on {name}: expected {expected} under mask {mask}, evidence has "
            f"{actual}"
        )


def check_masked_int(name: str, expected: int | None, mask: int | None, actual: int) -> None:
    if expected is None:
        return
    m = 0xFFFFFFFF if mask is None else mask
    if (actual & m) != (expected & m):
        raise PolicyError(
            f"policy mismatch on {name}: expected {expected:#010x} under mask {m:#010x}, "
            f"evidence has {actual:#010x}"
        )


def check_debug(kind: str, allow_debug: bool, debug: bool) -> None:
    if debug and not allow_debug:
        raise PolicyError(
            f"policy mismatch on {kind}.debug: expected false (allow_debug = false), evidence "
            f"has true: a debug {kind} TEE lets the host read its memory"
        )


def check_tcb(
    kind: str, allowed_status: Sequence[str], allowed_adv: Sequence[str], claims: Claims
) -> None:
    """TCB status must be allowed; every advisory id in the evidence must be allowed."""
    status = claims.tcb_status
    advisories = tuple(claims.advisory_ids)
    if status not in allowed_status:
        want = allowed_status[0] if len(allowed_status) == 1 else f"one of {list(allowed_status)}"
        raise PolicyError(
            f"policy mismatch on {kind}.tcb_status: expected {want}, evidence has {status} "
            f"(advisories: {', '.join(advisories) or 'none'}); to accept it, add it to "
            f"allowed_tcb_status and its advisories to allowed_advisories"
        )
    extra = [a for a in advisories if a not in allowed_adv]
    if extra:
        raise PolicyError(
            f"policy mismatch on {kind}.advisory_ids: allowed {list(allowed_adv)}, evidence has "
            f"{list(advisories)} ({', '.join(extra)} not allowed)"
        )


def claims(
    result: DcapResult,
    *,
    kind: str,
    report_data: bytes,
    measurements: Mapping[str, str],
    debug: bool,
    fields: Mapping[str, Any],
    at: datetime,
) -> Claims:
    """Claims of a verified DCAP quote: the kind's own ``fields`` plus what every DCAP quote has
    (quote version, QE/PCE SVNs, FMSPC, the platform and QE TCB statuses)."""
    common = {
        "quote_version": result.layout.version,
        "qe_svn": result.layout.qe_svn,
        "pce_svn": result.layout.pce_svn,
        "fmspc": result.fmspc,
        "platform_tcb_status": result.platform_tcb_status,
        "qe_tcb_status": result.qe_tcb_status,
    }
    return Claims(
        kind=kind,
        report_data=report_data,
        measurements=dict(measurements),
        debug=debug,
        tcb_status=result.tcb_status,
        advisory_ids=result.advisory_ids,
        fields={**fields, **common},
        verified_at=at,
    )
