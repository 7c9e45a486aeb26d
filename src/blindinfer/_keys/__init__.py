"""Attested key release: the model-store sealing key comes only to code whose evidence a key
broker accepted (TDX, SEV-SNP and Nitro have no hardware sealing key of their own).

- ``release_key(broker, resource, backend, timeout=...)``: ``broker`` is a Trustee KBS URL
  (``https://kbs.example:8080``; RCAR attestation of ``backend``, see ``kbs``) or the literal
  ``"cdh"`` (the Confidential Containers data hub on ``127.0.0.1:8006``, which attests the pod
  itself; ``backend`` is then not used). ``resource`` is ``<repository>/<type>/<tag>``.
- ``kbs.fetch_resource``, ``cdh.fetch_resource_cdh``, ``cdh.AttestationAgentEvidence``.
"""

from __future__ import annotations

import ssl

from blindinfer._keys.cdh import CDH_DEFAULT_BASE, AttestationAgentEvidence, fetch_resource_cdh
from blindinfer._keys.kbs import fetch_resource
from blindinfer._tee.base import TeeBackend, key32
from blindinfer.errors import BackendUnavailable

__all__ = [
    "CDH_DEFAULT_BASE",
    "AttestationAgentEvidence",
    "fetch_resource",
    "fetch_resource_cdh",
    "release_key",
]


def release_key(
    broker: str,
    resource: str,
    backend: TeeBackend | None,
    *,
    timeout: float = 30.0,
    context: ssl.SSLContext | None = None,
    cdh_base: str = CDH_DEFAULT_BASE,
) -> bytes:
    """A 32-byte key released by ``broker`` (KBS URL or ``"cdh"``) after attestation.

    The resource must hold exactly 32 bytes, or 64 hex digits (surrounding whitespace allowed);
    anything else is BackendUnavailable, and no message ever quotes the resource.
    """
    if broker == "cdh":
        raw = fetch_resource_cdh(resource, base=cdh_base, timeout=timeout)
    elif broker.startswith(("https://", "http://")):
        if backend is None:
            raise BackendUnavailable("key release from a KBS needs a TEE backend to attest")
        raw = fetch_resource(broker, resource, backend, context=context, timeout=timeout)
    else:
        raise BackendUnavailable(
            f"key broker must be a KBS URL (https://...) or 'cdh', not {broker!r}"
        )
    key = key32(raw)
    if key is None:
        raise BackendUnavailable(
            f"key resource {resource} is not a sealing key: it must hold exactly 32 bytes or 64"
            f" hex digits (it holds {len(raw)} bytes)"
        )
    return key
