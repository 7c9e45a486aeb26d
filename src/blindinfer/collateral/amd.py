"""AMD SEV-SNP collateral: the VCEK for a report, and the ASK + ARK chain, from AMD KDS.

KDS ("Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification", AMD
pub. 57230) serves:

- ``GET {base}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` -> VCEK (DER),
  where ``hwid`` is the report's CHIP_ID in hex (Turin: its first 8 bytes, plus ``fmcSPL``) and
  the SPLs are the report's REPORTED_TCB components;
- ``GET {base}/vcek/v1/{product}/cert_chain`` -> ASK then ARK (PEM).

A VCEK depends only on the chip and the TCB it reports, so the cache key is (product, chip id,
reported TCB) and one fetch serves every later report of the same machine.
"""

from __future__ import annotations

import struct
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from blindinfer.collateral.cache import CollateralCache
from blindinfer.errors import CollateralError

KDS_URL = "https://kdsintf.amd.com"
PRODUCTS = ("Milan", "Genoa", "Turin")

HttpGet = Callable[[str], bytes]
"""GET a URL and return the body; raise CollateralError on any failure or non-200 answer."""

# ATTESTATION_REPORT structure, SEV-SNP Firmware ABI spec (AMD pub. 56860), Table 22 (rev 1.55).
_VERSION = 0x000
_REPORTED_TCB = 0x180
_CPUID_FAM = 0x188  # version >= 3 only
_CPUID_MOD = 0x189
_CHIP_ID = slice(0x1A0, 0x1E0)
_REPORT_LEN = 0x4A0


def urllib_get(url: str, timeout: float = 15.0) -> bytes:
    """Plain HTTPS GET with the standard library."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CollateralError(f"GET {url} failed: {exc}") from exc


@dataclass(frozen=True)
class ReportedTcb:
    """REPORTED_TCB split per product (TCB_VERSION layout: ABI spec Table 3; Turin adds FMC)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: str) -> ReportedTcb:
        b = raw.to_bytes(8, "little")
        if product == "Turin":
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def query(self) -> str:
        q = f"blSPL={self.bootloader}&teeSPL={self.tee}&snpSPL={self.snp}&ucodeSPL={self.microcode}"
        return q if self.fmc is None else f"fmcSPL={self.fmc}&{q}"


def product_from_report(report: bytes) -> str | None:
    """Product name from CPUID family/model (report version >= 3), None when not recorded."""
    if len(report) < _REPORT_LEN or struct.unpack_from("<I", report, _VERSION)[0] < 3:
        return None
    family, model = report[_CPUID_FAM], report[_CPUID_MOD]
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"  # Genoa, Bergamo and Siena share Genoa's KDS endpoint and ARK
    if family == 0x1A and model <= 0x11:
        return "Turin"
    return None


def vcek_url(base: str, product: str, report: bytes) -> str:
    """The KDS URL of the VCEK that signs ``report``."""
    (raw_tcb,) = struct.unpack_from("<Q", report, _REPORTED_TCB)
    chip_id = report[_CHIP_ID]
    hwid = chip_id[:8] if product == "Turin" else chip_id
    tcb = ReportedTcb.decode(raw_tcb, product)
    return f"{base.rstrip('/')}/vcek/v1/{product}/{hwid.hex()}?{tcb.query()}"


def chain_url(base: str, product: str) -> str:
    return f"{base.rstrip('/')}/vcek/v1/{product}/cert_chain"


def _load_der(der: bytes, what: str) -> x509.Certificate:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # VCEKs carry serial number 0
            return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CollateralError(f"{what} from KDS is not a DER certificate: {exc}") from exc


def _load_pem_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CollateralError(f"ASK/ARK chain from KDS is not PEM: {exc}") from exc
    if len(certs) != 2:
        raise CollateralError(f"ASK/ARK chain from KDS has {len(certs)} certificates, expected 2")
    return certs


def collateral_expiry(items: Mapping[str, bytes]) -> datetime:
    """The earliest notAfter among the VCEK, ASK and ARK."""
    certs = [_load_der(items["vcek"], "VCEK"), *_load_pem_chain(items["chain"])]
    return min(c.not_valid_after_utc for c in certs)


class AmdKdsProvider:
    """A CollateralProvider for SNP reports: ``provider(report) -> {"vcek": DER, "chain": PEM}``.

    ``product`` ("Milan", "Genoa", "Turin") is needed for reports older than version 3, which do
    not record the CPU family; newer reports name it themselves.
    """

    def __init__(
        self,
        cache: CollateralCache,
        *,
        product: str | None = None,
        base_url: str = KDS_URL,
        get: HttpGet = urllib_get,
    ) -> None:
        if product is not None and product not in PRODUCTS:
            raise CollateralError(f"unknown AMD product {product!r}; use one of {PRODUCTS}")
        self.cache = cache
        self.product = product
        self.base_url = base_url
        self._get = get

    def _product(self, report: bytes) -> str:
        product = self.product or product_from_report(report)
        if product is None:
            raise CollateralError(
                "the SNP report does not name its CPU product (report version < 3); configure"
                f" the product explicitly (one of {', '.join(PRODUCTS)})"
            )
        return product

    def __call__(self, evidence: bytes) -> dict[str, bytes]:
        if len(evidence) < _REPORT_LEN:
            raise CollateralError(f"SNP report is {len(evidence)} bytes, expected {_REPORT_LEN}")
        product = self._product(evidence)
        url = vcek_url(self.base_url, product, evidence)
        (raw_tcb,) = struct.unpack_from("<Q", evidence, _REPORTED_TCB)
        key = f"amd-{product.lower()}-{evidence[_CHIP_ID].hex()}-{raw_tcb:016x}"

        def fetch() -> dict[str, bytes]:
            vcek = self._get(url)
            _load_der(vcek, "VCEK")
            chain = self._get(chain_url(self.base_url, product))
            _load_pem_chain(chain)
            return {"vcek": vcek, "chain": chain}

        return self.cache.get(key, fetch, collateral_expiry)
