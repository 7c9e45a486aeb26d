"""What a verifier hands back: the evidence container in, verified claims out.

These types are the contract between the per-TEE verifier modules, the policy layer, the binding
check, the server's attestation endpoint and the CLI. They hold plain bytes and JSON-able values
only, so they can be printed (``blindinfer verify --json``) and compared in tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Evidence:
    """Attestation evidence as produced by a TEE backend, with the collateral to check it.

    ``collateral`` maps a kind-specific item name to its bytes:
    - sgx / tdx: ``"dcap"`` -> dcap-qvl QuoteCollateralV3 JSON (UTF-8 bytes)
    - snp: ``"vcek"`` -> VCEK certificate (DER or PEM), ``"chain"`` -> ASK + ARK (PEM)
    - nitro, simulation: none
    """

    kind: str
    evidence: bytes
    collateral: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Claims:
    """Verified facts about a TEE, produced only after every signature and chain checked out.

    - ``report_data``: the 64 bytes the TEE signed on the workload's behalf (Nitro: ``user_data``
      exactly as in the document, any length).
    - ``public_key``: Nitro's optional ``public_key`` field; None elsewhere.
    - ``measurements``: lowercase hex, names per kind (sgx: mrenclave, mrsigner; tdx: mrtd,
      rtmr0..rtmr3, mrseam; snp: measurement, host_data; nitro: pcr0, pcr1, pcr2, pcr8, ...;
      simulation: measurement).
    - ``tcb_status``: the vendor's verdict where the kind has one (DCAP: "UpToDate", ...).
    - ``fields``: every other kind-specific value a policy may judge, JSON-able
      (hex strings for bytes).
    """

    kind: str
    report_data: bytes
    measurements: Mapping[str, str]
    debug: bool
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    public_key: bytes | None = None
    insecure: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict)
    verified_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "insecure": self.insecure,
            "debug": self.debug,
            "measurements": dict(self.measurements),
            "report_data": self.report_data.hex(),
            "public_key": self.public_key.hex() if self.public_key is not None else None,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "fields": dict(self.fields),
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
        }
