"""AMD SEV-SNP collateral: the VCEK for a report, and the ASK + ARK chain, from AMD KDS.

KDS ("Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification", AMD
pub. 57230) serves:

- ``GET {base}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` -> VCEK (DER),
  where ``hwid`` is the report's CHIP_ID in hex (Turin: its first 8 bytes, plus ``fmcSPL``) and
  the SPLs are the report's REPORTED_TCB components;
- ``GET {base}/vcek/v1/{product}/cert_chain`` -> ASK then ARK (PEM).

The report is read with the verifier's own parser (:mod:`blindinfer.attestation._snp`: layout,
TCB decoding, product names, hwID), so the two sides cannot disagree about the format.

A VCEK depends only on the chip and the TCB it reports, so the cache key is (product, chip id,
reported TCB) and one fetch serves every later report of the same machine.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from blindinfer._collateral.cache import CollateralCache
from blindinfer.attestation import _snp as snp
from blindinfer.errors import AttestationError, CollateralError

KDS_URL = "https://kdsintf.amd.com"
PRODUCTS = snp.PRODUCTS

HttpGet = Callable[[str], bytes]
"""GET a URL and return the body; raise CollateralError on any failure or non-200 answer."""


def _product(name: str) -> str:
    """A product name in this package's spelling; AMD's ("Milan") is accepted too."""
    product = name.lower()
    if product not in PRODUCTS:
        raise CollateralError(f"unknown AMD product {name!r}; use one of {PRODUCTS}")
    return product


def _parse(report: bytes) -> snp.Report:
    try:
        return snp.parse_report(bytes(report))
    except AttestationError as exc:
        raise CollateralError(f"cannot look up a VCEK for this evidence: {exc}") from exc


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
    """REPORTED_TCB split per product (:func:`blindinfer.attestation._snp.decode_tcb`)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: str) -> ReportedTcb:
        return cls(**snp.decode_tcb(raw.to_bytes(8, "little"), _product(product)))

    def query(self) -> str:
        q = f"blSPL={self.bootloader}&teeSPL={self.tee}&snpSPL={self.snp}&ucodeSPL={self.microcode}"
        return q if self.fmc is None else f"fmcSPL={self.fmc}&{q}"


def product_from_report(report: bytes) -> str | None:
    """Product from CPUID family/model (report version >= 3), None when not recorded."""
    return snp.product_of(_parse(report))


def vcek_url(base: str, product: str, report: bytes) -> str:
    """The KDS URL of the VCEK that signs ``report``."""
    product = _product(product)
    parsed = _parse(report)
    tcb = ReportedTcb.decode(int.from_bytes(parsed.reported_tcb, "little"), product)
    hwid = snp.vcek_hwid(parsed, product)
    return f"{base.rstrip('/')}/vcek/v1/{snp.kds_name(product)}/{hwid.hex()}?{tcb.query()}"


def chain_url(base: str, product: str) -> str:
    return f"{base.rstrip('/')}/vcek/v1/{snp.kds_name(_product(product))}/cert_chain"


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

    ``product`` ("milan", "genoa", "turin"; AMD's "Milan" spelling is accepted too) is needed
    for reports older than version 3, which do not record the CPU family; newer reports name it
    themselves.
    """

    def __init__(
        self,
        cache: CollateralCache,
        *,
        product: str | None = None,
        base_url: str = KDS_URL,
        get: HttpGet = urllib_get,
    ) -> None:
        self.cache = cache
        self.product = _product(product) if product is not None else None
        self.base_url = base_url
        self._get = get

    def _product(self, report: snp.Report) -> str:
        product = self.product or snp.product_of(report)
        if product is None:
            raise CollateralError(
                "the SNP report does not name its CPU product (report version < 3); configure"
                f" the product explicitly (one of {', '.join(PRODUCTS)})"
            )
        return product

    def __call__(self, evidence: bytes) -> dict[str, bytes]:
        report = _parse(evidence)
        product = self._product(report)
        url = vcek_url(self.base_url, product, evidence)
        raw_tcb = int.from_bytes(report.reported_tcb, "little")
        key = f"amd-{product}-{report.chip_id.hex()}-{raw_tcb:016x}"

        def fetch() -> dict[str, bytes]:
            vcek = self._get(url)
            _load_der(vcek, "VCEK")
            chain = self._get(chain_url(self.base_url, product))
            _load_pem_chain(chain)
            return {"vcek": vcek, "chain": chain}

        return self.cache.get(key, fetch, collateral_expiry)
