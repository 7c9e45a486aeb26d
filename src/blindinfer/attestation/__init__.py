"""Pure attestation verification: evidence bytes + collateral + time + policy in, claims out.

Nothing in this package reads the clock, the network or the file system (apart from the trust
anchors shipped inside it). Each TEE kind lives in its own module exposing:

- ``KIND``: the kind name;
- ``detect(data: bytes) -> bool``: whether raw evidence bytes look like this kind;
- ``verify(evidence: bytes, collateral: Mapping[str, bytes], *, at: datetime,
  roots: Sequence[bytes] | None = None) -> Claims``: authenticity only (signatures, chains,
  collateral valid at ``at``); ``roots`` replaces the pinned trust anchors (DER), for tests;
- ``KindPolicy``: that kind's policy table (see ``policy.KindPolicy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import ModuleType

from blindinfer import _kinds
from blindinfer.attestation._binding import check_binding
from blindinfer.attestation._claims import Claims, Evidence
from blindinfer.attestation._policy import Policy
from blindinfer.attestation._ratls import verify_certificate
from blindinfer.errors import EvidenceError

__all__ = [
    "KINDS",
    "Claims",
    "Evidence",
    "Policy",
    "detect_kind",
    "kind_module",
    "verify_certificate",
    "verify_evidence",
]

KINDS = tuple(_kinds.KINDS)


def kind_module(kind: str) -> ModuleType:
    """The verifier module for a kind (KeyError for an unknown kind)."""
    return _kinds.kind(kind).verifier_module()


def detect_kind(data: bytes) -> str:
    """Guess the evidence kind from raw bytes; EvidenceError when no verifier recognises them."""
    for kind in KINDS:
        try:
            mod = kind_module(kind)
        except ImportError:
            continue
        if mod.detect(data):
            return kind
    raise EvidenceError("unrecognised evidence format; pass the kind explicitly (--kind)")


def verify_evidence(
    evidence: Evidence,
    *,
    at: datetime,
    policy: Policy | None = None,
    certificate_der: bytes | None = None,
    nonce: bytes | None = None,
    roots: Sequence[bytes] | None = None,
) -> Claims:
    """Verify evidence at time ``at``; then its binding to ``certificate_der`` and the policy.

    Authenticity is always checked. The binding is checked when a certificate is given (and the
    freshness nonce with it, when given), the policy when one is given. Raises an
    AttestationError subclass on any failure.
    """
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    try:
        mod = kind_module(evidence.kind)
    except KeyError:
        raise EvidenceError(f"unknown evidence kind {evidence.kind!r}") from None
    claims: Claims = mod.verify(evidence.evidence, evidence.collateral, at=at, roots=roots)
    if certificate_der is not None:
        check_binding(claims, certificate_der, nonce)
    if policy is not None:
        policy.check(claims)
    return claims
