"""Test-only DCAP kit: a real SGX/TDX quote re-signed under an Intel-style PKI made in the test.

dcap-qvl's ``verify_with_root_ca`` takes the root CA as a parameter, so a quote and collateral
issued under a test root verify when (and only when) that root is given. To stay in the real
format, the hardware's own quote and collateral from the shared vectors are the template:

- PKI: a self-signed test root CA -> test "PCK Processor CA" -> test PCK certificate, and
  root -> test "TCB Signing" certificate, all ECDSA P-256 / SHA-256 like Intel's. The PCK
  certificate carries the SGX extension (OID 1.2.840.113741.1.13.1: PPID, TCB components,
  PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type) copied from the real PCK certificate, so FMSPC and
  TCB match the real TCB info. CRLs (root CA CRL, PCK CRL) are empty and current.
- Quote (Intel SGX ECDSA Quote Library API, Appendix A; TDX DCAP Quoting Library API, Appendix A):
  the real header and body with REPORTDATA replaced, a fresh ECDSA attestation key signing
  header + body, the real QE report with REPORTDATA = SHA-256(attestation key || QE auth data)
  signed by the test PCK key, and the test PCK chain as certification data type 5 (nested in
  type 6, "QE report certification data", for TDX quote v4).
- Collateral (dcap-qvl ``QuoteCollateralV3`` JSON): the real TCB info and QE identity JSON with
  issueDate/nextUpdate moved around ``now``, signed by the test TCB signing key.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2034, 1, 1, tzinfo=UTC)

HEADER_LEN = 48
BODY_LEN = {3: 384, 4: 584}  # SGX report body (quote v3) / TD report 1.0 body (quote v4)
REPORT_DATA_AT = {3: 320, 4: 520}  # REPORTDATA offset inside the body
QE_REPORT_LEN = 384
SIG_LEN = 64
CERT_PCK_CHAIN, CERT_QE_REPORT = 5, 6


# --- small crypto helpers ----------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as DCAP stores it: r || s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 64-byte X || Y form of the ECDSA attestation key in the quote."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "blindinfer test (not Intel)"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extension: x509.UnrecognizedExtension | None = None,
) -> x509.Certificate:
    usage = x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=not ca,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(issuer: str, key: ec.EllipticCurvePrivateKey, now: datetime) -> bytes:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(now - timedelta(days=1))
        .next_update(now + timedelta(days=30))
        .add_extension(x509.CRLNumber(1), critical=False)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# --- the real template -------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A real quote cut into the parts that are kept, and its real collateral."""

    version: int
    header: bytes
    body: bytes
    qe_report: bytes
    qe_auth_data: bytes
    sgx_extension: x509.UnrecognizedExtension
    collateral: dict[str, str]

    @classmethod
    def load(cls, quote_path: Path, collateral_path: Path) -> Template:
        quote = quote_path.read_bytes()
        version = struct.unpack_from("<H", quote)[0]
        body_end = HEADER_LEN + BODY_LEN[version]
        sig = quote[body_end + 4 :]
        cert = sig[2 * SIG_LEN :]
        if version == 4:  # type 6: QE report certification data, nested
            cert_type, size = struct.unpack_from("<HI", cert)
            assert cert_type == CERT_QE_REPORT
            cert = cert[6 : 6 + size]
        qe_report = cert[:QE_REPORT_LEN]
        (auth_len,) = struct.unpack_from("<H", cert, QE_REPORT_LEN + SIG_LEN)
        auth_at = QE_REPORT_LEN + SIG_LEN + 2
        auth = cert[auth_at : auth_at + auth_len]
        cert_type, size = struct.unpack_from("<HI", cert, auth_at + auth_len)
        assert cert_type == CERT_PCK_CHAIN
        chain_at = auth_at + auth_len + 6
        pck = x509.load_pem_x509_certificates(cert[chain_at : chain_at + size].rstrip(b"\0"))[0]
        ext = pck.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        return cls(
            version=version,
            header=quote[:HEADER_LEN],
            body=quote[HEADER_LEN:body_end],
            qe_report=qe_report,
            qe_auth_data=auth,
            sgx_extension=ext,
            collateral=json.loads(collateral_path.read_text()),
        )


