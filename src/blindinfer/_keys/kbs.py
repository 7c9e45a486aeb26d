"""Client side of the Trustee KBS attestation protocol (RCAR), for releasing a key to attested code.

Protocol: ``kbs/docs/kbs_attestation_protocol.md`` in confidential-containers/trustee, as Trustee's
own client (guest-components ``kbs_protocol``, rcar_client.rs and keypair.rs) speaks it:

1. Request: ``POST /kbs/v0/auth`` ``{"version": "0.4.0", "tee": <tee>, "extra-params":
   {"supported-hash-algorithms": [...]}}``; the reply sets the ``kbs-session-id`` cookie and
   carries the Challenge ``{"nonce": <string>, "extra-params": ...}``. ``extra-params`` may name
   a ``selected-hash-algorithm``; otherwise SHA-384 (what Trustee's built-in attestation service
   uses for every TEE but IBM SE).
2. Attestation: a fresh EC P-256 key is generated here (inside the TEE); ``runtime-data`` is
   ``{"nonce": <nonce>, "tee-pubkey": <its JWK>}``. What the hardware signs is the hash of the
   RFC 8785 canonical JSON of ``{"additional-evidence": "", "nonce": .., "tee-pubkey": ..}``
   (Trustee's KBS adds the composite evidence's ``additional_evidence`` string, empty here, to
   the runtime data it passes to the verifier), zero-padded to the 64 bytes of report_data
   (Trustee's ``regularize_data``). ``POST /kbs/v0/attest`` with ``{"runtime-data": ..,
   "tee-evidence": {"primary_evidence": .., "additional_evidence": ""}}`` and the cookie; the
   reply is ``{"token": <JWT>}``.
3. Resource: ``GET /kbs/v0/resource/<repository>/<type>/<tag>`` with the cookie; the reply is a
   JWE (flattened JSON) whose content key is wrapped to the TEE key (ECDH-ES+A256KW, A256GCM),
   decrypted here with the ephemeral private key, which is then dropped.

TEE names and ``primary_evidence`` encodings (blindinfer kind -> KBS ``tee``):

- ``tdx`` -> ``tdx``: Trustee's ``TdxEvidence``, ``{"cc_eventlog": null, "quote": base64(quote)}``;
- ``sgx`` -> ``sgx``: Trustee's ``SgxEvidence``, ``{"quote": base64(quote)}``;
- ``simulation`` -> ``sample`` (Trustee's test TEE; no security at all): ``{"svn": "0",
  "report_data": base64(digest), "blindinfer": {"kind": "simulation", "evidence":
  base64(evidence), "collateral": {name: base64}}}``. Trustee's sample verifier compares
  ``report_data`` with the digest itself (unpadded) and ignores the ``blindinfer`` member; a
  broker that knows blindinfer (the test double) verifies the signed simulation evidence in it,
  whose report_data is the padded digest. base64 is standard alphabet with padding throughout.
- ``snp`` -> ``snp``: Trustee's ``SnpEvidence`` (deps/verifier/src/snp/mod.rs, trustee@78962cd),
  ``{"attestation_report": <AttestationReport>, "cert_chain": [<CertTableEntry>] | null}``, in
  the serde JSON form of the ``sev`` crate that Trustee pins (7.1.0, virtee/sev@d487809, feature
  ``serde``); see :func:`snp_evidence`. This is what guest-components' SNP attester sends too.
- ``nitro``: not supported: Trustee (kbs-types 0.18) defines no Nitro TEE. Use a key broker
  with Nitro attestation conditions (AWS KMS) instead.

Every failure raises BackendUnavailable naming the step; no message ever carries the resource.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer._keys import _jose
from blindinfer._keys._http import Reply, exchange
from blindinfer._tee.base import TeeBackend
from blindinfer.attestation import _snp, _x509
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import AttestationError, BackendUnavailable, CollateralError

__all__ = [
    "KBS_PROTOCOL_VERSION",
    "SESSION_COOKIE",
    "decode_primary_evidence",
    "encode_primary_evidence",
    "fetch_resource",
    "kbs_tee",
    "parse_resource",
    "report_data_for",
    "runtime_data_digest",
    "snp_evidence",
]

KBS_PROTOCOL_VERSION = "0.4.0"
SESSION_COOKIE = "kbs-session-id"
PREFIX = "/kbs/v0"
DEFAULT_HASH = "sha384"
HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}

_TEE = {"tdx": "tdx", "sgx": "sgx", "simulation": "sample", "snp": "snp"}
_UNSUPPORTED = {
    "nitro": (
        "Trustee defines no Nitro Enclaves TEE; release the key with a broker that checks Nitro"
        " attestation documents (AWS KMS with attestation conditions)"
    ),
}
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def kbs_tee(kind: str) -> str:
    """The KBS ``tee`` name for a blindinfer evidence kind (BackendUnavailable when none)."""
    if kind in _TEE:
        return _TEE[kind]
    if kind in _UNSUPPORTED:
        raise BackendUnavailable(
            f"key release from a Trustee KBS is not available on {kind}: {_UNSUPPORTED[kind]}"
        )
    raise BackendUnavailable(f"key release from a Trustee KBS: unknown TEE kind {kind!r}")


def parse_resource(resource: str) -> str:
    """``repository/type/tag`` from that or from a ``kbs:///repository/type/tag`` URI."""
    path = resource
    if path.startswith("kbs://"):
        path = path[len("kbs://") :]
        # kbs://<host>/repo/type/tag: the host part is ignored by CDH too; keep the path.
        path = path.split("/", 1)[1] if "/" in path else ""
    parts = path.strip("/").split("/")
    if len(parts) != 3 or not all(_SEGMENT.match(p) and p not in (".", "..") for p in parts):
        raise BackendUnavailable(
            f"key resource {resource!r} must be <repository>/<type>/<tag> (letters, digits, . _ -)"
        )
    return "/".join(parts)


