"""SEV-SNP hardware-derived keys: ``SNP_GET_DERIVED_KEY`` on ``/dev/sev-guest``.

Sources (read for this module, quoted by section):

- Linux ``include/uapi/linux/sev-guest.h`` (the ioctl ABI):

  - ``struct snp_derived_key_req { __u32 root_key_select; __u32 rsvd; __u64 guest_field_select;
    __u32 vmpl; __u32 guest_svn; __u64 tcb_version; }``: 32 bytes, no padding;
  - ``struct snp_derived_key_resp { __u8 data[64]; }``: "response data, see SEV-SNP spec";
  - ``struct snp_guest_request_ioctl { __u8 msg_version; __u64 req_data; __u64 resp_data;
    union { __u64 exitinfo2; struct { __u32 fw_error; __u32 vmm_error; }; }; }``: 32 bytes with
    natural alignment (7 bytes of padding after msg_version); "bits[63:32]: VMM error code,
    bits[31:0] firmware error code (see psp-sev.h)";
  - ``#define SNP_GET_DERIVED_KEY _IOWR('S', 0x1, struct snp_guest_request_ioctl)``;
  - ``SNP_GUEST_VMM_ERR_INVALID_LEN 1``, ``SNP_GUEST_VMM_ERR_BUSY 2``.

- Linux ``drivers/virt/coco/sev-guest/sev-guest.c``: ``snp_guest_ioctl`` copies the ioctl struct
  in, sets ``exitinfo2 = 0xff``, refuses ``msg_version == 0`` with EINVAL, and copies the struct
  back whenever ``exitinfo2`` is non-zero, also on failure; ``get_derived_key`` copies
  ``sizeof(struct snp_derived_key_req)`` from ``req_data`` and, on success, 64 bytes to
  ``resp_data``. A failed firmware round trip returns EIO (throttling is retried inside the
  driver) and disables the VMPCK, so every later request on that boot fails (ENOTTY).
  ``arch/x86/coco/sev`` sets ``exitinfo2 = SEV_RET_NO_FW_CALL`` (-1) before the GHCB call.

- Linux ``include/uapi/linux/psp-sev.h``: the ``sev_ret_code`` values in :data:`FW_ERRORS`.

- AMD SEV Secure Nested Paging Firmware ABI Specification (pub. 56860), "MSG_KEY_REQ Message
  Structure" and "MSG_KEY_RSP Message Structure" tables:

  - ROOT_KEY_SELECT (bit 0): 0 = derive from the VCEK, 1 = derive from the VMRK;
  - GUEST_FIELD_SELECT bits: 0 GUEST_POLICY, 1 IMAGE_ID, 2 FAMILY_ID, 3 MEASUREMENT,
    4 GUEST_SVN, 5 TCB_VERSION; higher bits reserved, must be zero (later ABI revisions add
    bit 6, LAUNCH_MIT_VECTOR, which this module does not use);
  - VMPL: mixed into the key, must be >= the VMPL the request comes from;
  - GUEST_SVN: must not exceed the guest SVN of the launch ID block;
  - TCB_VERSION: must not exceed the committed TCB;
  - MSG_KEY_RSP: STATUS (u32; 0h success, 16h invalid parameters), 28 reserved bytes,
    DERIVED_KEY (32 bytes).

  A request the firmware finds invalid is answered with MSG_KEY_RSP STATUS = 16h over a
  successful round trip (the ioctl returns 0); ``fw_error`` in ``exitinfo2`` reports failures of
  the guest request itself.

Choice of fields. The default mixes MEASUREMENT (the launch digest: another image, kernel,
command line or OVMF gets another key, so a modified image cannot unseal the store) and
GUEST_POLICY (a debug-enabled or otherwise weaker policy gets another key). VCEK-rooted keys are
chip-bound: a store sealed on one machine cannot be opened on another, so a store has one
replica. TCB_VERSION is not mixed by default: the key then does not change with firmware updates.
Mixing it with a fixed floor (``fields`` with "tcb_version" and ``tcb_version`` = the oldest TCB
you accept) keeps the key stable across updates at or above the floor while firmware below it
cannot derive the key. The VMRK root (``root_key="vmrk"``) is not chip-bound (a migration agent
can carry it), but only exists where the launch flow set one up; not the default.

The key is never logged nor put in an exception; the response buffer is zeroed after use.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from typing import Any

from blindinfer.errors import BackendUnavailable

__all__ = [
    "DEFAULT_FIELDS",
    "FIELD_BITS",
    "FW_ERRORS",
    "ROOT_KEYS",
    "SNP_GET_DERIVED_KEY",
    "SnpDerivedKeyReq",
    "SnpDerivedKeyResp",
    "SnpGuestRequestIoctl",
    "derived_key",
    "describe_exitinfo2",
    "parse_fields",
]

DEVICE = "/dev/sev-guest"
MSG_VERSION = 1  # MSG_KEY_REQ message version 1, the only one the ABI defines

# GUEST_FIELD_SELECT bits (ABI "MSG_KEY_REQ": GUEST_FIELD_SELECT)
FIELD_BITS: dict[str, int] = {
    "guest_policy": 0,
    "image_id": 1,
    "family_id": 2,
    "measurement": 3,
    "guest_svn": 4,
    "tcb_version": 5,
}
DEFAULT_FIELDS: tuple[str, ...] = ("measurement", "guest_policy")

# ROOT_KEY_SELECT (ABI "MSG_KEY_REQ": ROOT_KEY_SELECT bit 0)
ROOT_KEYS: dict[str, int] = {"vcek": 0, "vmrk": 1}


class SnpDerivedKeyReq(ctypes.Structure):
    """``struct snp_derived_key_req`` (sev-guest.h) = the ABI's MSG_KEY_REQ, 32 bytes."""

    _fields_ = (
        ("root_key_select", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint32),
        ("guest_field_select", ctypes.c_uint64),
        ("vmpl", ctypes.c_uint32),
        ("guest_svn", ctypes.c_uint32),
        ("tcb_version", ctypes.c_uint64),
    )


