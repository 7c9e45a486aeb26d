"""The little JOSE the KBS protocol needs, on ``cryptography``'s primitives.

- the ephemeral TEE key: EC P-256, exported as the JWK Trustee's own client sends
  (``{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":..,"y":..}``);
- RFC 8785 (JCS) canonical JSON (the ``rfc8785`` library), which Trustee hashes the runtime-data
  with;
- decrypting the resource response: a JWE in flattened JSON serialisation (RFC 7516 7.2.2) with
  ``alg`` ECDH-ES+A256KW (RFC 7518 4.6: Concat KDF over SHA-256, then AES key unwrap) and ``enc``
  A256GCM, AAD = ASCII(protected) (or ASCII(protected "." aad) when an ``aad`` member is present).

Every failure is a ``ValueError`` naming what was wrong; callers turn it into BackendUnavailable.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

ALG = "ECDH-ES+A256KW"
ENC = "A256GCM"
CURVE = "P-256"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what} is not valid base64url") from exc


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    nums = pub.public_numbers()
    return {
        "kty": "EC",
        "crv": CURVE,
        "alg": ALG,
        "x": b64url(nums.x.to_bytes(32, "big")),
        "y": b64url(nums.y.to_bytes(32, "big")),
    }


def jwk_public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """An EC P-256 public key from a JWK (ValueError when it is not one, or not on the curve)."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != CURVE:
        raise ValueError(f"unsupported key: kty={jwk.get('kty')!r} crv={jwk.get('crv')!r}")
    x = b64url_decode(jwk.get("x"), "x")
    y = b64url_decode(jwk.get("y"), "y")
    if len(x) != 32 or len(y) != 32:
        raise ValueError("P-256 coordinates must be 32 bytes each")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)


def canonical_json(value: Any) -> bytes:
    """RFC 8785 JSON Canonicalization Scheme (Trail of Bits' ``rfc8785``: ES6 number spelling,
    UTF-16 member order, the exact string escapes), for the runtime-data Trustee hashes."""
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"cannot canonicalise the runtime data: {exc}") from None


def concat_kdf(z: bytes, alg: str, apu: bytes, apv: bytes, bits: int) -> bytes:
    """RFC 7518 4.6.2: Concat KDF (NIST SP 800-56A) over SHA-256 with the JOSE OtherInfo."""

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    other = field(alg.encode("ascii")) + field(apu) + field(apv) + bits.to_bytes(4, "big")
    return ConcatKDFHash(hashes.SHA256(), bits // 8, other).derive(z)


def decrypt(jwe: Any, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The plaintext of a flattened-JSON JWE encrypted to ``key``; ValueError on any fault."""
    if not isinstance(jwe, Mapping):
        raise ValueError("the response is not a JWE JSON object")
    protected_b64 = jwe.get("protected")
    header_bytes = b64url_decode(protected_b64, "protected")
    try:
        header = json.loads(header_bytes)
    except ValueError as exc:
        raise ValueError("the JWE protected header is not JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("the JWE protected header is not a JSON object")
    alg, enc = header.get("alg"), header.get("enc")
    if alg != ALG or enc != ENC:
        raise ValueError(f"unsupported JWE algorithms alg={alg!r} enc={enc!r} (want {ALG}, {ENC})")
    if "crit" in header or "zip" in header:
        raise ValueError("the JWE uses header parameters this client does not implement")
    epk = header.get("epk")
    if not isinstance(epk, Mapping):
        raise ValueError("the JWE protected header has no epk")
    sender = jwk_public_key(epk)
    apu = b64url_decode(header["apu"], "apu") if "apu" in header else b""
    apv = b64url_decode(header["apv"], "apv") if "apv" in header else b""
    z = key.exchange(ec.ECDH(), sender)
    kek = concat_kdf(z, ALG, apu, apv, 256)
    try:
        cek = aes_key_unwrap(kek, b64url_decode(jwe.get("encrypted_key"), "encrypted_key"))
    except InvalidUnwrap as exc:
        raise ValueError("the JWE content key does not unwrap with this TEE key") from exc
    if len(cek) != 32:
        raise ValueError("the JWE content key is not 256 bits")
    iv = b64url_decode(jwe.get("iv"), "iv")
    ciphertext = b64url_decode(jwe.get("ciphertext"), "ciphertext")
    tag = b64url_decode(jwe.get("tag"), "tag")
    if len(iv) != 12 or len(tag) != 16:
        raise ValueError("the JWE iv or tag has the wrong length for A256GCM")
    aad = str(protected_b64).encode("ascii")
    if jwe.get("aad") is not None:
        if not isinstance(jwe["aad"], str):
            raise ValueError("aad is not a base64url string")
        aad += b"." + jwe["aad"].encode("ascii")
    try:
        return AESGCM(cek).decrypt(iv, ciphertext + tag, aad)
    except InvalidTag as exc:
        raise ValueError("the JWE does not authenticate (tampered or not for this key)") from exc