def runtime_data_digest(
    nonce: str,
    tee_pubkey: Mapping[str, Any],
    algorithm: str = DEFAULT_HASH,
    additional_evidence: str = "",
) -> bytes:
    """The hash Trustee's verifier expects in report_data: over the JCS form of the runtime data
    the KBS builds (``tee-pubkey``, ``nonce`` and the composite evidence's additional_evidence)."""
    try:
        fn = HASHES[algorithm]
    except KeyError:
        raise BackendUnavailable(
            f"key broker selected hash algorithm {algorithm!r}; this client supports "
            f"{', '.join(HASHES)}"
        ) from None
    doc = {
        "tee-pubkey": dict(tee_pubkey),
        "nonce": nonce,
        "additional-evidence": additional_evidence,
    }
    digest: bytes = fn(_jose.canonical_json(doc)).digest()
    return digest


def report_data_for(digest: bytes) -> bytes:
    """64 bytes of report_data: the digest, zero-padded (SHA-512 fills it exactly)."""
    if len(digest) > 64:
        raise ValueError("digest longer than report_data")
    return digest + bytes(64 - len(digest))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- SEV-SNP: the sev crate's serde form ------------------------------------------------------
#
# sev 7.1.0 (virtee/sev@d487809, the revision trustee@78962cd patches in), feature "serde": every
# type derives Serialize/Deserialize, so serde_json writes
# - ``AttestationReport`` as an object with its fields in declaration order
#   (src/firmware/guest/types/snp.rs); reserved bytes are not fields;
# - ``GuestPolicy(u64)``, ``PlatformInfo(u64)``, ``KeyInfo(u32)`` (bitfield newtypes) as the
#   integer;
# - ``[u8; N]`` (serde's own arrays up to 32, serde_big_array above) and ``Vec<u8>`` (no
#   serde_bytes on CertTableEntry.data) as JSON arrays of numbers;
# - ``Option<u8>``/``Option<u64>`` as the number or null;
# - ``TcbVersion`` as {"fmc", "bootloader", "tee", "snp", "microcode"} (src/firmware/host/types/
#   snp.rs), ``Version`` as {"major", "minor", "build"}, ``Signature`` as {"r": [72], "s": [72]}
#   (the little-endian fields as stored, src/certs/snp/ecdsa/mod.rs);
# - ``CertType`` (unit variants) as "VCEK", "VLEK", "ASK", "ARK".
# Trustee verifies the signature over the crate's re-encoding of these fields (to_bytes, reserved
# bytes written as zeros), so what is sent must carry every signed byte the firmware set.

# LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR (report version 5; ABI spec Table 23, 0x1F8 and 0x200):
# the only report fields blindinfer's parser does not split out, because its verifier does not
# use them.
_OFF_LAUNCH_MIT_VECTOR = _snp.OFF_LAUNCH_TCB + 8
_OFF_CURRENT_MIT_VECTOR = _OFF_LAUNCH_MIT_VECTOR + 8


