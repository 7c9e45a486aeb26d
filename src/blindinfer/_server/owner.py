"""The model owner's credential: on a real TEE, only from what the operator cannot change.

The server keeps only the sha256 of the owner token. Where it comes from decides who the owner
is, so on a real TEE (backend not ``insecure``) it must come from measured configuration, which
clients pin through attestation, or from a key broker that releases it only to this TEE:

- ``gramine-sgx``: ``loader.env.BLINDINFER_OWNER_TOKEN_SHA256 = "<hex>"`` in the manifest
  (measured into MRENCLAVE; the manifest also fixes argv, so no flag can override it);
- ``nitro``: ``BLINDINFER_OWNER_TOKEN_SHA256`` baked into the enclave image (measured by PCR0/2);
- ``sev-snp``: HOST_DATA (32 bytes, set by the launcher, in every report) = sha256(token);
- ``tdx``: MRCONFIGID (48 bytes, fixed at TD launch, in every quote) = sha256(token) followed by
  16 zero bytes;
- ``sev-snp``/``tdx`` with a CoCo initdata document (``owner_initdata``): HOST_DATA / MRCONFIGID
  hold the initdata digest (zero-padded), and the document's ``[data]`` entry
  ``"blindinfer-owner"`` holds the token's sha256 in hex;
- any backend: ``owner_resource``, a key broker resource whose released bytes are the sha256
  (32 raw bytes or 64 hex digits); the caller passes the release as ``released``.

On a real TEE nothing here mints a token, reads the host's ``--owner-token``, or looks at
``owner-token.sealed``: deleting or replacing files cannot create a new owner. Several sources may
be configured; they must agree. Simulation keeps the convenient behaviour: ``--owner-token``, or
a token generated once, kept as a sealed hash, and shown once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import tomllib
from collections.abc import Callable

from blindinfer._server.config import Settings
from blindinfer._storage.secrets import SealedSecret
from blindinfer._tee.base import TeeBackend, key32
from blindinfer.errors import BlindInferError, ConfigError, StoreError

OWNER_TOKEN_FILE = "owner-token.sealed"
OWNER_TOKEN_PURPOSE = b"blindinfer-owner-token-v1"
INITDATA_KEY = "blindinfer-owner"

_ENV_MEASURED = {"sgx": "the Gramine manifest", "nitro": "the enclave image"}
_FIELD = {"snp": "HOST_DATA", "tdx": "MRCONFIGID"}


def owner_digest(
    settings: Settings,
    backend: TeeBackend,
    sealing_key: bytes,
    *,
    released: Callable[[], bytes] | None = None,
) -> tuple[bytes, str | None]:
    """sha256 of the owner token, and the token itself only when simulation generated it now."""
    if backend.insecure:
        return _simulation(settings, sealing_key)
    return _measured(settings, backend, released), None


def _simulation(settings: Settings, sealing_key: bytes) -> tuple[bytes, str | None]:
    """A generated token is kept only as a sealed hash (AES-GCM under the sealing key)."""
    if settings.owner_token:
        return hashlib.sha256(settings.owner_token.encode()).digest(), None
    if settings.owner_token_sha256:
        return bytes.fromhex(settings.owner_token_sha256), None
    sealed = SealedSecret(settings.data_dir / OWNER_TOKEN_FILE, sealing_key, OWNER_TOKEN_PURPOSE)
    if sealed.exists():
        try:
            return sealed.load(), None
        except StoreError as exc:
            raise ConfigError(
                f"{exc}; remove it to generate a new owner token, or pass --owner-token"
            ) from None
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).digest()
    sealed.create(digest)
    return digest, token


def _how(backend: TeeBackend) -> str:
    kind = backend.kind
    if kind == "sgx":
        where = 'loader.env.BLINDINFER_OWNER_TOKEN_SHA256 = "<sha256 hex>" in the Gramine manifest'
    elif kind == "nitro":
        where = "ENV BLINDINFER_OWNER_TOKEN_SHA256=<sha256 hex> in the enclave image"
    elif kind == "snp":
        where = "HOST_DATA = sha256(token) at launch (or owner_initdata with CoCo initdata)"
    elif kind == "tdx":
        where = (
            "MRCONFIGID = sha256(token) + 16 zero bytes at TD launch (or owner_initdata with "
            "CoCo initdata)"
        )
    else:
        where = "no measured configuration on this backend"
    return (
        f"set the owner token's sha256 where the operator cannot change it: {where}; or "
        "--owner-resource naming a key broker resource that holds it"
    )


def _measured(
    settings: Settings, backend: TeeBackend, released: Callable[[], bytes] | None
) -> bytes:
    if settings.owner_token:
        raise ConfigError(
            f"--owner-token / BLINDINFER_OWNER_TOKEN come from the host, which a real TEE "
            f"({backend.name}) does not trust to name the model owner; {_how(backend)}"
        )
    found: list[tuple[str, bytes]] = []
    if settings.owner_resource is not None:
        if released is None:
            raise ConfigError(
                f"owner_resource {settings.owner_resource!r} is set but no key broker is "
                "configured to release it"
            )
        try:
            raw = released()
        except BlindInferError as exc:
            raise ConfigError(f"the key broker did not release the owner hash: {exc}") from None
        found.append((f"key broker resource {settings.owner_resource!r}", _digest_bytes(raw)))
    kind = backend.kind
    if kind in _ENV_MEASURED and settings.owner_token_sha256:
        found.append((_ENV_MEASURED[kind], bytes.fromhex(settings.owner_token_sha256)))
    elif kind in _FIELD:
        from_field = _from_report_field(settings, backend)
        if from_field is not None:
            found.append(from_field)
        elif settings.owner_token_sha256:
            raise ConfigError(
                f"owner_token_sha256 comes from the host's environment on {backend.name}, which "
                f"is not measured; {_how(backend)}"
            )
    if not found:
        raise ConfigError(f"no model owner is configured for {backend.name}: {_how(backend)}")
    digest = found[0][1]
    for where, other in found[1:]:
        if not hmac.compare_digest(other, digest):
            raise ConfigError(
                f"the owner hash from {where} differs from the one from {found[0][0]}; "
                "configure one owner"
            )
    if settings.owner_token_sha256 and not hmac.compare_digest(
        bytes.fromhex(settings.owner_token_sha256), digest
    ):
        raise ConfigError(
            f"owner_token_sha256 differs from the owner hash from {found[0][0]}; remove it or "
            "make them equal"
        )
    return digest


def _digest_bytes(raw: bytes) -> bytes:
    digest = key32(raw)
    if digest is None:
        raise ConfigError("the released owner hash must be 32 bytes or 64 hex digits")
    return digest


def report_field(backend: TeeBackend) -> bytes:
    """HOST_DATA (SNP) or MRCONFIGID (TDX) of this TEE, from its own fresh evidence."""
    from blindinfer.attestation import _dcap, _tdx
    from blindinfer.attestation import _snp as snp

    evidence = backend.get_evidence(bytes(64))
    try:
        if backend.kind == "snp":
            return snp.parse_report(evidence.evidence).host_data
        layout = _dcap.parse_layout(bytes(evidence.evidence))
        mrconfigid: bytes = _tdx.TD10_BODY.unpack_from(layout.body)[7]
        return mrconfigid
    except (BlindInferError, struct.error, ValueError) as exc:
        raise ConfigError(f"cannot read this TEE's own evidence: {exc}") from None


def _from_report_field(settings: Settings, backend: TeeBackend) -> tuple[str, bytes] | None:
    name = _FIELD[backend.kind]
    value = report_field(backend)
    if settings.owner_initdata is not None:
        return f"the CoCo initdata ({name})", _from_initdata(settings, name, value)
    if not any(value):
        return None
    digest, tail = value[:32], value[32:]
    if any(tail):
        raise ConfigError(
            f"{name} holds something other than sha256(owner token) + zero bytes (a CoCo "
            "initdata digest? then set owner_initdata to the initdata document)"
        )
    return name, digest


def _from_initdata(settings: Settings, name: str, value: bytes) -> bytes:
    assert settings.owner_initdata is not None
    try:
        raw = settings.owner_initdata.read_bytes()
        doc = tomllib.loads(raw.decode())
        algorithm = str(doc["algorithm"])
        entry = str(doc["data"][INITDATA_KEY]).strip()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"cannot read the initdata document {settings.owner_initdata} (it needs "
            f'algorithm and a [data] entry "{INITDATA_KEY}"): {type(exc).__name__} {exc}'
        ) from None
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise ConfigError(f"initdata algorithm {algorithm!r}: use sha256, sha384 or sha512")
    digest = hashlib.new(algorithm, raw).digest()
    if len(digest) > len(value) or not hmac.compare_digest(digest.ljust(len(value), b"\0"), value):
        raise ConfigError(
            f"the initdata document {settings.owner_initdata} is not the one measured into "
            f"{name}; refusing it"
        )
    try:
        owner = bytes.fromhex(entry)
    except ValueError:
        owner = b""
    if len(owner) != 32:
        raise ConfigError(f'initdata "{INITDATA_KEY}" must be 64 hex digits (sha256 of the token)')
    return owner