class SnpDerivedKeyResp(ctypes.Structure):
    """``struct snp_derived_key_resp`` (sev-guest.h): 64 bytes holding the ABI's MSG_KEY_RSP."""

    _fields_ = (("data", ctypes.c_uint8 * 64),)


class _Errors(ctypes.Structure):
    _fields_ = (("fw_error", ctypes.c_uint32), ("vmm_error", ctypes.c_uint32))


class _ExitInfo2(ctypes.Union):
    _anonymous_ = ("errors",)
    _fields_ = (("exitinfo2", ctypes.c_uint64), ("errors", _Errors))


class SnpGuestRequestIoctl(ctypes.Structure):
    """``struct snp_guest_request_ioctl`` (sev-guest.h), 32 bytes with natural alignment."""

    _anonymous_ = ("err",)
    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("err", _ExitInfo2),
    )


# MSG_KEY_RSP (ABI "MSG_KEY_RSP Message Structure"): STATUS u32, 28 reserved bytes, key[32]
MSG_KEY_RSP = struct.Struct("<I28s32s")


def _iowr(type_: str, nr: int, size: int) -> int:
    """Linux ``_IOWR`` (asm-generic/ioctl.h): 3 << 30 | size << 16 | type << 8 | nr."""
    return (3 << 30) | (size << 16) | (ord(type_) << 8) | nr


SNP_GET_DERIVED_KEY = _iowr("S", 0x1, ctypes.sizeof(SnpGuestRequestIoctl))  # 0xC0205301

