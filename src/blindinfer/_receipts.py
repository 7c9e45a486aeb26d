"""Signed inference receipts: proof, for a third party, that a TEE ran a model on given data.

A receipt is a COSE_Sign1 (RFC 9052 section 4.2, CBOR tag 18) made by the server, inside the
TEE, with its TLS private key (ECDSA P-256, COSE alg ES256 = -7). The evidence binds that key:
``report_data[0:32] = sha256(certificate DER)`` (``attestation/_binding.py``). The *bundle*
carries everything a verifier needs offline: the COSE_Sign1, the certificate, the evidence and
the collateral the server held when it signed. Format and canonical encodings:
``docs/receipts.md``.

Signing and verification here are pure: bytes, keys, times and policies in, bytes or verdicts
out; no clock, network or file system (the caller passes the time).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import cbor2
import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from blindinfer._wire.tensors import datatype_of, to_wire_bytes
from blindinfer.attestation import Claims, Evidence, Policy, verify_evidence
from blindinfer.errors import (
    PolicyError,
    ReceiptError,
    ReceiptMismatch,
    ReceiptSignatureError,
    ReceiptTimeError,
)

__all__ = [
    "BUNDLE_FORMAT",
    "PAYLOAD_CONTENT_TYPE",
    "ReceiptPayload",
    "ReceiptSigner",
    "VerifiedReceipt",
    "parse_bundle",
    "tensors_digest",
    "verify_receipt",
]

BUNDLE_FORMAT: Final = "blindinfer-receipt"
BUNDLE_VERSION: Final = 1
PAYLOAD_VERSION: Final = 1
PAYLOAD_CONTENT_TYPE: Final = "application/vnd.blindinfer.receipt+cbor"
COSE_SIGN1_TAG: Final = 18
HEADER_ALG: Final = 1  # RFC 9052 section 3.1
HEADER_CONTENT_TYPE: Final = 3
ALG_ES256: Final = -7  # RFC 9053 section 2.1: ECDSA w/ SHA-256 on P-256
_COORD: Final = 32  # bytes of r and of s for P-256 (RFC 9053 section 2.1: fixed-size r || s)
_TENSORS_DOMAIN: Final = b"blindinfer-tensors-v1\x00"

_PAYLOAD_KEYS: Final = frozenset(
    {
        "version",
        "model_sha256",
        "inputs_sha256",
        "outputs_sha256",
        "request_id",
        "time",
        "tee",
        "certificate_sha256",
        "evidence_sha256",
        "collateral_sha256",
        "claims",
    }
)


# --- canonical encodings -----------------------------------------------------------------------


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> bytes:
    """sha256 of a set of named tensors in the canonical encoding (docs/receipts.md):

    ``"blindinfer-tensors-v1\\0"`` then, per tensor in order of the UTF-8 bytes of its name, the
    CBOR array ``[name, datatype, shape, nbytes]`` followed by the tensor's OIP wire bytes
    (raw little-endian C order; BYTES as 4-byte little-endian length-prefixed elements)."""
    h = hashlib.sha256(_TENSORS_DOMAIN)
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        array = np.asarray(tensors[name])
        data = to_wire_bytes(array)
        h.update(cbor2.dumps([name, datatype_of(array), list(array.shape), len(data)]))
        h.update(data)
    return h.digest()


def collateral_digest(collateral: Mapping[str, bytes]) -> bytes:
    """sha256 of the collateral map as canonical CBOR (RFC 8949 section 4.2.1 key order)."""
    return hashlib.sha256(cbor2.dumps(dict(collateral), canonical=True)).digest()


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _policy_claims(claims: Claims) -> dict[str, Any]:
    """The claims a policy judges, as signed into the payload (for readers; re-derived and
    compared by the verifier)."""
    return {
        "measurements": dict(claims.measurements),
        "debug": claims.debug,
        "insecure": claims.insecure,
        "tcb_status": claims.tcb_status,
    }


# --- the payload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptPayload:
    """What a receipt's COSE_Sign1 signs (a canonical CBOR map with these keys)."""

    model_sha256: bytes
    inputs_sha256: bytes
    outputs_sha256: bytes
    request_id: str
    time: datetime
    tee: str
    certificate_sha256: bytes
    evidence_sha256: bytes
    collateral_sha256: bytes
    claims: Mapping[str, Any] | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "version": PAYLOAD_VERSION,
            "model_sha256": self.model_sha256,
            "inputs_sha256": self.inputs_sha256,
            "outputs_sha256": self.outputs_sha256,
            "request_id": self.request_id,
            "time": _rfc3339(self.time),
            "tee": self.tee,
            "certificate_sha256": self.certificate_sha256,
            "evidence_sha256": self.evidence_sha256,
            "collateral_sha256": self.collateral_sha256,
            "claims": dict(self.claims) if self.claims is not None else None,
        }
        return bytes(cbor2.dumps(doc, canonical=True))

    @classmethod
    def decode(cls, raw: bytes) -> ReceiptPayload:
        doc = _cbor_exact(raw, "receipt payload")
        if not isinstance(doc, Mapping) or set(doc) != _PAYLOAD_KEYS:
            raise ReceiptError("the receipt payload is not a map with the version 1 keys")
        if doc["version"] != PAYLOAD_VERSION:
            raise ReceiptError(f"unsupported receipt payload version {doc['version']!r}")
        digests = {
            k: doc[k]
            for k in _PAYLOAD_KEYS
            if k.endswith("_sha256") and isinstance(doc[k], bytes) and len(doc[k]) == 32
        }
        if len(digests) != 6:
            raise ReceiptError("a digest in the receipt payload is not 32 bytes")
        if not all(isinstance(doc[k], str) for k in ("request_id", "time", "tee")):
            raise ReceiptError("request_id, time and tee of the receipt payload must be text")
        claims = doc["claims"]
        if claims is not None and not isinstance(claims, Mapping):
            raise ReceiptError("the receipt payload's claims must be a map or null")
        try:
            at = datetime.fromisoformat(doc["time"])
        except ValueError:
            raise ReceiptError(f"the receipt time {doc['time']!r} is not RFC 3339") from None
        if at.tzinfo is None:
            raise ReceiptError("the receipt time has no time zone")
        payload = cls(
            model_sha256=digests["model_sha256"],
            inputs_sha256=digests["inputs_sha256"],
            outputs_sha256=digests["outputs_sha256"],
            request_id=doc["request_id"],
            time=at,
            tee=doc["tee"],
            certificate_sha256=digests["certificate_sha256"],
            evidence_sha256=digests["evidence_sha256"],
            collateral_sha256=digests["collateral_sha256"],
            claims=_plain(claims) if claims is not None else None,
        )
        if payload.encode() != bytes(raw):
            raise ReceiptError("the receipt payload is not in canonical CBOR")
        return payload

    def to_json(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model_sha256.hex(),
            "inputs_sha256": self.inputs_sha256.hex(),
            "outputs_sha256": self.outputs_sha256.hex(),
            "request_id": self.request_id,
            "time": _rfc3339(self.time),
            "tee": self.tee,
            "certificate_sha256": self.certificate_sha256.hex(),
            "evidence_sha256": self.evidence_sha256.hex(),
            "collateral_sha256": self.collateral_sha256.hex(),
            "claims": dict(self.claims) if self.claims is not None else None,
        }


