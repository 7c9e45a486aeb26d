"""Intel SGX evidence inside a Gramine-SGX enclave (``--tee gramine-sgx``).

Interface: Gramine's ``/dev/attestation`` pseudo-filesystem (Gramine docs, "Attestation and
Secret Provisioning" -> "/dev/attestation interface"):

- ``attestation_type``: ``"dcap"`` when the manifest sets ``sgx.remote_attestation = "dcap"``;
- ``user_report_data``: write exactly 64 bytes, which the next quote will carry as REPORTDATA;
- ``quote``: read a DCAP quote (v3) over the last ``user_report_data`` written;
- ``keys/_sgx_mrenclave``: the 16-byte SGX sealing key bound to MRENCLAVE (EGETKEY).

The write/read pair is process-global state, so requests are serialised with one lock, and the
quote's REPORTDATA is compared with what was written before it is handed out.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from blindinfer._collateral import CollateralProvider, collect, provider_from_options
from blindinfer._tee.base import BackendUnavailable
from blindinfer.attestation import _sgx as sgx
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import AttestationError

ATTESTATION_ROOT = Path("/dev/attestation")
SEALING_KEY = "keys/_sgx_mrenclave"
_SEALING_INFO = b"blindinfer model store sealing key v1 (sgx mrenclave)"


def quote_report_data(quote: bytes) -> bytes:
    """REPORTDATA of an SGX quote v3 (the verifier's parser); ValueError when it is not one."""
    try:
        return sgx.quote_report_data(quote)
    except AttestationError as exc:
        raise ValueError(str(exc)) from exc


class GramineSgxBackend:
    name = "gramine-sgx"
    kind = "sgx"
    insecure = False

    def __init__(
        self,
        attestation_root: Path = ATTESTATION_ROOT,
        collateral: CollateralProvider | None = None,
    ) -> None:
        self.root = attestation_root
        self._collateral = collateral
        self._lock = threading.Lock()

    def probe(self) -> None:
        """Start-up check: running under Gramine-SGX with DCAP remote attestation enabled."""
        try:
            kind = (self.root / "attestation_type").read_text(encoding="ascii").strip()
        except OSError as exc:
            raise BackendUnavailable(
                f"{self.root}/attestation_type is not readable ({exc}): --tee gramine-sgx must run"
                " inside a Gramine-SGX enclave (gramine-sgx blindinfer serve ...)"
            ) from exc
        if kind != "dcap":
            raise BackendUnavailable(
                f"Gramine attestation type is {kind!r}, expected 'dcap': set"
                ' sgx.remote_attestation = "dcap" in the manifest and re-sign the enclave'
            )

    def _quote(self, report_data: bytes) -> bytes:
        with open(self.root / "user_report_data", "wb") as f:
            f.write(report_data)
        with open(self.root / "quote", "rb") as f:
            return f.read()

    def get_evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report_data must be exactly 64 bytes")
        with self._lock:
            try:
                quote = self._quote(report_data)
            except OSError as exc:
                raise BackendUnavailable(f"Gramine did not produce a quote: {exc}") from exc
        try:
            found = quote_report_data(quote)
        except ValueError as exc:
            raise BackendUnavailable(f"Gramine returned a malformed quote: {exc}") from exc
        if found != report_data:
            raise BackendUnavailable(
                f"Gramine returned a quote for report_data {found.hex()}, not the requested"
                f" {report_data.hex()}"
            )
        return Evidence(kind=self.kind, evidence=quote, collateral=collect(self._collateral, quote))

    def sealing_key(self) -> bytes:
        """HKDF-SHA256 of the MRENCLAVE-bound SGX seal key: a new enclave build gets a new key.

        The raw key is never used directly, so it can also serve Gramine's own encrypted mounts
        without one key doing two jobs.
        """
        path = self.root / SEALING_KEY
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise BackendUnavailable(f"cannot read the SGX sealing key {path}: {exc}") from exc
        if len(raw) != 16:
            raise BackendUnavailable(f"{path} holds {len(raw)} bytes, expected 16")
        return HKDF(hashes.SHA256(), 32, salt=None, info=_SEALING_INFO).derive(raw)


def create(name: str, data_dir: Path, **options: Any) -> GramineSgxBackend:
    """``--tee gramine-sgx``. Options: ``attestation_root`` (Path), ``collateral`` (a
    CollateralProvider; default: DCAP collateral from ``pccs_url`` (default Intel PCS), cached
    under ``<data-dir>/collateral/``)."""
    provider_from_options("sgx", data_dir, options)
    if "attestation_root" in options:  # a string when given as --tee-option
        options["attestation_root"] = Path(options["attestation_root"])
    backend = GramineSgxBackend(**options)
    backend.probe()
    return backend