# --- the test PKI and the quotes it signs --------------------------------------------------------


class DcapTestPki:
    """A test root CA with a PCK chain and a TCB signing certificate (see module docstring)."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.root_key, self.pck_ca_key, self.pck_key, self.tcb_key = (_key() for _ in range(4))
        root = "Test SGX Root CA"
        self.root = _cert(root, self.root_key, root, self.root_key, ca=True)
        self.pck_ca = _cert(
            "Test SGX PCK Processor CA", self.pck_ca_key, root, self.root_key, ca=True
        )
        self.pck = _cert(
            "Test SGX PCK Certificate",
            self.pck_key,
            "Test SGX PCK Processor CA",
            self.pck_ca_key,
            ca=False,
            extension=template.sgx_extension,
        )
        self.tcb_signer = _cert("Test SGX TCB Signing", self.tcb_key, root, self.root_key, ca=False)

    @cached_property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def _certification_data(self, attestation_key: bytes) -> bytes:
        """QE report (REPORTDATA binds the attestation key), its PCK signature, QE auth data,
        and the PCK chain (type 5)."""
        t = self.template
        qe_report = bytearray(t.qe_report)
        qe_report[320:352] = hashlib.sha256(attestation_key + t.qe_auth_data).digest()
        qe_report[352:384] = bytes(32)
        chain = _pem(self.pck, self.pck_ca, self.root)
        return (
            bytes(qe_report)
            + raw_sign(self.pck_key, bytes(qe_report))
            + struct.pack("<H", len(t.qe_auth_data))
            + t.qe_auth_data
            + struct.pack("<HI", CERT_PCK_CHAIN, len(chain))
            + chain
        )

    def quote(self, report_data: bytes) -> bytes:
        """The template quote over ``report_data``, signed by a fresh attestation key."""
        t = self.template
        body = bytearray(t.body)
        at = REPORT_DATA_AT[t.version]
        body[at : at + 64] = report_data
        signed = t.header + bytes(body)
        att_key = _key()
        att_pub = raw_public_key(att_key)
        cert = self._certification_data(att_pub)
        if t.version == 4:
            cert = struct.pack("<HI", CERT_QE_REPORT, len(cert)) + cert
        sig_data = raw_sign(att_key, signed) + att_pub + cert
        return signed + struct.pack("<I", len(sig_data)) + sig_data

    def _signed_json(self, text: str, now: datetime) -> tuple[str, str]:
        doc = json.loads(text)
        doc["issueDate"] = (now.astimezone(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc["nextUpdate"] = (now.astimezone(UTC) + timedelta(days=30)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        out = json.dumps(doc, separators=(",", ":"))
        return out, raw_sign(self.tcb_key, out.encode()).hex()

    def collateral(self, now: datetime) -> bytes:
        """QuoteCollateralV3 JSON valid around ``now`` (timezone-aware), all under the test root."""
        t = self.template.collateral
        tcb_info, tcb_sig = self._signed_json(t["tcb_info"], now)
        qe_identity, qe_sig = self._signed_json(t["qe_identity"], now)
        signer_chain = _pem(self.tcb_signer, self.root).decode()
        doc = {
            "pck_crl_issuer_chain": _pem(self.pck_ca, self.root).decode(),
            "root_ca_crl": _crl("Test SGX Root CA", self.root_key, now).hex(),
            "pck_crl": _crl("Test SGX PCK Processor CA", self.pck_ca_key, now).hex(),
            "tcb_info_issuer_chain": signer_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_sig,
            "qe_identity_issuer_chain": signer_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_sig,
        }
        return json.dumps(doc).encode()