def _plain(value: Any) -> Any:
    """cbor2 decodes nested maps as frozendicts inside some containers: plain dicts/lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cbor_exact(data: bytes, what: str) -> Any:
    """One CBOR item spanning all of ``data``; ReceiptError otherwise."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:
        raise ReceiptError(f"the {what} is not valid CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise ReceiptError(f"{len(data) - fp.tell()} trailing bytes after the {what}")
    return item


# --- COSE_Sign1 (RFC 9052 section 4.2) ---------------------------------------------------------


def _protected_header() -> bytes:
    return bytes(cbor2.dumps({HEADER_ALG: ALG_ES256, HEADER_CONTENT_TYPE: PAYLOAD_CONTENT_TYPE}))


_PROTECTED: Final = _protected_header()


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Sig_structure (RFC 9052 section 4.4): context "Signature1", no external AAD."""
    return bytes(cbor2.dumps(["Signature1", protected, b"", payload]))


def _cose_sign1(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    der = key.sign(_sig_structure(_PROTECTED, payload), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [_PROTECTED, {}, payload, signature])))


def _open_cose_sign1(data: bytes, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The payload of a COSE_Sign1 whose ES256 signature verifies under ``public_key``."""
    doc = _cbor_exact(data, "receipt COSE_Sign1")
    if not isinstance(doc, cbor2.CBORTag) or doc.tag != COSE_SIGN1_TAG:
        raise ReceiptSignatureError("the receipt is not a tagged COSE_Sign1 (CBOR tag 18)")
    item = doc.value
    if not (isinstance(item, list | tuple) and len(item) == 4):
        raise ReceiptSignatureError("the receipt COSE_Sign1 is not an array of 4 items")
    protected, unprotected, payload, signature = item
    if not (
        isinstance(protected, bytes)
        and isinstance(unprotected, Mapping)
        and isinstance(payload, bytes)
        and isinstance(signature, bytes)
    ):
        raise ReceiptSignatureError("the receipt COSE_Sign1 items have the wrong types")
    if protected != _PROTECTED or unprotected:
        raise ReceiptSignatureError(
            "the receipt's COSE headers are not {alg: ES256, content type: "
            f"{PAYLOAD_CONTENT_TYPE}}} with no unprotected header"
        )
    if len(signature) != 2 * _COORD:
        raise ReceiptSignatureError(f"an ES256 signature is {2 * _COORD} bytes")
    der = encode_dss_signature(
        int.from_bytes(signature[:_COORD], "big"), int.from_bytes(signature[_COORD:], "big")
    )
    try:
        public_key.verify(der, _sig_structure(protected, payload), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ReceiptSignatureError(
            "the receipt's signature does not verify under the certificate's key"
        ) from None
    return payload


# --- the bundle --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """The bundle's parts: the CBOR array ``["blindinfer-receipt", 1, certificate DER, kind,
    evidence, {collateral name: bytes}, COSE_Sign1]``."""

    certificate_der: bytes
    evidence: Evidence
    cose_sign1: bytes


def _bundle_prefix(certificate_der: bytes, evidence: Evidence) -> bytes:
    """Everything of the bundle before the COSE_Sign1: a 7-item array's head and 6 items.
    Computed once per evidence, so a receipt costs one signature and one bstr on top."""
    items = [
        BUNDLE_FORMAT,
        BUNDLE_VERSION,
        certificate_der,
        evidence.kind,
        evidence.evidence,
        dict(evidence.collateral),
    ]
    return b"\x87" + b"".join(bytes(cbor2.dumps(i, canonical=True)) for i in items)


def parse_bundle(data: bytes) -> Bundle:
    """Split a receipt bundle; ReceiptError when it is not one (in canonical form)."""
    doc = _cbor_exact(bytes(data), "receipt bundle")
    if not (isinstance(doc, list) and len(doc) == 7):
        raise ReceiptError("a receipt bundle is a CBOR array of 7 items")
    fmt, version, cert, kind, evidence, collateral, cose = doc
    if fmt != BUNDLE_FORMAT or version != BUNDLE_VERSION:
        raise ReceiptError(f"not a version {BUNDLE_VERSION} {BUNDLE_FORMAT} bundle")
    if not (
        isinstance(cert, bytes)
        and isinstance(kind, str)
        and isinstance(evidence, bytes)
        and isinstance(cose, bytes)
        and isinstance(collateral, Mapping)
        and all(isinstance(k, str) and isinstance(v, bytes) for k, v in collateral.items())
    ):
        raise ReceiptError("an item of the receipt bundle has the wrong type")
    ev = Evidence(kind, evidence, dict(collateral))
    if _bundle_prefix(cert, ev) + bytes(cbor2.dumps(cose)) != bytes(data):
        raise ReceiptError("the receipt bundle is not in canonical CBOR")
    return Bundle(cert, ev, cose)


# --- signing (inside the TEE) ------------------------------------------------------------------


class ReceiptSigner:
    """Signs receipts with the server's TLS key (in memory only, never written anywhere).

    ``claims_for(evidence)`` may return the verified claims of the server's own evidence (put
    into the payload for readers) or None."""

    def __init__(self, key_pem: bytes, certificate_der: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("receipts are signed with ES256: the TLS key must be ECDSA P-256")
        self._key = key
        self._cert = certificate_der
        self._cert_sha256 = hashlib.sha256(certificate_der).digest()
        self._cached: tuple[Evidence, bytes, bytes, bytes] | None = None

    def _for_evidence(self, evidence: Evidence) -> tuple[bytes, bytes, bytes]:
        cached = self._cached
        if cached is None or cached[0] is not evidence:
            cached = (
                evidence,
                _bundle_prefix(self._cert, evidence),
                hashlib.sha256(evidence.evidence).digest(),
                collateral_digest(evidence.collateral),
            )
            self._cached = cached  # one tuple, swapped whole: safe across worker threads
        return cached[1], cached[2], cached[3]

    def sign(
        self,
        *,
        evidence: Evidence,
        model_sha256: bytes,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        request_id: str | None,
        at: datetime,
        claims: Claims | None = None,
    ) -> bytes:
        """The receipt bundle for one inference."""
        prefix, evidence_sha256, collateral_sha256 = self._for_evidence(evidence)
        payload = ReceiptPayload(
            model_sha256=model_sha256,
            inputs_sha256=tensors_digest(inputs),
            outputs_sha256=tensors_digest(outputs),
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
            time=at,
            tee=evidence.kind,
            certificate_sha256=self._cert_sha256,
            evidence_sha256=evidence_sha256,
            collateral_sha256=collateral_sha256,
            claims=_policy_claims(claims) if claims is not None else None,
        )
        return prefix + bytes(cbor2.dumps(_cose_sign1(self._key, payload.encode())))


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt whose every check passed: what it says, the evidence's claims, the checks."""

    payload: ReceiptPayload
    claims: Claims
    checks: tuple[str, ...]
    verified_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": True,
            "checks": list(self.checks),
            "verified_at": _rfc3339(self.verified_at),
            "receipt": self.payload.to_json(),
            "claims": self.claims.to_json(),
        }


