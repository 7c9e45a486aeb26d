"""The TEE backend interface: what the server needs from the hardware it runs on."""

from __future__ import annotations

from typing import Protocol

from blindinfer.attestation.claims import Evidence
from blindinfer.errors import BackendUnavailable

__all__ = ["BackendUnavailable", "TeeBackend"]


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