def _sev_generation(report: _snp.Report) -> str:
    """The processor generation the sev crate decodes the TCB fields with (AttestationReport's
    Decoder): version 2 from CHIP_ID (Turin-like when bytes 8.. are zero; a masked, all-zero
    CHIP_ID cannot be decoded), version 3 and later from CPUID_FAM_ID/CPUID_MOD_ID."""
    if report.version == 2:
        if not any(report.chip_id):
            raise BackendUnavailable(
                "SEV-SNP report version 2 with a masked CHIP_ID: the sev crate Trustee uses"
                " cannot decode it"
            )
        return "turin" if not any(report.chip_id[8:]) else "genoa"
    product = _snp.product_of(report)
    if product is None:
        family, model, _step = report.cpuid
        raise BackendUnavailable(
            f"SEV-SNP report from CPU family {family:#x} model {model:#x}: not a generation the"
            " sev crate Trustee uses knows"
        )
    return product


def _sev_tcb(raw: bytes, generation: str) -> dict[str, int | None]:
    parts = _snp.decode_tcb(raw, generation)
    return {
        "fmc": parts.get("fmc"),
        "bootloader": parts["bootloader"],
        "tee": parts["tee"],
        "snp": parts["snp"],
        "microcode": parts["microcode"],
    }


def _sev_version(triplet: tuple[int, int, int]) -> dict[str, int]:
    major, minor, build = triplet
    return {"major": major, "minor": minor, "build": build}


def _u64_at(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset : offset + 8], "little")


def _sev_cert_chain(report: _snp.Report, collateral: Mapping[str, bytes]) -> list[Any] | None:
    """``cert_chain``: the VCEK (VLEK when the report says so) and the ASK and ARK from the
    collateral, DER, as ``CertTableEntry`` objects; None without a VCEK, and then Trustee fetches
    the VCEK from AMD's KDS (or its offline store) and uses its built-in ASK and ARK."""
    if "vcek" not in collateral:
        return None
    try:
        vek, *extra = _x509.load_certs(collateral["vcek"], "SEV-SNP 'vcek'", CollateralError)
        chain = []
        if "chain" in collateral:
            chain = _x509.load_certs(collateral["chain"], "SEV-SNP 'chain'", CollateralError)
    except CollateralError as exc:
        raise BackendUnavailable(f"SEV-SNP collateral for the key broker: {exc}") from None
    if extra:
        raise BackendUnavailable("SEV-SNP collateral 'vcek' holds more than one certificate")
    vek_type = "VLEK" if report.signing_key == 1 else "VCEK"
    entries: list[Any] = [{"cert_type": vek_type, "data": list(vek.public_bytes(Encoding.DER))}]
    for cert in chain:
        kind = "ARK" if cert.subject == cert.issuer else "ASK"
        entries.append({"cert_type": kind, "data": list(cert.public_bytes(Encoding.DER))})
    return entries


def snp_evidence(evidence: Evidence) -> dict[str, Any]:
    """Trustee's ``SnpEvidence`` for a raw SEV-SNP report (field mapping in the comment above)."""
    try:
        report = _snp.parse_report(bytes(evidence.evidence))
    except AttestationError as exc:
        raise BackendUnavailable(f"SEV-SNP evidence for the key broker: {exc}") from None
    gen = _sev_generation(report)
    raw = report.raw
    v3 = report.version >= 3
    v5 = report.version >= 5  # the sev crate decodes 3 and 4 alike, mitigation vectors from 5
    fam, mod, step = report.cpuid
    width = _snp.SIG_COMPONENT
    attestation_report = {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "family_id": list(report.family_id),
        "image_id": list(report.image_id),
        "vmpl": report.vmpl,
        "sig_algo": report.signature_algo,
        "current_tcb": _sev_tcb(report.current_tcb, gen),
        "plat_info": report.platform_info,
        "key_info": report.flags,
        "report_data": list(report.report_data),
        "measurement": list(report.measurement),
        "host_data": list(report.host_data),
        "id_key_digest": list(report.id_key_digest),
        "author_key_digest": list(report.author_key_digest),
        "report_id": list(report.report_id),
        "report_id_ma": list(report.report_id_ma),
        "reported_tcb": _sev_tcb(report.reported_tcb, gen),
        "cpuid_fam_id": fam if v3 else None,
        "cpuid_mod_id": mod if v3 else None,
        "cpuid_step": step if v3 else None,
        "chip_id": list(report.chip_id),
        "committed_tcb": _sev_tcb(report.committed_tcb, gen),
        "current": _sev_version(report.current_build),
        "committed": _sev_version(report.committed_build),
        "launch_tcb": _sev_tcb(report.launch_tcb, gen),
        "launch_mit_vector": _u64_at(raw, _OFF_LAUNCH_MIT_VECTOR) if v5 else None,
        "current_mit_vector": _u64_at(raw, _OFF_CURRENT_MIT_VECTOR) if v5 else None,
        "signature": {
            "r": list(report.sig_r.to_bytes(width, "little")),
            "s": list(report.sig_s.to_bytes(width, "little")),
        },
    }
    return {
        "attestation_report": attestation_report,
        "cert_chain": _sev_cert_chain(report, evidence.collateral),
    }