def _public_key(certificate_der: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
    try:
        cert = x509.load_der_x509_certificate(certificate_der)
        key = cert.public_key()
    except Exception as exc:  # cryptography raises ValueError, InvalidVersion, Unsupported...
        raise ReceiptSignatureError(f"the receipt's certificate does not parse: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ReceiptSignatureError("the receipt's certificate does not hold a P-256 key")
    return cert, key


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _check_bundle_digests(bundle: Bundle, payload: ReceiptPayload) -> None:
    """The payload names exactly the certificate, evidence and collateral the bundle carries."""
    ev = bundle.evidence
    pairs = {
        "certificate": (payload.certificate_sha256, hashlib.sha256(bundle.certificate_der)),
        "evidence": (payload.evidence_sha256, hashlib.sha256(ev.evidence)),
    }
    for what, (signed, actual) in pairs.items():
        if not _same(signed, actual.digest()):
            raise ReceiptMismatch(f"the bundle's {what} is not the one the receipt signs")
    if not _same(payload.collateral_sha256, collateral_digest(ev.collateral)):
        raise ReceiptMismatch("the bundle's collateral is not the one the receipt signs")
    if payload.tee != ev.kind:
        raise ReceiptMismatch(f"the receipt names TEE {payload.tee!r}, its evidence is {ev.kind!r}")


def _check_time(cert: x509.Certificate, payload: ReceiptPayload) -> None:
    """The receipt was signed while its certificate was valid."""
    t = payload.time
    if not cert.not_valid_before_utc <= t <= cert.not_valid_after_utc:
        raise ReceiptTimeError(
            f"the receipt time {_rfc3339(t)} is outside its certificate's validity "
            f"({_rfc3339(cert.not_valid_before_utc)} to {_rfc3339(cert.not_valid_after_utc)})"
        )


def _check_claims(payload: ReceiptPayload, claims: Claims) -> None:
    if payload.claims is not None and _plain(payload.claims) != _policy_claims(claims):
        raise ReceiptMismatch("the claims signed in the receipt are not those of its evidence")


def _check_digest(name: str, signed: bytes, actual: bytes | None) -> bool:
    if actual is None:
        return False
    if not _same(signed, actual):
        raise ReceiptMismatch(
            f"the {name} given are not those the receipt signs (sha256 {actual.hex()} given, "
            f"{signed.hex()} signed)"
        )
    return True


def _model_digest(model_sha256: str | bytes | None) -> bytes | None:
    if model_sha256 is None or isinstance(model_sha256, bytes):
        return model_sha256
    try:
        raw = bytes.fromhex(model_sha256.removeprefix("sha256:"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ReceiptError(f"model sha256 {model_sha256!r} is not 64 hex digits")
    return raw


def verify_receipt(
    bundle: bytes,
    *,
    policy: Policy | None = None,
    at: datetime | None = None,
    simulation: bool = False,
    inputs: Mapping[str, np.ndarray] | None = None,
    outputs: Mapping[str, np.ndarray] | None = None,
    model_sha256: str | bytes | None = None,
    roots: Sequence[bytes] | None = None,
) -> VerifiedReceipt:
    """Verify a receipt bundle offline; every failure raises a named AttestationError.

    Checked, in order: the bundle's form; the COSE_Sign1 signature under the certificate's key
    (``ReceiptSignatureError``); that the payload names this certificate, evidence and collateral
    (``ReceiptMismatch``); the receipt time within the certificate's validity
    (``ReceiptTimeError``); the simulation opt-in (``PolicyError``); the evidence and its
    collateral at ``at`` (default: the receipt's own time), its binding to the certificate and
    ``policy`` (``EvidenceError``, ``CollateralError``, ``BindingError``, ``PolicyError``); and,
    when given, the inputs, outputs and model sha256 against the signed digests
    (``ReceiptMismatch``). Without a policy the evidence is judged for authenticity only, except
    that ``simulation=True`` alone accepts any simulation server. ``roots`` replaces the pinned
    vendor roots (private PKIs, tests)."""
    parts = parse_bundle(bundle)
    cert, key = _public_key(parts.certificate_der)
    payload = ReceiptPayload.decode(_open_cose_sign1(parts.cose_sign1, key))
    checks = ["signature"]
    _check_bundle_digests(parts, payload)
    when = at if at is not None else payload.time
    if when.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    _check_time(cert, payload)
    if parts.evidence.kind == "simulation" and not simulation:
        raise PolicyError(
            "the receipt comes from the SIMULATION TEE: its evidence is signed by a software "
            "key and gives no hardware protection; pass simulation=True (CLI: --simulation) to "
            "accept it for development"
        )
    if policy is None and parts.evidence.kind == "simulation":
        from blindinfer.attestation._simulation import KindPolicy as SimulationPolicy

        policy = Policy({"simulation": SimulationPolicy()})
        judged = False
    else:
        judged = policy is not None
    claims = verify_evidence(
        parts.evidence,
        at=when,
        policy=policy,
        certificate_der=parts.certificate_der,
        roots=roots,
    )
    checks += ["evidence", "binding"]
    checks += (["collateral"] if parts.evidence.collateral else []) + (["policy"] if judged else [])
    _check_claims(payload, claims)
    if _check_digest("model", payload.model_sha256, _model_digest(model_sha256)):
        checks.append("model")
    if _check_digest(
        "inputs", payload.inputs_sha256, None if inputs is None else tensors_digest(inputs)
    ):
        checks.append("inputs")
    if _check_digest(
        "outputs", payload.outputs_sha256, None if outputs is None else tensors_digest(outputs)
    ):
        checks.append("outputs")
    return VerifiedReceipt(payload, claims, tuple(checks), when)
