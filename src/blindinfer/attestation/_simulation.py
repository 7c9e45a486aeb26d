"""Verifier for simulation evidence: a software-signed document with NO hardware protection.

Format (CBOR, RFC 8949): ``[payload: bstr, signature: bstr]`` where payload is a CBOR map
``{"kind": "simulation", "version": 1, "measurement": bstr 32, "report_data": bstr 64,
"signer": bstr 32 (raw Ed25519 public key), "created": int (unix seconds), "warning": tstr}``
and signature is Ed25519 by ``signer`` over ``DOMAIN || payload``.

Anyone can produce such a document with a key of their own; only a policy that pins the signer
key (and the measurement) makes it mean anything, and even then nothing protects the data from
the machine's operator. Clients refuse it unless the user opts into simulation mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import TablePolicy, expect_hex_in, hex_values
from blindinfer.errors import EvidenceError, PolicyError

KIND = "simulation"
DOMAIN = b"blindinfer-simulation-evidence-v1\x00"
WARNING = "INSECURE: simulation evidence, no hardware protection"
# A document dated further in the future than this (relative to the verification time) is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def encode_payload(measurement: bytes, report_data: bytes, signer: bytes, created: int) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "kind": KIND,
                "version": 1,
                "measurement": measurement,
                "report_data": report_data,
                "signer": signer,
                "created": created,
                "warning": WARNING,
            },
            canonical=True,
        )
    )


def detect(data: bytes) -> bool:
    try:
        doc = cbor2.loads(data)
        return (
            isinstance(doc, list)
            and len(doc) == 2
            and isinstance(doc[0], bytes)
            and cbor2.loads(doc[0]).get("kind") == KIND
        )
    except Exception:
        return False


def _bytes_field(payload: Mapping[str, Any], name: str, size: int) -> bytes:
    value = payload.get(name)
    if not isinstance(value, bytes) or len(value) != size:
        raise EvidenceError(f"simulation evidence: field {name!r} must be {size} bytes")
    return value


def verify(
    evidence: bytes,
    collateral: Mapping[str, bytes],
    *,
    at: datetime,
    roots: Sequence[bytes] | None = None,
) -> Claims:
    """Check the document's structure and Ed25519 signature; ``roots`` restricts the signer."""
    try:
        doc = cbor2.loads(evidence)
    except Exception as exc:
        raise EvidenceError(f"simulation evidence is not valid CBOR: {exc}") from exc
    if not (isinstance(doc, list) and len(doc) == 2 and all(isinstance(x, bytes) for x in doc)):
        raise EvidenceError("simulation evidence must be a CBOR array [payload, signature]")
    raw_payload, signature = doc
    try:
        payload = cbor2.loads(raw_payload)
    except Exception as exc:
        raise EvidenceError(f"simulation evidence payload is not valid CBOR: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("kind") != KIND or payload.get("version") != 1:
        raise EvidenceError("simulation evidence payload is not a version 1 simulation document")
    measurement = _bytes_field(payload, "measurement", 32)
    report_data = _bytes_field(payload, "report_data", 64)
    signer = _bytes_field(payload, "signer", 32)
    created = payload.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise EvidenceError("simulation evidence: field 'created' must be a unix time")
    if roots is not None and signer not in set(roots):
        raise EvidenceError("simulation evidence is signed by a key that is not a trusted root")
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(signature, DOMAIN + raw_payload)
    except (InvalidSignature, ValueError) as exc:
        raise EvidenceError("simulation evidence signature does not verify") from exc
    created_at = datetime.fromtimestamp(created, UTC)
    if created_at - at > MAX_CLOCK_SKEW:
        raise EvidenceError(
            f"simulation evidence was created at {created_at.isoformat()}, after the "
            f"verification time {at.isoformat()}"
        )
    return Claims(
        kind=KIND,
        report_data=report_data,
        measurements={"measurement": measurement.hex()},
        debug=True,
        insecure=True,
        fields={"signer": signer.hex(), "created": created_at.isoformat()},
        verified_at=at,
    )


@dataclass(frozen=True)
class KindPolicy(TablePolicy):
    """``[simulation]``: ``measurement`` and ``signer`` (hex or lists of hex) pin the code and key.

    A ``[simulation]`` table with neither pinned accepts any simulation server. It never makes
    simulation secure; clients also demand an explicit simulation-mode opt-in.
    """

    kind: ClassVar[str] = KIND
    measurement: Annotated[list[str] | None, hex_values(32)] = None
    signer: Annotated[list[str] | None, hex_values(32)] = None

    @classmethod
    def from_claims(cls, claims: Claims) -> KindPolicy:
        return cls([claims.measurements["measurement"]], [str(claims.fields["signer"])])

    def check(self, claims: Claims) -> None:
        if claims.kind != KIND:
            raise PolicyError(f"expected simulation claims, got {claims.kind}")
        expect_hex_in(
            "simulation.measurement", self.measurement, claims.measurements["measurement"]
        )
        expect_hex_in("simulation.signer", self.signer, str(claims.fields["signer"]))
