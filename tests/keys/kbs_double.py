"""A Trustee KBS test double built from kbs/docs/kbs_attestation_protocol.md (trustee@78962cd).

It speaks the RCAR protocol over real HTTP(S) on 127.0.0.1:

- ``POST /kbs/v0/auth``: checks ``version`` (0.x >= 0.1) and ``tee``, opens a session (cookie
  ``kbs-session-id``), answers the Challenge with a fresh nonce (base64 of 32 random bytes, as
  Trustee's make_nonce) and ``extra-params`` "" (Trustee's value for every TEE but SE).
- ``POST /kbs/v0/attest``: the session's nonce must be the one in runtime-data, and is usable
  ONCE (a second attestation on the session, or any other session presenting it, is refused:
  stricter than Trustee, which returns the old token to an attested session). The evidence is
  verified with blindinfer's own verifiers against the double's Policy; its report_data must be
  SHA-384 over the JCS form of {"tee-pubkey", "nonce", "additional-evidence"}, zero-padded to 64
  (what Trustee's verifiers compare). On success: a JWT (ES256, the double's key) with the
  tee-pubkey and the claims, and the session is attested.
- ``GET /kbs/v0/resource/<repo>/<type>/<tag>``: with an attested session's cookie, or a Bearer
  token the double issued and that has not expired: the resource as a flattened-JSON JWE to the
  attested tee-pubkey (ECDH-ES+A256KW, A256GCM, exactly as Trustee's kbs/src/jwe). 401 without
  authentication, 404 for an unknown resource. Errors are RFC 7807 problem documents.

The JCS, the JWE encryption and the evidence decoding are written here independently of the
client in blindinfer._keys.

SEV-SNP (``tee`` "snp"): the primary evidence is Trustee's ``SnpEvidence`` in the serde JSON form
of the sev crate 7.1.0 (virtee/sev@d487809). :func:`snp_report_from_sev_json` rebuilds the 1184
signed bytes from it, written from the ATTESTATION_REPORT table of the AMD SEV-SNP Firmware ABI
spec (pub. 56860, Table 23) and the sev crate's field list, not from the client's encoder; the
rebuilt report is verified by blindinfer's verifier with the VCEK/ASK/ARK of ``cert_chain``. Like
Trustee's SNP verifier it also requires report version 3..5 and VMPL 0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer.attestation import Evidence, Policy, verify_evidence
from blindinfer.errors import AttestationError, PolicyError
from tests.keys._http_double import ServerThread

ERROR_TYPE = "https://github.com/confidential-containers/kbs/errors/"
TEES = {"sample", "sgx", "snp", "tdx"}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jcs(value: Any) -> bytes:
    """JCS for the string-only objects of runtime-data (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def jwe_encrypt(jwk: Mapping[str, str], plaintext: bytes) -> dict[str, str]:
    """Trustee's ecdh_es_a256kw_p256: random CEK wrapped under ConcatKDF(ECDH(epk, tee key))."""
    pub = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + unb64u(jwk["x"]) + unb64u(jwk["y"])
    )
    eph = ec.generate_private_key(ec.SECP256R1())
    z = eph.exchange(ec.ECDH(), pub)
    alg = b"ECDH-ES+A256KW"
    other = len(alg).to_bytes(4, "big") + alg + bytes(4) + bytes(4) + (256).to_bytes(4, "big")
    kek = ConcatKDFHash(hashes.SHA256(), 32, other).derive(z)
    cek = os.urandom(32)
    n = eph.public_key().public_numbers()
    header = {
        "alg": "ECDH-ES+A256KW",
        "enc": "A256GCM",
        "epk": {
            "crv": "P-256",
            "kty": "EC",
            "x": b64u(n.x.to_bytes(32, "big")),
            "y": b64u(n.y.to_bytes(32, "big")),
        },
    }
    protected = b64u(json.dumps(header, separators=(",", ":")).encode())
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode())
    return {
        "protected": protected,
        "encrypted_key": b64u(aes_key_wrap(kek, cek)),
        "iv": b64u(iv),
        "ciphertext": b64u(sealed[:-16]),
        "tag": b64u(sealed[-16:]),
    }


