"""The TEE backend interface: what the server needs from the hardware it runs on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from blindinfer.attestation._claims import Evidence
from blindinfer.errors import BackendUnavailable

__all__ = [
    "SEALING_KEY_ENV",
    "BackendUnavailable",
    "TeeBackend",
    "key32",
    "load_sealing_key_file",
]

SEALING_KEY_ENV = "BLINDINFER_SEALING_KEY_FILE"


class TeeBackend(Protocol):
    """One implementation per TEE, each written against the real device interface.

    - ``name``: the ``serve --tee`` value ("simulation", "gramine-sgx", "tdx", "sev-snp", "nitro").
    - ``kind``: the evidence kind it produces ("simulation", "sgx", "tdx", "snp", "nitro").
    - ``insecure``: True only for simulation (no hardware protection at all).
    """

    name: str
    kind: str
    insecure: bool

    def get_evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose report_data (Nitro: user_data) is exactly these 64 bytes.

        The returned Evidence carries whatever collateral the backend has cached; it may be
        called concurrently and must serialise access to the device itself.
        """
        ...

    def sealing_key(self) -> bytes:
        """A 32-byte key bound to this TEE identity, used to seal the model store at rest."""
        ...


def load_sealing_key_file(path: str | os.PathLike[str] | None, tee: str) -> bytes:
    """A 32-byte sealing key from a file (raw 32 bytes, or 64 hex digits).

    For TEEs without a hardware sealing interface (TDX, SNP via configfs-tsm, Nitro). The file
    must be provided to the TEE by something that checked its evidence first (a key broker such
    as a KMS with attestation conditions); a key file on the host's disk protects nothing.
    """
    name = path if path is not None else os.environ.get(SEALING_KEY_ENV)
    if not name:
        raise BackendUnavailable(
            f"{tee} has no hardware sealing key: set {SEALING_KEY_ENV} (or the sealing_key_file"
            " option) to a 32-byte key released to this TEE by a key broker after attestation"
        )
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise BackendUnavailable(f"cannot read the sealing key file {name}: {exc}") from exc
    key = key32(raw)
    if key is None:
        raise BackendUnavailable(
            f"sealing key file {name} must hold exactly 32 bytes (or 64 hex digits)"
        )
    return key


def key32(raw: bytes) -> bytes | None:
    """32 raw bytes, or 64 hex digits (surrounding whitespace allowed), as 32 bytes; else None.

    The one reading of a key or digest handed over as a file or a key broker resource."""
    if len(raw) == 32:
        return bytes(raw)
    if len(raw) > 80:  # never decode a large blob to find out it is not a key
        return None
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return key if len(key) == 32 else None
