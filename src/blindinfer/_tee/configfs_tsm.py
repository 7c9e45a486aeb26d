"""Intel TDX and AMD SEV-SNP evidence through Linux configfs-tsm (``--tee tdx`` / ``sev-snp``).

Interface (kernel Documentation/ABI/testing/configfs-tsm-report, Linux >= 6.7): every directory
created under ``/sys/kernel/config/tsm/report/`` is a private report request with attributes

- ``inblob`` (WO): up to 64 bytes of user data -> the report_data of the evidence;
- ``outblob`` (RO): the evidence (TDX: a DCAP quote; SNP: an ATTESTATION_REPORT);
- ``auxblob`` (RO): SNP only, the GHCB certificate table (VCEK, ASK, ARK) when the host has one;
- ``provider`` (RO): ``tdx_guest`` or ``sev_guest``;
- ``generation`` (RO): incremented by every write to ``inblob`` (or another option); reading it
  before and after ``outblob`` detects a concurrent writer to the same entry;
- ``privlevel`` (WO, SNP): the VMPL to report.

Each request uses a fresh uniquely named entry that is removed afterwards. File access goes
through :class:`OsTsmFs` (plain ``os`` calls on the real paths); tests substitute an emulation of
the configfs semantics, which regular files cannot have.

Neither TDX nor configfs-tsm offers a sealing key. On TDX the model store's key must come from a
key broker that releases it after verifying this TEE's evidence; until one is wired in, it is
read from ``BLINDINFER_SEALING_KEY_FILE`` (see :func:`.base.load_sealing_key_file`). On SNP,
``key_source`` chooses: ``"file"`` (the default, development only: the operator supplies the
key) or ``"derived"``, a key the SNP firmware derives from the chip's VCEK and this VM's launch
measurement and policy (``SNP_GET_DERIVED_KEY`` on ``/dev/sev-guest``, see :mod:`.sev_guest`).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import uuid
from pathlib import Path
from typing import Any, Protocol

from blindinfer._collateral import CollateralProvider, collect, provider_from_options
from blindinfer._tee import sev_guest
from blindinfer._tee.base import BackendUnavailable, load_sealing_key_file
from blindinfer.attestation import _snp as snp
from blindinfer.attestation import _tdx as tdx
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import AttestationError, ConfigError, GenerationConflict

log = logging.getLogger(__name__)

TSM_ROOT = Path("/sys/kernel/config/tsm/report")

# name -> (evidence kind, expected configfs-tsm provider)
_FLAVOURS = {"tdx": ("tdx", "tdx_guest"), "sev-snp": ("snp", "sev_guest")}

# SEV-ES GHCB spec (AMD pub. 56421) section 4.1.8.1, MSG_REPORT_REQ certificate table: entries of
# {GUID (16 bytes), offset (u32 LE), length (u32 LE)} ended by an all-zero entry; offsets count
# from the start of the table. GUIDs are stored in RFC 4122 byte order.
_VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
_ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes
_ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes
_CERT_ENTRY = struct.Struct("<16sII")

KEY_SOURCES = ("derived", "file")
FILE_KEY_WARNING = (
    "the sealing key comes from a file the operator supplies: development only"
    " (use key_source=derived, or a key broker, in production)"
)


class TsmFs(Protocol):
    """The file operations the backend performs on configfs-tsm."""

    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class OsTsmFs:
    """The production TsmFs: direct system calls on the real configfs paths."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write(self, path: Path, data: bytes) -> None:
        # configfs binary attributes take the whole value in one write, committed on close.
        with open(path, "wb", buffering=0) as f:
            f.write(data)


# --- evidence helpers --------------------------------------------------------------------------


def quote_report_data(quote: bytes) -> bytes:
    """report_data of a TDX quote v4/v5 (the verifier's parser); ValueError if it is not one."""
    try:
        return tdx.quote_report_data(quote)
    except AttestationError as exc:
        raise ValueError(str(exc)) from exc


def snp_report_data(report: bytes) -> bytes:
    """REPORT_DATA of an SNP ATTESTATION_REPORT (the verifier's parser); ValueError if malformed."""
    try:
        return snp.parse_report(bytes(report)).report_data
    except AttestationError as exc:
        raise ValueError(str(exc)) from exc


def parse_cert_table(table: bytes) -> dict[bytes, bytes]:
    """GUID -> certificate bytes from a GHCB certificate table (see _CERT_ENTRY)."""
    certs: dict[bytes, bytes] = {}
    for pos in range(0, len(table) - _CERT_ENTRY.size + 1, _CERT_ENTRY.size):
        guid, offset, length = _CERT_ENTRY.unpack_from(table, pos)
        if guid == bytes(16):
            return certs
        if offset + length > len(table) or offset < pos + _CERT_ENTRY.size:
            raise ValueError(f"certificate table entry {guid.hex()} points outside the table")
        certs[guid] = table[offset : offset + length]
    raise ValueError("certificate table has no terminating all-zero entry")


