"""Emulations of the TEE device interfaces, fed with real evidence from the shared vectors.

- Gramine ``/dev/attestation``: a real directory whose ``user_report_data`` and ``quote`` are
  named pipes (FIFOs) served by a thread. The backend's production code path (``open``, ``write``,
  ``read`` on those paths) runs unchanged, and the quote it reads really depends on what it wrote,
  as with Gramine's pseudo-files. Regular files could not react to the write, and an injected
  file layer would bypass the very I/O we want to exercise. Limitation: reading ``quote`` without
  writing ``user_report_data`` first blocks (Gramine would answer over the previous data).
- configfs-tsm: a TsmFs on a real temporary directory with configfs's semantics added (mkdir
  creates the attributes, writing inblob bumps generation, reading outblob produces evidence for
  the last inblob, rmdir removes the entry with its attributes). configfs cannot be reproduced by
  plain files, so this layer stands in for the kernel; the production OsTsmFs does plain I/O.
- Nitro: an object with aws_nsm_interface's functions that opens a real device-path file and
  answers with a real-format COSE_Sign1 document.

Real vectors cannot carry our report_data. Emulations that must succeed patch it into a copy
(invalidating the signature, which producer-only tests do not check); replaying the unpatched
vector is how tests show that the producers refuse evidence over the wrong report_data.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cbor2

from blindinfer._tee.configfs_tsm import OsTsmFs

SGX_REPORT_DATA = slice(48 + 320, 48 + 384)  # quote v3: header 48, REPORTDATA at body + 320
TDX_REPORT_DATA = slice(48 + 520, 48 + 584)  # quote v4: header 48, REPORTDATA at body + 520
SNP_REPORT_DATA = slice(0x50, 0x90)  # ATTESTATION_REPORT REPORT_DATA


def patch(blob: bytes, where: slice, report_data: bytes) -> bytes:
    """A copy of ``blob`` with ``report_data`` at ``where`` (signature no longer valid)."""
    out = bytearray(blob)
    out[where] = report_data
    return bytes(out)


# --- Gramine /dev/attestation ------------------------------------------------------------------


class GramineAttestationFs:
    """``/dev/attestation`` in a temporary directory, served by a background thread."""

    def __init__(
        self,
        root: Path,
        make_quote: Callable[[bytes], bytes],
        *,
        attestation_type: str = "dcap",
        seal_key: bytes = bytes(range(16)),
    ) -> None:
        self.root = root
        self.make_quote = make_quote
        self.report_data = bytes(64)
        self.writes: list[bytes] = []
        self.quotes_served = 0
        (root / "keys").mkdir(parents=True)
        (root / "attestation_type").write_text(attestation_type)
        (root / "keys" / "_sgx_mrenclave").write_bytes(seal_key)
        (root / "keys" / "_sgx_mrsigner").write_bytes(bytes(reversed(seal_key)))
        os.mkfifo(root / "user_report_data")
        os.mkfifo(root / "quote")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._armed = False

    def __enter__(self) -> GramineAttestationFs:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _drain(self, fd: int) -> None:
        """Take every complete 64-byte write (Gramine accepts only 64-byte user_report_data)."""
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 64 - len(pending))
            except BlockingIOError:
                break
            if not chunk:
                break
            pending += chunk
            if len(pending) == 64:
                self.report_data = pending
                self.writes.append(pending)
                self._armed = True
                pending = b""

    def _open_quote_reader(self) -> int | None:
        """A write end for ``quote`` if a reader is waiting on it (ENXIO means none yet)."""
        try:
            return os.open(self.root / "quote", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None
            raise

    def _serve(self) -> None:
        # O_RDWR never blocks on a FIFO and keeps a writer present, so reads never see EOF.
        urd = os.open(self.root / "user_report_data", os.O_RDWR | os.O_NONBLOCK)
        try:
            while not self._stop.is_set():
                select.select([urd], [], [], 0.005)
                self._drain(urd)
                if not self._armed:
                    continue
                qfd = self._open_quote_reader()
                if qfd is None:
                    continue
                self._drain(urd)  # the backend wrote before opening quote: take that write
                quote = self.make_quote(self.report_data)
                self._armed = False  # one quote per write: the reader then sees EOF
                self.quotes_served += 1  # counted before the reader can see the end of it
                os.set_blocking(qfd, True)
                with os.fdopen(qfd, "wb") as f:
                    f.write(quote)
        finally:
            os.close(urd)


# --- configfs-tsm ------------------------------------------------------------------------------


class ConfigfsTsmEmulation(OsTsmFs):
    """configfs-tsm report entries on a real directory tree (see the module docstring)."""

    ATTRIBUTES = ("inblob", "outblob", "auxblob", "provider", "generation", "privlevel")
    WRITE_ONLY = ("inblob", "privlevel")
    READ_ONLY = ("outblob", "auxblob", "provider", "generation", "privlevel_floor")

    def __init__(
        self,
        root: Path,
        provider: str,
        make_outblob: Callable[[bytes], bytes],
        *,
        auxblob: bytes = b"",
    ) -> None:
        self.root = root
        self.provider = provider
        self.make_outblob = make_outblob
        self.auxblob = auxblob
        self.created: list[Path] = []
        self.on_outblob: Callable[[Path], None] | None = None
        self._inblobs: dict[Path, bytes] = {}
        root.mkdir(parents=True, exist_ok=True)

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        self.created.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "privlevel_floor").write_text("0\n")
        for name in ("inblob", "outblob", "auxblob", "privlevel"):
            (path / name).write_bytes(b"")
        self._inblobs[path] = b""

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        super().rmdir(path)
        self._inblobs.pop(path, None)

    def _bump(self, entry: Path) -> None:
        gen = int((entry / "generation").read_text())
        (entry / "generation").write_text(f"{gen + 1}\n")

    def write(self, path: Path, data: bytes) -> None:
        if path.name in self.READ_ONLY:
            raise PermissionError(errno.EACCES, "read-only configfs attribute", str(path))
        if path.name == "inblob" and len(data) > 64:
            raise OSError(errno.EINVAL, "inblob takes at most 64 bytes", str(path))
        super().write(path, data)
        if path.name == "inblob":
            self._inblobs[path.parent] = data
        self._bump(path.parent)

    def read(self, path: Path) -> bytes:
        if path.name in self.WRITE_ONLY:
            raise PermissionError(errno.EACCES, "write-only configfs attribute", str(path))
        entry = path.parent
        if path.name == "outblob":
            (entry / "outblob").write_bytes(self.make_outblob(self._inblobs[entry]))
            if self.on_outblob is not None:
                self.on_outblob(entry)
        if path.name == "auxblob":
            (entry / "auxblob").write_bytes(self.auxblob)
        return super().read(path)

    def live_entries(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir())


def cert_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A GHCB certificate table (GHCB spec 4.1.8.1): entries, zero terminator, then the certs."""
    header_len = 24 * (len(entries) + 1)
    headers, blobs = b"", b""
    for guid, cert in entries:
        headers += struct.pack("<16sII", guid, header_len + len(blobs), len(cert))
        blobs += cert
    return headers + bytes(24) + blobs


