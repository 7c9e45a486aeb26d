"""Small secrets sealed at rest under the TEE sealing key (the owner-token hash).

File format: 12-byte nonce | AES-256-GCM(key, nonce, secret, aad=purpose). The purpose string is
the associated data, so a sealed blob made for one use cannot be replayed as another.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindinfer.errors import StoreError

_NONCE = 12


class SealedSecret:
    """One secret in one file, sealed under ``key`` for ``purpose``."""

    def __init__(self, path: Path, key: bytes, purpose: bytes) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._purpose = purpose

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> bytes:
        """The unsealed secret; StoreError when it was sealed by another TEE or tampered with."""
        blob = self.path.read_bytes()
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], self._purpose)
        except (InvalidTag, ValueError):
            raise StoreError(
                f"{self.path} cannot be unsealed (other TEE identity or tampered)"
            ) from None

    def create(self, secret: bytes) -> None:
        """Seal ``secret`` into a new file (mode 0600); FileExistsError if it is already there."""
        nonce = os.urandom(_NONCE)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(nonce + self._aead.encrypt(nonce, secret, self._purpose))