# psp-sev.h enum sev_ret_code (values as the kernel numbers them)
FW_ERRORS: dict[int, str] = {
    0x00: "SEV_RET_SUCCESS",
    0x01: "SEV_RET_INVALID_PLATFORM_STATE",
    0x02: "SEV_RET_INVALID_GUEST_STATE",
    0x03: "SEV_RET_INVALID_CONFIG",
    0x04: "SEV_RET_INVALID_LEN",
    0x05: "SEV_RET_ALREADY_OWNED",
    0x06: "SEV_RET_INVALID_CERTIFICATE",
    0x07: "SEV_RET_POLICY_FAILURE",
    0x08: "SEV_RET_INACTIVE",
    0x09: "SEV_RET_INVALID_ADDRESS",
    0x0A: "SEV_RET_BAD_SIGNATURE",
    0x0B: "SEV_RET_BAD_MEASUREMENT",
    0x0C: "SEV_RET_ASID_OWNED",
    0x0D: "SEV_RET_INVALID_ASID",
    0x0E: "SEV_RET_WBINVD_REQUIRED",
    0x0F: "SEV_RET_DFFLUSH_REQUIRED",
    0x10: "SEV_RET_INVALID_GUEST",
    0x11: "SEV_RET_INVALID_COMMAND",
    0x12: "SEV_RET_ACTIVE",
    0x13: "SEV_RET_HWSEV_RET_PLATFORM",
    0x14: "SEV_RET_HWSEV_RET_UNSAFE",
    0x15: "SEV_RET_UNSUPPORTED",
    0x16: "SEV_RET_INVALID_PARAM",
    0x17: "SEV_RET_RESOURCE_LIMIT",
    0x18: "SEV_RET_SECURE_DATA_INVALID",
    0x19: "SEV_RET_INVALID_PAGE_SIZE",
    0x1A: "SEV_RET_INVALID_PAGE_STATE",
    0x1B: "SEV_RET_INVALID_MDATA_ENTRY",
    0x1C: "SEV_RET_INVALID_PAGE_OWNER",
    0x1D: "SEV_RET_AEAD_OFLOW",
    0x1F: "SEV_RET_EXIT_RING_BUFFER",
    0x20: "SEV_RET_RMP_INIT_REQUIRED",
    0x21: "SEV_RET_BAD_SVN",
    0x22: "SEV_RET_BAD_VERSION",
    0x23: "SEV_RET_SHUTDOWN_REQUIRED",
    0x24: "SEV_RET_UPDATE_FAILED",
    0x25: "SEV_RET_RESTORE_REQUIRED",
    0x26: "SEV_RET_RMP_INITIALIZATION_FAILED",
    0x27: "SEV_RET_INVALID_KEY",
}
# sev-guest.h SNP_GUEST_VMM_ERR_*
VMM_ERRORS: dict[int, str] = {1: "SNP_GUEST_VMM_ERR_INVALID_LEN", 2: "SNP_GUEST_VMM_ERR_BUSY"}
# snp_guest_ioctl presets exitinfo2 to 0xff: the driver refused before any firmware call
_DRIVER_PRESET = 0xFF
_NO_FW_CALL = 0xFFFF_FFFF  # SEV_RET_NO_FW_CALL (-1) as each u32 half of exitinfo2

IoctlFn = Callable[[int, int, Any], Any]


def describe_exitinfo2(exitinfo2: int) -> str:
    """The ``exitinfo2`` of a failed request in words (fw_error, vmm_error)."""
    fw, vmm = exitinfo2 & 0xFFFF_FFFF, exitinfo2 >> 32
    if exitinfo2 == 0:
        return "exitinfo2 0 (no error reported by the firmware or the host)"
    if exitinfo2 == _DRIVER_PRESET:
        return "exitinfo2 0xff (the guest driver refused the request before the firmware saw it)"
    if fw == _NO_FW_CALL:
        return f"exitinfo2 {exitinfo2:#x} (SEV_RET_NO_FW_CALL: the firmware was not called)"
    parts = []
    if fw:
        parts.append(f"fw_error {fw:#x} {FW_ERRORS.get(fw, 'unknown firmware error')}")
    if vmm:
        parts.append(f"vmm_error {vmm:#x} {VMM_ERRORS.get(vmm, 'unknown host (VMM) error')}")
    return f"exitinfo2 {exitinfo2:#x} ({', '.join(parts)})"