# --- SEV-SNP: sev crate serde JSON -> ATTESTATION_REPORT bytes ---------------------------------

# (sev field, offset, encoding) in the crate's declaration order. Encodings: "u8"/"u32"/"u64"
# little-endian integers, ("bytes", n) a JSON array of n numbers, "tcb" TCB_VERSION (8 bytes),
# "version" {major, minor, build} stored as BUILD, MINOR, MAJOR. Everything else is reserved (0).
SNP_FIELDS: tuple[tuple[str, int, Any], ...] = (
    ("version", 0x000, "u32"),
    ("guest_svn", 0x004, "u32"),
    ("policy", 0x008, "u64"),
    ("family_id", 0x010, ("bytes", 16)),
    ("image_id", 0x020, ("bytes", 16)),
    ("vmpl", 0x030, "u32"),
    ("sig_algo", 0x034, "u32"),
    ("current_tcb", 0x038, "tcb"),
    ("plat_info", 0x040, "u64"),
    ("key_info", 0x048, "u32"),
    ("report_data", 0x050, ("bytes", 64)),
    ("measurement", 0x090, ("bytes", 48)),
    ("host_data", 0x0C0, ("bytes", 32)),
    ("id_key_digest", 0x0E0, ("bytes", 48)),
    ("author_key_digest", 0x110, ("bytes", 48)),
    ("report_id", 0x140, ("bytes", 32)),
    ("report_id_ma", 0x160, ("bytes", 32)),
    ("reported_tcb", 0x180, "tcb"),
    ("cpuid_fam_id", 0x188, "u8?"),
    ("cpuid_mod_id", 0x189, "u8?"),
    ("cpuid_step", 0x18A, "u8?"),
    ("chip_id", 0x1A0, ("bytes", 64)),
    ("committed_tcb", 0x1E0, "tcb"),
    ("current", 0x1E8, "version"),
    ("committed", 0x1EC, "version"),
    ("launch_tcb", 0x1F0, "tcb"),
    ("launch_mit_vector", 0x1F8, "u64?"),
    ("current_mit_vector", 0x200, "u64?"),
)
SNP_SIGNATURE_AT = 0x2A0  # R (72 bytes LE) then S (72 bytes LE); then 368 reserved bytes
SNP_REPORT_LEN = 0x4A0
CERT_TYPES = {"ARK", "ASK", "VCEK", "VLEK", "CRL", "Empty"}
_INT_BYTES = {"u8": 1, "u32": 4, "u64": 8}


def _uint(value: Any, size: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 256**size:
        raise ValueError(f"{what} is not a {8 * size}-bit unsigned integer")
    return value


def _byte_list(value: Any, n: int, what: str) -> bytes:
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"{what} is not an array of {n} numbers")
    return bytes(_uint(v, 1, what) for v in value)


def _tcb_bytes(value: Any, what: str) -> bytes:
    """TCB_VERSION: Turin (fmc present) FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE; earlier
    BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE."""
    if not isinstance(value, dict) or set(value) != {
        "fmc",
        "bootloader",
        "tee",
        "snp",
        "microcode",
    }:
        raise ValueError(f"{what} is not a TcbVersion object")
    bl, tee, snp, ucode = (
        _uint(value[k], 1, f"{what}.{k}") for k in ("bootloader", "tee", "snp", "microcode")
    )
    if value["fmc"] is None:
        return bytes([bl, tee, 0, 0, 0, 0, snp, ucode])
    return bytes([_uint(value["fmc"], 1, f"{what}.fmc"), bl, tee, snp, 0, 0, 0, ucode])


