"""``--tee coco-tdx``: TDX evidence from the Confidential Containers attestation agent.

Inside a CoCo pod the guest's configfs-tsm is usually not exposed; the attestation agent's local
REST API (``/aa/evidence?runtime_data=``, through api-server-rest on 127.0.0.1:8006) produces the
quote instead (``blindinfer._keys.cdh.AttestationAgentEvidence``, which checks the quote carries
exactly the report_data asked for). This backend has no sealing key of its own: run it with
``--key-broker cdh`` (or a KBS URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blindinfer._collateral import CollateralProvider, collect, provider_from_options
from blindinfer._keys.cdh import CDH_DEFAULT_BASE, AttestationAgentEvidence
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import BackendUnavailable


class CocoBackend:
    insecure = False

    def __init__(self, agent: AttestationAgentEvidence, collateral: CollateralProvider | None):
        self.name = "coco-tdx"
        self.kind = agent.kind
        self._agent = agent
        self._collateral = collateral

    def get_evidence(self, report_data: bytes) -> Evidence:
        evidence = self._agent.get_evidence(report_data)
        coll = collect(self._collateral, evidence.evidence)
        return Evidence(evidence.kind, evidence.evidence, coll)

    def sealing_key(self) -> bytes:
        raise BackendUnavailable(
            "coco-tdx has no sealing key of its own: start with --key-broker cdh (the pod's "
            "confidential data hub) or --key-broker https://<kbs>"
        )


def create(name: str, data_dir: Path, **options: Any) -> CocoBackend:
    """Options: ``aa_url`` (default the pod-local api-server-rest), ``timeout`` (seconds),
    ``pccs_url`` / ``collateral`` as for ``--tee tdx``."""
    if name != "coco-tdx":
        raise BackendUnavailable(f"the CoCo attestation agent backend is coco-tdx, not {name!r}")
    provider_from_options("tdx", data_dir, options)
    agent = AttestationAgentEvidence(
        "tdx",
        base=str(options.pop("aa_url", CDH_DEFAULT_BASE)),
        timeout=float(options.pop("timeout", 30.0)),
    )
    collateral = options.pop("collateral", None)
    if options:
        raise BackendUnavailable(f"unknown coco-tdx option(s): {', '.join(sorted(options))}")
    return CocoBackend(agent, collateral)
