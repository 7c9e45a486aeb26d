"""An emulation of ``/dev/sev-guest``'s SNP_GET_DERIVED_KEY, injectable as the ``ioctl`` function.

It follows the kernel ABI, not blindinfer's code: it gets the ioctl struct as raw memory (the
buffer ``fcntl.ioctl`` would pass), reads the request from the address in ``req_data`` with
``ctypes.string_at`` and writes the 64-byte response to the address in ``resp_data``.

Kernel behaviour reproduced (drivers/virt/coco/sev-guest/sev-guest.c, ``snp_guest_ioctl`` and
``get_derived_key``):

- the fd must be the device's (checked with fstat against the emulated device file);
- unknown request numbers: ENOTTY, with exitinfo2 = 0xff copied back;
- ``msg_version == 0``: EINVAL, struct not copied back;
- ``req_data`` or ``resp_data`` 0: EINVAL, exitinfo2 = 0xff copied back;
- a failed firmware round trip (``transport_error``): EIO with its exitinfo2, and the VMPCK is
  disabled: every later request fails with ENOTTY (exitinfo2 0xff), as in the driver.

Firmware behaviour (AMD pub. 56860, MSG_KEY_REQ / MSG_KEY_RSP): the round trip succeeds and
MSG_KEY_RSP.STATUS = 16h (INVALID_PARAM) when reserved fields are set, ROOT_KEY_SELECT is not
0 or 1, GUEST_FIELD_SELECT has a reserved bit (6 and up, the ABI <= 1.55 layout), VMPL is below
the guest's VMPL or above 3, GUEST_SVN exceeds the launch SVN, or TCB_VERSION exceeds the
committed TCB in any component byte. Assumptions of this emulation, not from the spec: the
message version other than 1 is a failed round trip with fw_error INVALID_PARAM; asking for the
VMRK of a guest that has none gives STATUS 16h.

The key is HMAC-SHA256 under the emulated root key (chip secret or VMRK) over the VMPL, the
field-select word and each selected field, so tests can check what changes the key. The real
firmware's KDF is not public in this form; only the dependence on the inputs is modelled.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blindinfer._tee.sev_guest import SNP_GET_DERIVED_KEY

IOCTL = struct.Struct("<B7xQQQ")  # struct snp_guest_request_ioctl, 32 bytes
KEY_REQ = struct.Struct("<IIQIIQ")  # struct snp_derived_key_req, 32 bytes
KEY_RSP = struct.Struct("<I28s32s")  # MSG_KEY_RSP in snp_derived_key_resp.data[64]
RESP_SIZE = 64
SNP_GET_REPORT = 0xC0205300
INVALID_PARAM = 0x16
DRIVER_PRESET = 0xFF


@dataclass
class SevGuestEmulator:
    """One emulated SNP guest: its launch identity, the chip, and the driver state."""

    device: Path
    measurement: bytes = bytes(48)
    policy: int = 0x30000  # SMT allowed, bit 17 reserved-must-be-one
    image_id: bytes = bytes(16)
    family_id: bytes = bytes(16)
    launch_svn: int = 0
    committed_tcb: int = 0xD315000000000303  # microcode 0xd3, snp 0x15, tee 3, bootloader 3
    current_vmpl: int = 0
    chip_secret: bytes = b"emulated chip secret (VCEK root)"
    vmrk: bytes | None = None
    transport_error: int | None = None  # exitinfo2 of a failed round trip, once
    vmpck_disabled: bool = False
    requests: list[bytes] = field(default_factory=list)  # raw MSG_KEY_REQ bytes seen
    calls: int = 0

    def __post_init__(self) -> None:
        self.device.write_bytes(b"")

    # -- the ioctl --

    def __call__(self, fd: int, request: int, arg: Any, mutate_flag: bool = True) -> int:
        self.calls += 1
        dev, opened = os.stat(self.device), os.fstat(fd)
        if (dev.st_dev, dev.st_ino) != (opened.st_dev, opened.st_ino):
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))  # not our device
        raw = (ctypes.c_ubyte * IOCTL.size).from_buffer(arg)
        msg_version, req_data, resp_data, _ = IOCTL.unpack(bytes(raw))

        def fail(err: int, exitinfo2: int | None) -> None:
            if exitinfo2:  # the driver copies the struct back only when exitinfo2 != 0
                struct.pack_into("<Q", raw, 24, exitinfo2)
            raise OSError(err, os.strerror(err))

        if not msg_version:
            fail(errno.EINVAL, None)
        if request != SNP_GET_DERIVED_KEY:
            fail(errno.ENOTTY, DRIVER_PRESET)
        if not req_data or not resp_data:
            fail(errno.EINVAL, DRIVER_PRESET)
        if self.vmpck_disabled:
            fail(errno.ENOTTY, DRIVER_PRESET)
        req = ctypes.string_at(req_data, KEY_REQ.size)
        self.requests.append(req)
        if self.transport_error is not None:
            exitinfo2, self.transport_error = self.transport_error, None
            self.vmpck_disabled = True
            fail(errno.EIO, exitinfo2)
        if msg_version != 1:
            self.vmpck_disabled = True
            fail(errno.EIO, INVALID_PARAM)
        status, key = self.firmware(req)
        ctypes.memmove(resp_data, KEY_RSP.pack(status, bytes(28), key) + bytes(RESP_SIZE - 64), 64)
        return 0

    # -- the firmware's MSG_KEY_REQ handling --

    def firmware(self, req: bytes) -> tuple[int, bytes]:
        root_select, rsvd, select, vmpl, guest_svn, tcb = KEY_REQ.unpack(req)
        if rsvd or root_select not in (0, 1) or select >> 6:
            return INVALID_PARAM, bytes(32)
        if not self.current_vmpl <= vmpl <= 3:
            return INVALID_PARAM, bytes(32)
        if guest_svn > self.launch_svn or not self.tcb_at_most_committed(tcb):
            return INVALID_PARAM, bytes(32)
        root = self.chip_secret if root_select == 0 else self.vmrk
        if root is None:
            return INVALID_PARAM, bytes(32)
        mixed = [struct.pack("<IIQ", root_select, vmpl, select)]
        parts = (
            (0, struct.pack("<Q", self.policy)),
            (1, self.image_id),
            (2, self.family_id),
            (3, self.measurement),
            (4, struct.pack("<I", guest_svn)),
            (5, struct.pack("<Q", tcb)),
        )
        mixed += [value for bit, value in parts if select >> bit & 1]
        return 0, hmac.new(root, b"".join(mixed), hashlib.sha256).digest()

    def tcb_at_most_committed(self, tcb: int) -> bool:
        asked, committed = tcb.to_bytes(8, "little"), self.committed_tcb.to_bytes(8, "little")
        return all(a <= c for a, c in zip(asked, committed, strict=True))