def snp_report_from_sev_json(doc: Any) -> bytes:
    """The signed ATTESTATION_REPORT bytes from the sev crate's serde form of AttestationReport."""
    if not isinstance(doc, dict):
        raise ValueError("attestation_report is not a JSON object")
    names = {name for name, _, _ in SNP_FIELDS} | {"signature"}
    optional = {"launch_mit_vector", "current_mit_vector"}
    if set(doc) - names or names - optional - set(doc):
        raise ValueError(f"attestation_report fields differ from sev's: {sorted(set(doc) ^ names)}")
    out = bytearray(SNP_REPORT_LEN)
    for name, off, enc in SNP_FIELDS:
        value = doc.get(name)
        if isinstance(enc, tuple):
            chunk = _byte_list(value, enc[1], name)
        elif enc == "tcb":
            chunk = _tcb_bytes(value, name)
        elif enc == "version":
            if not isinstance(value, dict) or set(value) != {"major", "minor", "build"}:
                raise ValueError(f"{name} is not a Version object")
            chunk = bytes(_uint(value[k], 1, f"{name}.{k}") for k in ("build", "minor", "major"))
        else:
            size = _INT_BYTES[enc.rstrip("?")]
            if value is None and enc.endswith("?"):
                continue  # None: the report version has no such field (bytes stay reserved)
            chunk = _uint(value, size, name).to_bytes(size, "little")
        out[off : off + len(chunk)] = chunk
    sig = doc["signature"]
    if not isinstance(sig, dict) or set(sig) != {"r", "s"}:
        raise ValueError("signature is not a Signature object")
    out[SNP_SIGNATURE_AT : SNP_SIGNATURE_AT + 72] = _byte_list(sig["r"], 72, "signature.r")
    out[SNP_SIGNATURE_AT + 72 : SNP_SIGNATURE_AT + 144] = _byte_list(sig["s"], 72, "signature.s")
    return bytes(out)


def snp_collateral_from_cert_chain(chain: Any) -> dict[str, bytes]:
    """blindinfer's SNP collateral from ``cert_chain`` (CertTableEntry objects, DER data)."""
    if chain is None:
        return {}
    if not isinstance(chain, list):
        raise ValueError("cert_chain is not an array")
    certs: dict[str, bytes] = {}
    for entry in chain:
        if not isinstance(entry, dict) or set(entry) != {"cert_type", "data"}:
            raise ValueError("cert_chain entry is not a CertTableEntry object")
        kind, data = entry["cert_type"], entry["data"]
        if kind not in CERT_TYPES or not isinstance(data, list):
            raise ValueError(f"cert_chain entry of type {kind!r} is not understood")
        certs.setdefault(kind, bytes(_uint(v, 1, "cert_chain data") for v in data))
    out: dict[str, bytes] = {}
    if "VCEK" in certs:
        out["vcek"] = certs["VCEK"]
    pem = b"".join(
        x509.load_der_x509_certificate(certs[k]).public_bytes(Encoding.PEM)
        for k in ("ASK", "ARK")
        if k in certs
    )
    if pem:
        out["chain"] = pem
    return out


@dataclass
class Session:
    tee: str
    nonce: str
    created: float
    nonce_used: bool = False
    tee_pubkey: dict[str, str] | None = None