def parse_fields(fields: tuple[str, ...] | list[str] | str) -> int:
    """GUEST_FIELD_SELECT for field names (a sequence, or one comma-separated string)."""
    names = [f.strip() for f in fields.split(",")] if isinstance(fields, str) else list(fields)
    select = 0
    for name in names:
        if not name:
            continue
        try:
            select |= 1 << FIELD_BITS[name.lower()]
        except KeyError:
            raise ValueError(
                f"unknown SNP derived-key field {name!r}; choose from {', '.join(FIELD_BITS)}"
            ) from None
    return select


def build_request(
    *,
    root_key: str,
    fields: tuple[str, ...] | list[str] | str,
    vmpl: int,
    guest_svn: int,
    tcb_version: int,
) -> SnpDerivedKeyReq:
    """The MSG_KEY_REQ for these choices; ValueError for values outside the ABI's fields."""
    try:
        root = ROOT_KEYS[root_key.lower()]
    except KeyError:
        raise ValueError(
            f"root_key must be one of {', '.join(ROOT_KEYS)}, not {root_key!r}"
        ) from None
    for name, value, bits in (
        ("vmpl", vmpl, 32),
        ("guest_svn", guest_svn, 32),
        ("tcb_version", tcb_version, 64),
    ):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{name} {value} does not fit the ABI's {bits}-bit field")
    return SnpDerivedKeyReq(
        root_key_select=root,
        rsvd=0,
        guest_field_select=parse_fields(fields),
        vmpl=vmpl,
        guest_svn=guest_svn,
        tcb_version=tcb_version,
    )


def derived_key(
    *,
    device: str = DEVICE,
    ioctl: IoctlFn = fcntl.ioctl,
    root_key: str = "vcek",
    fields: tuple[str, ...] = DEFAULT_FIELDS,
    guest_svn: int = 0,
    tcb_version: int = 0,
    vmpl: int = 0,
) -> bytes:
    """A 32-byte key the SNP firmware derives from ``root_key`` and the selected guest fields.

    ``vmpl`` is mixed into the key and must be >= the VMPL this guest runs at (0 without an
    SVSM). BackendUnavailable if the device is absent, the request fails, or the firmware
    answers with a non-zero status; the message never contains key material.
    """
    try:
        req = build_request(
            root_key=root_key,
            fields=fields,
            vmpl=vmpl,
            guest_svn=guest_svn,
            tcb_version=tcb_version,
        )
    except ValueError as exc:
        raise BackendUnavailable(f"invalid SNP derived-key request: {exc}") from None
    resp = SnpDerivedKeyResp()
    arg = SnpGuestRequestIoctl(
        msg_version=MSG_VERSION,
        req_data=ctypes.addressof(req),
        resp_data=ctypes.addressof(resp),
    )
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendUnavailable(
            f"no {device} ({exc.strerror}): the derived sealing key needs an SEV-SNP guest with"
            " the sev-guest driver (CONFIG_SEV_GUEST) and access to the device (root)"
        ) from None
    try:
        try:
            ioctl(fd, SNP_GET_DERIVED_KEY, arg)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            hint = (
                "; the guest driver disables its VMPCK after a failed firmware round trip, so"
                " later requests fail until the VM reboots"
                if exc.errno in (errno.EIO, errno.ENOTTY)
                else ""
            )
            raise BackendUnavailable(
                f"SNP_GET_DERIVED_KEY on {device} failed: {name}"
                f" ({exc.strerror}), {describe_exitinfo2(arg.exitinfo2)}{hint}"
            ) from None
        status, _reserved, key = MSG_KEY_RSP.unpack(bytes(resp.data))
        status, key = int(status), bytes(key)
        if status != 0:
            raise BackendUnavailable(
                f"SNP firmware refused the derived-key request (root {root_key},"
                f" fields {req.guest_field_select:#x}, vmpl {vmpl}, guest_svn {guest_svn},"
                f" tcb_version {tcb_version:#x}): MSG_KEY_RSP status {status:#x}"
                f" {FW_ERRORS.get(status, 'unknown status')}"
            )
        if len(key) != 32:  # pragma: no cover - the struct fixes it
            raise BackendUnavailable("SNP firmware returned a derived key of the wrong size")
        return key
    finally:
        ctypes.memset(ctypes.addressof(resp), 0, ctypes.sizeof(resp))
        os.close(fd)
