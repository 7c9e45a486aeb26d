"""AWS Nitro Enclaves evidence through the Nitro Secure Module (``--tee nitro``).

Interface: ``/dev/nsm``, driven with the ``aws-nsm-interface`` package (``pip install
blindinfer[nitro]``): ``open_nsm_device()``, ``get_attestation_doc(fd, user_data=..., nonce=...,
public_key=...)`` -> ``{"document": bytes}``, ``close_nsm_device(fd)``. The document is a
COSE_Sign1 structure (RFC 9052 section 4.2) whose CBOR payload holds ``user_data`` (AWS Nitro
Enclaves User Guide, "Attestation document"); the 64 report_data bytes travel there.

Nitro has no sealing-key interface: the real answer is AWS KMS with attestation conditions
(``kms:RecipientAttestation:PCR0`` ...), which releases a data key only to an enclave whose
signed document matches. Until that is wired in, the key comes from ``BLINDINFER_SEALING_KEY_FILE``.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import IO, Any, Protocol, cast

from blindinfer._tee.base import BackendUnavailable, load_sealing_key_file
from blindinfer.attestation import _nitro as nitro
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import AttestationError

NSM_DEVICE = Path("/dev/nsm")


class NsmModule(Protocol):
    """The functions of ``aws_nsm_interface`` this backend uses."""

    def open_nsm_device(self) -> IO[Any]: ...

    def get_attestation_doc(
        self,
        file_handle: IO[Any],
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> dict[str, Any]: ...

    def close_nsm_device(self, file_handle: IO[Any]) -> None: ...


def document_user_data(document: bytes) -> bytes | None:
    """``user_data`` of an attestation document, read with the verifier's parser (not verified:
    a producer check); BackendUnavailable when the document is malformed."""
    try:
        payload = nitro.parse_payload(nitro.parse_cose_sign1(document).payload)
    except AttestationError as exc:
        raise BackendUnavailable(
            f"the NSM returned a malformed attestation document: {exc}"
        ) from exc
    return payload.user_data


def _import_nsm() -> NsmModule:
    try:
        return cast(NsmModule, importlib.import_module("aws_nsm_interface"))
    except ImportError as exc:
        raise BackendUnavailable(
            "--tee nitro needs the aws-nsm-interface package: pip install 'blindinfer[nitro]'"
        ) from exc


class NitroBackend:
    name = "nitro"
    kind = "nitro"
    insecure = False

    def __init__(
        self,
        nsm: NsmModule,
        *,
        device: Path = NSM_DEVICE,
        sealing_key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self._nsm = nsm
        self.device = device
        self._sealing_key_file = sealing_key_file
        self._lock = threading.Lock()

    def probe(self) -> None:
        if not self.device.exists():
            raise BackendUnavailable(
                f"{self.device} not found: --tee nitro must run inside an AWS Nitro Enclave"
            )

    def _document(self, report_data: bytes) -> bytes:
        fd = self._nsm.open_nsm_device()
        try:
            answer = self._nsm.get_attestation_doc(fd, user_data=report_data)
        finally:
            self._nsm.close_nsm_device(fd)
        document = answer.get("document") if isinstance(answer, dict) else None
        if not isinstance(document, bytes):
            raise BackendUnavailable("the NSM answered without an attestation document")
        return document

    def get_evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report_data must be exactly 64 bytes")
        with self._lock:
            try:
                document = self._document(report_data)
            except BackendUnavailable:
                raise
            except Exception as exc:  # aws_nsm_interface raises IoctlError, OSError, ...
                raise BackendUnavailable(f"the NSM attestation request failed: {exc}") from exc
        found = document_user_data(document)
        if found != report_data:
            shown = found.hex() if found is not None else "none"
            raise BackendUnavailable(
                f"the NSM returned a document with user_data {shown}, not the requested"
                f" {report_data.hex()}"
            )
        return Evidence(kind=self.kind, evidence=document)

    def sealing_key(self) -> bytes:
        return load_sealing_key_file(self._sealing_key_file, "Nitro")


def create(name: str, data_dir: Path, **options: Any) -> NitroBackend:
    """``--tee nitro``. Options: ``nsm`` (an object with aws_nsm_interface's functions),
    ``device`` (Path, checked at start-up), ``sealing_key_file``."""
    nsm = options.pop("nsm", None) or _import_nsm()
    if "device" in options:  # a string when given as --tee-option
        options["device"] = Path(options["device"])
    backend = NitroBackend(nsm, **options)
    backend.probe()
    return backend
