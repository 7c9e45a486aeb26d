"""DCAP collateral (SGX and TDX) from a PCCS or Intel PCS, cached until shortly before it expires.

The collateral for a quote depends on the platform, not on the quote's report_data: on one
machine it is the same for every quote, so the cache key is (TEE type, FMSPC, PCK CA), the three
inputs of the PCS/PCCS v4 API requests (Intel "PCK Certificate and Certificate Revocation List
Infrastructure" and "Provisioning Certification Service for ECDSA Attestation" API, v4).

The fetch itself is dcap-qvl's ``get_collateral(pccs_url, quote)``; it is injectable so tests
(and deployments with their own collateral distribution) can replace it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import warnings
from collections.abc import Callable, Coroutine, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

from cryptography import x509

from blindinfer._collateral.cache import CollateralCache
from blindinfer.errors import CollateralError

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
ITEM = "dcap"

DcapFetcher = Callable[[str, bytes], bytes]
"""(PCCS or PCS base URL, raw quote) -> dcap-qvl QuoteCollateralV3 JSON bytes."""

T = TypeVar("T")


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to completion in a fresh event loop, also from inside a running one.

    The coroutine is created inside the loop: dcap-qvl's futures need a running loop at creation.
    """

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def dcap_qvl_fetcher(pccs_url: str, quote: bytes) -> bytes:
    """Fetch with dcap-qvl (its own HTTP client); every failure becomes CollateralError."""
    import dcap_qvl

    try:
        collateral = _run(lambda: dcap_qvl.get_collateral(pccs_url, quote))
        return str(collateral.to_json()).encode()
    except CollateralError:
        raise
    except Exception as exc:  # dcap-qvl surfaces Rust errors as ValueError/RuntimeError
        raise CollateralError(f"fetching DCAP collateral from {pccs_url} failed: {exc}") from exc


def cache_key(quote: bytes) -> str:
    """``dcap-<SGX|TDX>-<fmspc>-<ca>`` for a quote, CollateralError if it cannot be parsed."""
    import dcap_qvl

    try:
        parsed = dcap_qvl.parse_quote(quote)
        tee = str(parsed.quote_type()).lower()
        fmspc = str(parsed.fmspc()).lower()
        ca = str(parsed.ca()).lower()
    except Exception as exc:
        raise CollateralError(f"cannot read FMSPC/CA from the quote: {exc}") from exc
    return f"dcap-{tee}-{fmspc}-{ca}"


# --- expiry ------------------------------------------------------------------------------------


def _parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise CollateralError(f"DCAP collateral {what} is missing")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CollateralError(f"DCAP collateral {what} is not a date: {value!r}") from exc
    if moment.tzinfo is None:
        raise CollateralError(f"DCAP collateral {what} has no time zone: {value!r}")
    return moment


def _pem_certs(doc: Mapping[str, Any]) -> Iterator[x509.Certificate]:
    for name in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
        chain = doc.get(name)
        if not isinstance(chain, str):
            raise CollateralError(f"DCAP collateral {name} is missing")
        try:
            yield from x509.load_pem_x509_certificates(chain.encode())
        except ValueError as exc:
            raise CollateralError(f"DCAP collateral {name} is not PEM: {exc}") from exc


def _crl_next_updates(doc: Mapping[str, Any]) -> Iterator[datetime]:
    for name in ("root_ca_crl", "pck_crl"):
        value = doc.get(name)
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else b""
            crl = x509.load_der_x509_crl(raw)
        except ValueError as exc:
            raise CollateralError(f"DCAP collateral {name} is not a DER CRL: {exc}") from exc
        if crl.next_update_utc is None:
            raise CollateralError(f"DCAP collateral {name} has no nextUpdate")
        yield crl.next_update_utc


def _json_next_update(doc: Mapping[str, Any], name: str) -> datetime:
    try:
        body = json.loads(doc[name])
        value = body["nextUpdate"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CollateralError(f"DCAP collateral {name} has no nextUpdate") from exc
    return _parse_time(value, f"{name}.nextUpdate")


def collateral_expiry(collateral_json: bytes) -> datetime:
    """The earliest nextUpdate (TCB info, QE identity, CRLs) or notAfter (issuer chains)."""
    try:
        doc = json.loads(collateral_json)
    except ValueError as exc:
        raise CollateralError(f"DCAP collateral is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CollateralError("DCAP collateral is not a JSON object")
    moments = [_json_next_update(doc, "tcb_info"), _json_next_update(doc, "qe_identity")]
    moments.extend(_crl_next_updates(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moments.extend(cert.not_valid_after_utc for cert in _pem_certs(doc))
    return min(moments)


# --- provider ----------------------------------------------------------------------------------


class DcapCollateralProvider:
    """A CollateralProvider for SGX and TDX quotes: ``provider(quote) -> {"dcap": json}``."""

    def __init__(
        self,
        cache: CollateralCache,
        pccs_url: str = INTEL_PCS_URL,
        fetcher: DcapFetcher = dcap_qvl_fetcher,
    ) -> None:
        self.cache = cache
        self.pccs_url = pccs_url
        self._fetch = fetcher

    def __call__(self, evidence: bytes) -> dict[str, bytes]:
        def fetch() -> dict[str, bytes]:
            return {ITEM: self._fetch(self.pccs_url, evidence)}

        def expiry(items: Mapping[str, bytes]) -> datetime:
            return collateral_expiry(items[ITEM])

        return self.cache.get(cache_key(evidence), fetch, expiry)