def _der_to_pem(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def snp_collateral_from_auxblob(auxblob: bytes) -> dict[str, bytes]:
    """{"vcek": DER, "chain": PEM(ASK + ARK)} from the certificate table, {} if incomplete."""
    if not auxblob.strip(b"\x00"):
        return {}
    try:
        certs = parse_cert_table(auxblob)
        if not all(g in certs for g in (_VCEK_GUID, _ASK_GUID, _ARK_GUID)):
            return {}
        chain = _der_to_pem(certs[_ASK_GUID]) + _der_to_pem(certs[_ARK_GUID])
    except ValueError as exc:
        log.warning("ignoring malformed SNP certificate table in auxblob: %s", exc)
        return {}
    return {"vcek": certs[_VCEK_GUID], "chain": chain}


# --- backend -----------------------------------------------------------------------------------


class ConfigfsTsmBackend:
    insecure = False

    def __init__(
        self,
        name: str,
        *,
        tsm_root: Path = TSM_ROOT,
        fs: TsmFs | None = None,
        collateral: CollateralProvider | None = None,
        sealing_key_file: str | os.PathLike[str] | None = None,
        privlevel: int | None = None,
        retries: int = 3,
        key_source: str = "file",
        sev_guest_device: str | os.PathLike[str] = sev_guest.DEVICE,
        sev_guest_ioctl: sev_guest.IoctlFn | None = None,
        key_root: str = "vcek",
        key_fields: tuple[str, ...] | str = sev_guest.DEFAULT_FIELDS,
        key_guest_svn: int = 0,
        key_tcb_version: int = 0,
    ) -> None:
        if name not in _FLAVOURS:
            raise BackendUnavailable(f"configfs-tsm serves tdx or sev-snp, not {name!r}")
        self.name = name
        self.kind, self.provider = _FLAVOURS[name]
        if key_source not in KEY_SOURCES:
            raise ConfigError(
                f"key_source must be one of {', '.join(KEY_SOURCES)}, not {key_source!r}"
            )
        if key_source == "derived" and self.kind != "snp":
            raise BackendUnavailable(
                f"--tee {name} has no hardware-derived sealing key (key_source=derived is SNP"
                " only): supply the key through a key broker (sealing_key_file)"
            )
        self.key_source = key_source
        self._sev_guest_device = os.fspath(sev_guest_device)
        self._sev_guest_ioctl = sev_guest_ioctl
        self._key_root = key_root
        self._key_fields = (
            tuple(f.strip() for f in key_fields.split(",") if f.strip())
            if isinstance(key_fields, str)
            else tuple(key_fields)
        )
        self._key_guest_svn = key_guest_svn
        self._key_tcb_version = key_tcb_version
        if key_source == "derived":
            try:  # refuse bad names now, not when the store is first opened
                sev_guest.build_request(
                    root_key=key_root,
                    fields=self._key_fields,
                    vmpl=privlevel or 0,
                    guest_svn=key_guest_svn,
                    tcb_version=key_tcb_version,
                )
            except ValueError as exc:
                raise ConfigError(f"SNP derived sealing key: {exc}") from None
        elif self.kind == "snp":
            log.warning("%s", FILE_KEY_WARNING)
        self.tsm_root = tsm_root
        self._fs = fs or OsTsmFs()
        self._collateral = collateral
        self._sealing_key_file = sealing_key_file
        self._privlevel = privlevel
        self._retries = max(1, retries)
        self._lock = threading.Lock()

    # -- one report request --

    def _entry(self) -> Path:
        return self.tsm_root / f"blindinfer-{os.getpid()}-{uuid.uuid4().hex[:16]}"

    def _read_generation(self, entry: Path) -> int:
        text = self._fs.read(entry / "generation").decode("ascii", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise BackendUnavailable(f"configfs-tsm generation is not a number: {text!r}") from None

    def check_provider(self, entry: Path) -> None:
        found = self._fs.read(entry / "provider").decode("ascii", "replace").strip()
        if found != self.provider:
            raise BackendUnavailable(
                f"--tee {self.name} needs the configfs-tsm provider {self.provider!r}, but this"
                f" machine's is {found!r}"
            )

    def _mkdir(self, entry: Path) -> None:
        try:
            self._fs.mkdir(entry)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot create a configfs-tsm report request under {self.tsm_root}: {exc}"
            ) from exc

    def _request(self, report_data: bytes) -> tuple[bytes, bytes]:
        """(outblob, auxblob) for one fresh entry; GenerationConflict if another writer raced."""
        entry = self._entry()
        self._mkdir(entry)
        try:
            self.check_provider(entry)
            writes = 0
            if self._privlevel is not None:
                self._fs.write(entry / "privlevel", str(self._privlevel).encode())
                writes += 1
            self._fs.write(entry / "inblob", report_data)
            writes += 1
            before = self._read_generation(entry)
            if before != writes:
                raise GenerationConflict(f"generation {before} after {writes} write(s)")
            outblob = self._fs.read(entry / "outblob")
            auxblob = self._fs.read(entry / "auxblob") if self.kind == "snp" else b""
            after = self._read_generation(entry)
            if after != before:
                raise GenerationConflict(f"generation moved from {before} to {after}")
            return outblob, auxblob
        except OSError as exc:
            raise BackendUnavailable(f"configfs-tsm report request failed: {exc}") from exc
        finally:
            try:
                self._fs.rmdir(entry)
            except OSError as exc:
                log.warning("could not remove configfs-tsm entry %s: %s", entry, exc)

    def _check_report_data(self, outblob: bytes, report_data: bytes) -> None:
        try:
            found = quote_report_data(outblob) if self.kind == "tdx" else snp_report_data(outblob)
        except ValueError as exc:
            raise BackendUnavailable(
                f"configfs-tsm returned malformed {self.kind} evidence: {exc}"
            ) from exc
        if found != report_data:
            raise BackendUnavailable(
                f"configfs-tsm returned {self.kind} evidence for report_data {found.hex()}, not the"
                f" requested {report_data.hex()}"
            )

    # -- TeeBackend --

    def probe(self) -> None:
        """Start-up check: configfs-tsm is mounted and its provider matches this backend."""
        if not self.tsm_root.is_dir():
            raise BackendUnavailable(
                f"configfs-tsm not found at {self.tsm_root}: needs Linux >= 6.7 inside a"
                f" {self.kind.upper()} guest with configfs mounted (mount -t configfs none"
                " /sys/kernel/config)"
            )
        entry = self._entry()
        self._mkdir(entry)
        try:
            self.check_provider(entry)
        finally:
            self._fs.rmdir(entry)

    def get_evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report_data must be exactly 64 bytes")
        with self._lock:
            for attempt in range(1, self._retries + 1):
                try:
                    outblob, auxblob = self._request(report_data)
                    break
                except GenerationConflict as exc:
                    log.warning("configfs-tsm conflict (attempt %d): %s", attempt, exc)
            else:
                raise BackendUnavailable(
                    f"configfs-tsm report request kept changing under us ({self._retries} tries)"
                )
        self._check_report_data(outblob, report_data)
        collateral = snp_collateral_from_auxblob(auxblob) if self.kind == "snp" else {}
        if not collateral:
            collateral = collect(self._collateral, outblob)
        return Evidence(kind=self.kind, evidence=outblob, collateral=collateral)

    def sealing_key(self) -> bytes:
        """The model store's 32-byte key (never logged).

        ``key_source="derived"`` (SNP): the firmware derives it from the VCEK (chip-bound) with
        this VM's launch MEASUREMENT and guest POLICY mixed in (``key_fields``), at the VMPL of
        ``privlevel`` (default 0). Otherwise the operator's file (see load_sealing_key_file).
        """
        if self.key_source == "derived":
            kwargs: dict[str, Any] = {}
            if self._sev_guest_ioctl is not None:
                kwargs["ioctl"] = self._sev_guest_ioctl
            return sev_guest.derived_key(
                device=self._sev_guest_device,
                root_key=self._key_root,
                fields=self._key_fields,
                guest_svn=self._key_guest_svn,
                tcb_version=self._key_tcb_version,
                vmpl=self._privlevel or 0,
                **kwargs,
            )
        return load_sealing_key_file(self._sealing_key_file, self.kind.upper())


def create(name: str, data_dir: Path, **options: Any) -> ConfigfsTsmBackend:
    """``--tee tdx`` / ``--tee sev-snp``.

    Options: ``tsm_root`` (Path), ``fs`` (TsmFs), ``collateral`` (a CollateralProvider; default:
    PCCS/PCS for TDX, AMD KDS for SNP, cached under ``<data-dir>/collateral/``, configured by
    ``pccs_url`` / ``amd_product`` / ``kds_url``), ``sealing_key_file``, ``privlevel`` (SNP
    VMPL), ``retries``; SNP sealing: ``key_source`` ("file" | "derived"), ``sev_guest_device``,
    ``sev_guest_ioctl`` (tests), ``key_root`` ("vcek" | "vmrk"), ``key_fields`` (comma-separated
    GUEST_FIELD_SELECT names), ``key_guest_svn``, ``key_tcb_version`` (integers, ``0x`` allowed).
    """
    if name not in _FLAVOURS:
        raise BackendUnavailable(f"configfs-tsm serves tdx or sev-snp, not {name!r}")
    provider_from_options(_FLAVOURS[name][0], data_dir, options)
    # values from ``--tee-option KEY=VALUE`` arrive as strings
    if "tsm_root" in options:
        options["tsm_root"] = Path(options["tsm_root"])
    for key in ("privlevel", "retries"):
        if options.get(key) is not None:
            options[key] = int(options[key])
    for key in ("key_guest_svn", "key_tcb_version"):  # TCB versions read best in hex
        if isinstance(options.get(key), str):
            try:
                options[key] = int(options[key], 0)
            except ValueError:
                raise ConfigError(f"{key} must be an integer, not {options[key]!r}") from None
    backend = ConfigfsTsmBackend(name, **options)
    backend.probe()
    return backend
