"""The attestation document: what `GET /blindinfer/v1/attestation` carries.

The pure core (`attestation/`) knows Evidence and Claims as values; their JSON form on the
network is owned here, by the server that writes it and the SDK that reads it.

    {"kind": str, "evidence": b64, "collateral": {name: b64}, "insecure": bool,
     "certificate": b64 DER (the TLS certificate the evidence binds), "tee": backend name}
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blindinfer import _kinds
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import EvidenceError


@dataclass(frozen=True)
class AttestationDocument:
    evidence: Evidence
    certificate_der: bytes | None = None
    tee: str | None = None

    def to_json(self) -> dict[str, Any]:
        ev = self.evidence
        doc: dict[str, Any] = {
            "kind": ev.kind,
            "evidence": _b64(ev.evidence),
            "collateral": {k: _b64(v) for k, v in ev.collateral.items()},
            "insecure": ev.kind == "simulation",
        }
        if self.certificate_der is not None:
            doc["certificate"] = _b64(self.certificate_der)
        if self.tee is not None:
            doc["tee"] = self.tee
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AttestationDocument:
        """Parse the endpoint's JSON; a malformed document raises EvidenceError."""
        try:
            kind = str(doc["kind"])
            if kind not in _kinds.KINDS:
                raise EvidenceError(
                    f"unknown evidence kind {kind!r}; expected one of {_kinds.names()}"
                )
            raw = base64.b64decode(doc["evidence"], validate=True)
            coll = {
                str(k): base64.b64decode(v, validate=True)
                for k, v in (doc.get("collateral") or {}).items()
            }
            cert = doc.get("certificate")
            cert_der = base64.b64decode(cert, validate=True) if cert is not None else None
            tee = doc.get("tee")
        except EvidenceError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error, AttributeError) as exc:
            raise EvidenceError(f"malformed attestation document: {exc}") from exc
        return cls(Evidence(kind, raw, coll), cert_der, str(tee) if tee is not None else None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