# --- Nitro NSM ---------------------------------------------------------------------------------


def nitro_document_with_user_data(document: bytes, user_data: bytes | None) -> bytes:
    """A copy of a COSE_Sign1 attestation document with ``user_data`` replaced in its payload."""
    protected, unprotected, payload, signature = cbor2.loads(document)
    fields = cbor2.loads(payload)
    fields["user_data"] = user_data
    return bytes(cbor2.dumps([protected, unprotected, cbor2.dumps(fields), signature]))


class FakeNsm:
    """Stands for the ``aws_nsm_interface`` module: same function names and signatures."""

    def __init__(self, device: Path, make_document: Callable[[bytes | None], bytes]) -> None:
        self.device = device
        self.make_document = make_document
        self.requests: list[Any] = []
        self.open_handles = 0

    def open_nsm_device(self) -> IO[Any]:
        self.open_handles += 1
        return open(self.device, "r+")

    def close_nsm_device(self, file_handle: IO[Any]) -> None:
        self.open_handles -= 1
        file_handle.close()

    def get_attestation_doc(
        self,
        file_handle: IO[Any],
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> dict[str, Any]:
        assert not file_handle.closed
        # The request the library would send through the ioctl (NSM API "Attestation").
        request = {
            "Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}
        }
        self.requests.append(cbor2.loads(cbor2.dumps(request)))
        return {"document": self.make_document(user_data)}
