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

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from blindinfer.attestation import Evidence, Policy, verify_evidence
from blindinfer.errors import AttestationError, PolicyError
from tests.keys._http_double import ServerThread

ERROR_TYPE = "https://github.com/confidential-containers/kbs/errors/"
TEES = {"sample", "sgx", "tdx"}


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