@dataclass
class KbsDouble:
    """``resources``: "repo/type/tag" -> bytes. ``collateral``: Evidence -> collateral for kinds
    whose evidence does not carry it (DCAP: Trustee fetches from PCS; here the test gives it).
    ``roots``: per kind, test trust anchors. ``tamper_jwe``: flip a ciphertext bit (tests)."""

    policy: Policy
    resources: dict[str, bytes]
    roots: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    collateral: Callable[[Evidence], Mapping[str, bytes]] | None = None
    token_ttl: int = 300
    tamper_jwe: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.used_nonces: set[str] = set()
        self.attestations: list[dict[str, Any]] = []  # what was verified, for assertions
        self.released: list[str] = []
        self._lock = threading.Lock()
        self._signing = ec.generate_private_key(ec.SECP256R1())
        self._server = ServerThread(self._handle, certfile=self.certfile, keyfile=self.keyfile)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> KbsDouble:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    # --- HTTP ---------------------------------------------------------------------------------

    @staticmethod
    def _problem(status: int, kind: str, detail: str) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({"type": ERROR_TYPE + kind, "detail": detail}).encode()
        return status, {"Content-Type": "application/json"}, body

    @staticmethod
    def _cookie(req: BaseHTTPRequestHandler) -> str | None:
        for part in (req.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "kbs-session-id":
                return value
        return None

    def _handle(
        self, req: BaseHTTPRequestHandler, method: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        path = req.path.split("?", 1)[0]
        if method == "POST" and path == "/kbs/v0/auth":
            return self._auth(body)
        if method == "POST" and path == "/kbs/v0/attest":
            return self._attest(req, body)
        if method == "GET" and path.startswith("/kbs/v0/resource/"):
            return self._resource(req, path[len("/kbs/v0/resource/") :])
        return self._problem(404, "InvalidRequestPath", f"no endpoint {method} {path}")

    def _auth(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            request = json.loads(body)
            version = [int(x) for x in str(request["version"]).split(".")]
            tee = request["tee"]
        except (ValueError, KeyError, TypeError):
            return self._problem(401, "SerdeError", "the Request is not valid")
        if version[0] != 0 or version < [0, 1, 0]:
            return self._problem(
                401,
                "AttestationError",
                f"KBS Client Protocol Version Mismatch: {request['version']}",
            )
        if tee not in TEES:
            return self._problem(401, "AttestationError", f"unsupported tee {tee!r}")
        sid = b64u(os.urandom(16))
        nonce = base64.b64encode(os.urandom(32)).decode()
        with self._lock:
            self.sessions[sid] = Session(tee, nonce, time.time())
        headers = {
            "Content-Type": "application/json",
            "Set-Cookie": f"kbs-session-id={sid}; Path=/; HttpOnly; Max-Age=300",
        }
        return 200, headers, json.dumps({"nonce": nonce, "extra-params": ""}).encode()

    def _attest(
        self, req: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        sid = self._cookie(req)
        with self._lock:
            session = self.sessions.get(sid or "")
            if session is None:
                return self._problem(401, "AttestationError", "session not found")
            try:
                att = json.loads(body)
                runtime = att["runtime-data"]
                nonce, pubkey = runtime["nonce"], runtime["tee-pubkey"]
                primary = att["tee-evidence"]["primary_evidence"]
                additional = att["tee-evidence"]["additional_evidence"]
            except (ValueError, KeyError, TypeError):
                return self._problem(401, "SerdeError", "the Attestation is not valid")
            if session.nonce_used or nonce in self.used_nonces:
                return self._problem(401, "AttestationError", "the nonce was already used")
            if nonce != session.nonce:
                return self._problem(401, "AttestationError", "the nonce is not this session's")
            session.nonce_used = True
            self.used_nonces.add(nonce)
        if additional != "":
            return self._problem(401, "AttestationError", "additional evidence is not supported")
        digest = hashlib.sha384(
            jcs({"tee-pubkey": pubkey, "nonce": nonce, "additional-evidence": additional})
        ).digest()
        try:
            evidence, claimed = self._decode(session.tee, primary)
            if evidence.kind != "simulation" and self.collateral is not None:
                evidence = Evidence(evidence.kind, evidence.evidence, self.collateral(evidence))
            claims = verify_evidence(
                evidence,
                at=datetime.now(UTC),
                policy=self.policy,
                roots=self.roots.get(evidence.kind),
            )
        except (AttestationError, ValueError, KeyError, TypeError) as exc:
            return self._problem(
                401,
                "PolicyDeny" if isinstance(exc, PolicyError) else "AttestationError",
                f"verify TEE evidence failed: {exc}",
            )
        if claimed is not None and claimed != digest:
            return self._problem(
                401, "AttestationError", "REPORT_DATA is different from that in Sample Quote"
            )
        if claims.report_data != digest + bytes(64 - len(digest)):
            return self._problem(
                401,
                "AttestationError",
                f"REPORT_DATA is different from that in the {evidence.kind} evidence",
            )
        now = int(time.time())
        token = self._jwt(
            {
                "iss": self.url,
                "iat": now,
                "exp": now + self.token_ttl,
                "tee-pubkey": pubkey,
                "tcb-status": claims.to_json(),
            }
        )
        with self._lock:
            session.tee_pubkey = pubkey
            self.attestations.append({"tee": session.tee, "claims": claims, "pubkey": pubkey})
        headers = {
            "Content-Type": "application/json",
            "Set-Cookie": f"kbs-session-id={sid}; Path=/; HttpOnly; Max-Age=300",
        }
        return 200, headers, json.dumps({"token": token}).encode()

    @staticmethod
    def _decode(tee: str, primary: Any) -> tuple[Evidence, bytes | None]:
        if tee in ("tdx", "sgx"):
            return Evidence(tee, base64.b64decode(primary["quote"], validate=True)), None
        if tee == "snp":
            if not isinstance(primary, dict) or set(primary) != {
                "attestation_report",
                "cert_chain",
            }:
                raise ValueError("primary_evidence is not an SnpEvidence object")
            raw = snp_report_from_sev_json(primary["attestation_report"])
            version, vmpl = (
                int.from_bytes(raw[0:4], "little"),
                int.from_bytes(raw[0x30:0x34], "little"),
            )
            if not 3 <= version <= 5:  # Trustee's REPORT_VERSION_MIN/MAX
                raise ValueError(f"Attestation Report version {version} is not 3..5")
            if vmpl != 0:
                raise ValueError("VMPL Check Failed")
            coll = snp_collateral_from_cert_chain(primary["cert_chain"])
            return Evidence("snp", raw, coll), None
        ext = primary["blindinfer"]
        if ext["kind"] != "simulation":
            raise ValueError("sample evidence must carry blindinfer simulation evidence")
        coll = {k: base64.b64decode(v) for k, v in ext.get("collateral", {}).items()}
        ev = Evidence("simulation", base64.b64decode(ext["evidence"], validate=True), coll)
        return ev, base64.b64decode(primary["report_data"], validate=True)

    def _jwt(self, claims: Mapping[str, Any]) -> str:
        head = b64u(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
        payload = b64u(json.dumps(claims).encode())
        der = self._signing.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{head}.{payload}.{b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _token_pubkey(self, token: str) -> dict[str, str] | None:
        try:
            head, payload, sig = token.split(".")
            raw = unb64u(sig)
            der = encode_dss_signature(
                int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
            )
            self._signing.public_key().verify(
                der, f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256())
            )
            claims = json.loads(unb64u(payload))
        except Exception:
            return None
        if claims.get("exp", 0) < time.time():
            return None
        pubkey: dict[str, str] = claims["tee-pubkey"]
        return pubkey

    def _resource(
        self, req: BaseHTTPRequestHandler, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        pubkey = None
        auth = req.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            pubkey = self._token_pubkey(auth[len("Bearer ") :])
            if pubkey is None:
                return self._problem(401, "TokenVerifierError", "the token does not verify")
        else:
            with self._lock:
                session = self.sessions.get(self._cookie(req) or "")
            if session is not None:
                pubkey = session.tee_pubkey
        if pubkey is None:
            return self._problem(401, "TokenNotFound", "no attested session or token")
        if path not in self.resources:
            return self._problem(404, "InvalidRequestPath", f"no resource {path}")
        jwe = jwe_encrypt(pubkey, self.resources[path])
        if self.tamper_jwe:
            ct = bytearray(unb64u(jwe["ciphertext"]))
            ct[0] ^= 1
            jwe["ciphertext"] = b64u(bytes(ct))
        self.released.append(path)
        return 200, {"Content-Type": "application/json"}, json.dumps(jwe).encode()