def encode_primary_evidence(tee: str, evidence: Evidence, digest: bytes) -> dict[str, Any]:
    """``tee-evidence.primary_evidence`` for blindinfer evidence (encodings in the module doc)."""
    if tee == "tdx":
        return {"cc_eventlog": None, "quote": _b64(evidence.evidence)}
    if tee == "sgx":
        return {"quote": _b64(evidence.evidence)}
    if tee == "snp":
        return snp_evidence(evidence)
    if tee == "sample":
        return {
            "svn": "0",
            "report_data": _b64(digest),
            "blindinfer": {
                "kind": evidence.kind,
                "evidence": _b64(evidence.evidence),
                "collateral": {k: _b64(bytes(v)) for k, v in evidence.collateral.items()},
            },
        }
    raise BackendUnavailable(f"no KBS evidence encoding for tee {tee!r}")


def decode_primary_evidence(tee: str, primary: Any) -> tuple[Evidence, bytes | None]:
    """The inverse, for a broker: blindinfer Evidence and (sample only) the claimed digest.
    ValueError when the document is not in that encoding."""
    if not isinstance(primary, Mapping):
        raise ValueError("primary_evidence is not a JSON object")

    def unb64(value: Any, what: str) -> bytes:
        if not isinstance(value, str):
            raise ValueError(f"{what} is not a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError(f"{what} is not valid base64") from exc

    if tee in ("tdx", "sgx"):
        return Evidence(kind=tee, evidence=unb64(primary.get("quote"), "quote")), None
    if tee == "sample":
        ext = primary.get("blindinfer")
        if not isinstance(ext, Mapping) or ext.get("kind") != "simulation":
            raise ValueError("sample evidence without blindinfer simulation evidence")
        coll = ext.get("collateral") or {}
        if not isinstance(coll, Mapping):
            raise ValueError("collateral is not a JSON object")
        ev = Evidence(
            kind="simulation",
            evidence=unb64(ext.get("evidence"), "evidence"),
            collateral={str(k): unb64(v, f"collateral {k}") for k, v in coll.items()},
        )
        return ev, unb64(primary.get("report_data"), "report_data")
    raise ValueError(f"unsupported tee {tee!r}")


# --- the exchange ------------------------------------------------------------------------------


def _json(reply: Reply, step: str) -> Any:
    try:
        return json.loads(reply.body)
    except ValueError:
        raise BackendUnavailable(f"{step}: the key broker's reply is not JSON") from None


def _session_cookie(reply: Reply) -> str | None:
    for header in reply.headers.get_all("Set-Cookie") or []:
        first = header.split(";", 1)[0].strip()
        name, _, value = first.partition("=")
        if name.strip() == SESSION_COOKIE and value:
            return value.strip()
    return None


def _hash_algorithm(extra: Any) -> str:
    if isinstance(extra, Mapping) and "selected-hash-algorithm" in extra:
        name = extra["selected-hash-algorithm"]
        if not isinstance(name, str):
            raise BackendUnavailable(
                "key broker challenge: selected-hash-algorithm is not a string"
            )
        return name.lower()
    return DEFAULT_HASH


class KbsSession:
    """One RCAR session with a KBS (the steps are separate so that tests can tamper between)."""

    def __init__(self, url: str, *, context: ssl.SSLContext | None, timeout: float) -> None:
        self.base = url.rstrip("/")
        self.context = context
        self.timeout = timeout
        self.cookie: str | None = None

    def _send(self, method: str, path: str, step: str, body: Any = None) -> Reply:
        headers = {}
        if self.cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.cookie}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        reply = exchange(
            method,
            self.base + PREFIX + path,
            step=step,
            body=data,
            headers=headers,
            context=self.context,
            timeout=self.timeout,
        )
        cookie = _session_cookie(reply)
        if cookie:
            self.cookie = cookie
        return reply

    def auth(self, tee: str) -> tuple[str, str]:
        """Request -> Challenge: (nonce, hash algorithm)."""
        request = {
            "version": KBS_PROTOCOL_VERSION,
            "tee": tee,
            "extra-params": {"supported-hash-algorithms": list(HASHES)},
        }
        reply = self._send("POST", "/auth", "key broker auth request", request)
        if reply.status != 200:
            raise BackendUnavailable(f"key broker refused the auth request: {reply.brief()}")
        challenge = _json(reply, "key broker challenge")
        nonce = challenge.get("nonce") if isinstance(challenge, dict) else None
        if not isinstance(nonce, str) or not nonce:
            raise BackendUnavailable("key broker challenge has no nonce")
        if self.cookie is None:
            raise BackendUnavailable(f"key broker challenge set no {SESSION_COOKIE} cookie")
        return nonce, _hash_algorithm(challenge.get("extra-params"))

    def attestation(
        self, tee: str, nonce: str, algorithm: str, backend: TeeBackend, key: Any
    ) -> dict[str, Any]:
        """The Attestation payload, with evidence over this key and nonce."""
        jwk = _jose.public_jwk(key)
        digest = runtime_data_digest(nonce, jwk, algorithm)
        try:
            evidence = backend.get_evidence(report_data_for(digest))
        except BackendUnavailable as exc:
            raise BackendUnavailable(
                f"the TEE could not produce evidence for the key broker: {exc}"
            ) from exc
        except Exception as exc:
            raise BackendUnavailable(
                "the TEE could not produce evidence for the key broker:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        return {
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {
                "primary_evidence": encode_primary_evidence(tee, evidence, digest),
                "additional_evidence": "",
            },
        }

    def attest(self, attestation: Mapping[str, Any]) -> str:
        reply = self._send("POST", "/attest", "key broker attestation", attestation)
        if reply.status != 200:
            raise BackendUnavailable(f"key broker refused the attestation: {reply.brief()}")
        doc = _json(reply, "key broker attestation")
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise BackendUnavailable("key broker attestation reply has no token")
        return token

    def resource(self, path: str, key: Any) -> bytes:
        reply = self._send("GET", f"/resource/{path}", "key broker resource request")
        if reply.status == 401:
            raise BackendUnavailable(
                f"key broker refused the resource {path} (not attested): {reply.brief()}"
            )
        if reply.status == 403:
            raise BackendUnavailable(
                f"key broker's policy denies the resource {path}: {reply.brief()}"
            )
        if reply.status == 404:
            raise BackendUnavailable(f"key broker has no resource {path}: {reply.brief()}")
        if reply.status != 200:
            raise BackendUnavailable(
                f"key broker failed the resource request {path}: {reply.brief()}"
            )
        jwe = _json(reply, "key broker resource response")
        try:
            return _jose.decrypt(jwe, key)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendUnavailable(
                f"key broker's response for {path} does not decrypt with the TEE key: {exc}"
            ) from None


def fetch_resource(
    url: str,
    resource: str,
    backend: TeeBackend,
    *,
    context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> bytes:
    """Attest ``backend`` to the KBS at ``url`` and return the plaintext of ``resource``.

    ``context`` authenticates the KBS over HTTPS (None: the system trust store). Plain http is
    accepted for tests and loopback brokers: the resource itself is encrypted to the TEE key,
    but an unauthenticated broker could hand out a key of its own choosing.
    """
    path = parse_resource(resource)
    tee = kbs_tee(backend.kind)
    session = KbsSession(url, context=context, timeout=timeout)
    nonce, algorithm = session.auth(tee)
    key = _jose.generate_key()
    try:
        session.attest(session.attestation(tee, nonce, algorithm, backend, key))
        return session.resource(path, key)
    finally:
        del key
