"""Fetching and caching collateral: the network and disk I/O that ``attestation/`` must not do.

A *collateral provider* is any callable ``provider(evidence: bytes) -> Mapping[str, bytes]`` that
returns the Evidence.collateral items for one piece of evidence (raising CollateralError when it
cannot). TEE backends take one as their ``collateral`` option and attach its answer to the
Evidence they produce:

- :class:`~blindinfer._collateral.dcap.DcapCollateralProvider` (SGX, TDX) -> ``{"dcap": json}``
- :class:`~blindinfer._collateral.amd.AmdKdsProvider` (SEV-SNP) -> ``{"vcek": DER, "chain": PEM}``

Both cache on disk under ``<data-dir>/collateral/`` (:class:`~.cache.CollateralCache`) and take an
injectable fetch function, so tests never touch the network.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from blindinfer import _kinds
from blindinfer._collateral.cache import CollateralCache
from blindinfer.errors import CollateralError

__all__ = [
    "CollateralCache",
    "CollateralProvider",
    "cache_for",
    "collect",
    "default_provider",
    "provider_from_options",
]

log = logging.getLogger(__name__)


class CollateralProvider(Protocol):
    def __call__(self, evidence: bytes) -> Mapping[str, bytes]: ...


def cache_for(data_dir: Path) -> CollateralCache:
    """The server's collateral cache: ``<data-dir>/collateral/``."""
    return CollateralCache(data_dir / "collateral")


def collect(provider: CollateralProvider | None, evidence: bytes) -> dict[str, bytes]:
    """Collateral for ``evidence``, or {} (with a warning) when there is none to give.

    A server must still answer with evidence when its collateral service is down: clients can
    fetch collateral themselves, and a verifier without it fails closed.
    """
    if provider is None:
        return {}
    try:
        return dict(provider(evidence))
    except CollateralError as exc:
        log.warning("no collateral attached to the evidence: %s", exc)
        return {}


def default_provider(
    kind: str,
    data_dir: Path,
    *,
    pccs_url: str | None = None,
    amd_product: str | None = None,
    kds_url: str | None = None,
) -> CollateralProvider | None:
    """The standard provider for an evidence kind (its row in ``_kinds``), caching under
    ``<data-dir>/collateral/``; None for a kind that needs no collateral."""
    factory = _kinds.collateral_factory(kind)
    if factory is None:
        return None
    settings = {"pccs_url": pccs_url, "amd_product": amd_product, "kds_url": kds_url}
    provider: CollateralProvider = factory(cache_for(data_dir), **settings)
    return provider


def dcap_provider(cache: CollateralCache, *, pccs_url: str | None, **_: Any) -> CollateralProvider:
    """sgx / tdx: DCAP collateral from ``pccs_url`` (default: Intel PCS)."""
    from blindinfer._collateral.dcap import INTEL_PCS_URL, DcapCollateralProvider

    return DcapCollateralProvider(cache, pccs_url or INTEL_PCS_URL)


def amd_provider(
    cache: CollateralCache, *, amd_product: str | None, kds_url: str | None, **_: Any
) -> CollateralProvider:
    """snp: AMD KDS (``kds_url``, default kdsintf.amd.com; ``amd_product`` for reports that do
    not name their CPU)."""
    from blindinfer._collateral.amd import KDS_URL, AmdKdsProvider

    return AmdKdsProvider(cache, product=amd_product, base_url=kds_url or KDS_URL)


def provider_from_options(kind: str, data_dir: Path, options: dict[str, Any]) -> None:
    """Replace the collateral-related backend options by one ``collateral`` provider, in place.

    Consumes ``pccs_url``, ``amd_product`` and ``kds_url``; keeps an explicit ``collateral``.
    """
    settings = {k: options.pop(k) for k in ("pccs_url", "amd_product", "kds_url") if k in options}
    if options.get("collateral") is None:
        options["collateral"] = default_provider(kind, data_dir, **settings)
