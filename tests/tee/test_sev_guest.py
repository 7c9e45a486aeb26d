"""SNP_GET_DERIVED_KEY against an emulation of /dev/sev-guest that follows the kernel ABI."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

import pytest

from blindinfer._tee import sev_guest
from blindinfer._tee.sev_guest import (
    SNP_GET_DERIVED_KEY,
    SnpDerivedKeyReq,
    SnpDerivedKeyResp,
    SnpGuestRequestIoctl,
    derived_key,
    describe_exitinfo2,
    parse_fields,
)
from blindinfer.errors import BackendUnavailable
from tests.tee.sev_guest_emulator import KEY_REQ, SevGuestEmulator

MEASUREMENT = bytes.fromhex("aa" * 48)


@pytest.fixture
def guest(tmp_path: Path) -> SevGuestEmulator:
    return SevGuestEmulator(tmp_path / "sev-guest", measurement=MEASUREMENT)


def key(guest: SevGuestEmulator, **kw: object) -> bytes:
    return derived_key(device=str(guest.device), ioctl=guest, **kw)  # type: ignore[arg-type]


# --- the ABI, from include/uapi/linux/sev-guest.h ----------------------------------------------


def test_struct_layouts_match_the_kernel_header() -> None:
    assert ctypes.sizeof(SnpDerivedKeyReq) == 32
    offsets = {
        name: getattr(SnpDerivedKeyReq, name).offset for name, _ in SnpDerivedKeyReq._fields_
    }
    assert offsets == {
        "root_key_select": 0,
        "rsvd": 4,
        "guest_field_select": 8,
        "vmpl": 16,
        "guest_svn": 20,
        "tcb_version": 24,
    }
    assert ctypes.sizeof(SnpDerivedKeyResp) == 64
    assert ctypes.sizeof(SnpGuestRequestIoctl) == 32
    assert SnpGuestRequestIoctl.msg_version.offset == 0
    assert SnpGuestRequestIoctl.req_data.offset == 8  # __u64 after __u8: 7 bytes of padding
    assert SnpGuestRequestIoctl.resp_data.offset == 16
    assert SnpGuestRequestIoctl.exitinfo2.offset == 24
    assert SnpGuestRequestIoctl.fw_error.offset == 24  # bits [31:0] on little-endian x86
    assert SnpGuestRequestIoctl.vmm_error.offset == 28  # bits [63:32]
    io = SnpGuestRequestIoctl(exitinfo2=0x0000_0002_0000_0016)
    assert (io.fw_error, io.vmm_error) == (0x16, 2)


def test_ioctl_number_is_iowr_s_1() -> None:
    # _IOWR('S', 0x1, struct snp_guest_request_ioctl): dir 3 << 30 | 32 << 16 | 'S' << 8 | 1
    assert SNP_GET_DERIVED_KEY == 0xC0205301


def test_request_bytes_match_the_documented_layout(guest: SevGuestEmulator) -> None:
    key(
        guest,
        fields=("measurement", "guest_policy", "tcb_version"),
        guest_svn=0,
        tcb_version=0x0000_0000_0000_0102,
        vmpl=1,
    )
    assert guest.requests == [struct.pack("<IIQIIQ", 0, 0, 0b101001, 1, 0, 0x102)]
    assert len(guest.requests[0]) == KEY_REQ.size == 32


def test_default_request_mixes_measurement_and_policy(guest: SevGuestEmulator) -> None:
    key(guest)
    root, rsvd, select, vmpl, svn, tcb = KEY_REQ.unpack(guest.requests[0])
    assert (root, rsvd, vmpl, svn, tcb) == (0, 0, 0, 0, 0)  # VCEK, VMPL 0
    assert select == 1 << 3 | 1 << 0  # MEASUREMENT | GUEST_POLICY


def test_field_names() -> None:
    assert parse_fields("measurement, guest_policy") == 0b1001
    assert parse_fields(()) == 0
    assert parse_fields(tuple(sev_guest.FIELD_BITS)) == 0b111111
    with pytest.raises(ValueError, match="unknown SNP derived-key field 'chip_id'"):
        parse_fields(("chip_id",))


# --- what the key depends on -------------------------------------------------------------------


def test_same_inputs_same_key(tmp_path: Path, guest: SevGuestEmulator) -> None:
    first = key(guest)
    assert len(first) == 32
    assert key(guest) == first
    # another boot of the same image on the same chip
    again = SevGuestEmulator(tmp_path / "again", measurement=MEASUREMENT)
    assert key(again) == first


def test_other_measurement_other_key(tmp_path: Path, guest: SevGuestEmulator) -> None:
    other = SevGuestEmulator(tmp_path / "other", measurement=bytes.fromhex("bb" * 48))
    assert key(other) != key(guest)


def test_other_chip_other_key(tmp_path: Path, guest: SevGuestEmulator) -> None:
    other = SevGuestEmulator(tmp_path / "o", measurement=MEASUREMENT, chip_secret=b"x" * 32)
    assert key(other) != key(guest)


def test_policy_is_mixed_by_default(tmp_path: Path, guest: SevGuestEmulator) -> None:
    debug = SevGuestEmulator(tmp_path / "d", measurement=MEASUREMENT, policy=0x30000 | 1 << 19)
    assert key(debug) != key(guest)
    # ...and not when only the measurement is selected
    assert key(debug, fields=("measurement",)) == key(guest, fields=("measurement",))


def test_measurement_not_mixed_when_not_selected(tmp_path: Path, guest: SevGuestEmulator) -> None:
    other = SevGuestEmulator(tmp_path / "o", measurement=bytes(48))
    assert key(other, fields=("guest_policy",)) == key(guest, fields=("guest_policy",))


def test_tcb_floor_keeps_the_key_across_updates(tmp_path: Path, guest: SevGuestEmulator) -> None:
    floor = 0xD315000000000303
    kw = {"fields": ("measurement", "guest_policy", "tcb_version"), "tcb_version": floor}
    before = key(guest, **kw)
    updated = SevGuestEmulator(
        tmp_path / "u", measurement=MEASUREMENT, committed_tcb=0xDB18000000000404
    )
    assert key(updated, **kw) == before
    old = SevGuestEmulator(
        tmp_path / "old", measurement=MEASUREMENT, committed_tcb=0xD113000000000303
    )
    with pytest.raises(BackendUnavailable, match="status 0x16 SEV_RET_INVALID_PARAM"):
        key(old, **kw)


def test_vmrk_root(tmp_path: Path, guest: SevGuestEmulator) -> None:
    with pytest.raises(BackendUnavailable, match="INVALID_PARAM"):
        key(guest, root_key="vmrk")
    migratable = SevGuestEmulator(tmp_path / "m", measurement=MEASUREMENT, vmrk=b"v" * 32)
    assert key(migratable, root_key="vmrk") != key(migratable)


# --- errors ------------------------------------------------------------------------------------


def test_missing_device(tmp_path: Path) -> None:
    def never(fd: int, request: int, arg: object) -> None:
        raise AssertionError("ioctl without a device")

    with pytest.raises(BackendUnavailable, match=r"no .*/nope \(No such file or directory\)"):
        derived_key(device=str(tmp_path / "nope"), ioctl=never)


def test_default_device_path_is_dev_sev_guest() -> None:
    assert sev_guest.DEVICE == "/dev/sev-guest"
    if not os.path.exists("/dev/sev-guest"):
        with pytest.raises(BackendUnavailable, match="no /dev/sev-guest"):
            derived_key()


def test_firmware_transport_error_decodes_exitinfo2(guest: SevGuestEmulator) -> None:
    guest.transport_error = 0x16  # fw_error INVALID_PARAM, vmm_error 0
    with pytest.raises(BackendUnavailable) as info:
        key(guest)
    text = str(info.value)
    assert "EIO" in text
    assert "fw_error 0x16 SEV_RET_INVALID_PARAM" in text
    assert "disables its VMPCK" in text
    # the driver wiped the VMPCK: later requests fail before reaching the firmware
    with pytest.raises(BackendUnavailable, match=r"ENOTTY.*exitinfo2 0xff"):
        key(guest)


def test_host_error_decodes_vmm_error(guest: SevGuestEmulator) -> None:
    guest.transport_error = 2 << 32
    with pytest.raises(BackendUnavailable, match="vmm_error 0x2 SNP_GUEST_VMM_ERR_BUSY"):
        key(guest)


def test_no_fw_call() -> None:
    assert "SEV_RET_NO_FW_CALL" in describe_exitinfo2(0xFFFF_FFFF_FFFF_FFFF)
    assert "fw_error 0x27 SEV_RET_INVALID_KEY" in describe_exitinfo2(0x27)


def test_plain_oserror_without_exitinfo2(guest: SevGuestEmulator) -> None:
    def eperm(fd: int, request: int, arg: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    with pytest.raises(BackendUnavailable, match=r"EPERM.*exitinfo2 0 "):
        derived_key(device=str(guest.device), ioctl=eperm)


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"vmpl": 0}, "below the guest's VMPL"),
        ({"vmpl": 4}, "above VMPL 3"),
        ({"guest_svn": 2}, "above the launch SVN"),
        ({"tcb_version": 0xFF00000000000000}, "above the committed TCB"),
    ],
)
def test_firmware_status_error(tmp_path: Path, kw: dict[str, int], why: str) -> None:
    guest = SevGuestEmulator(tmp_path / "g", current_vmpl=1, launch_svn=1)
    kw.setdefault("vmpl", 1)
    with pytest.raises(BackendUnavailable, match="MSG_KEY_RSP status 0x16 SEV_RET_INVALID_PARAM"):
        key(guest, **kw)
    assert key(guest, vmpl=1, guest_svn=1)  # the valid neighbour works


def test_emulator_refuses_reserved_fields_like_the_firmware(guest: SevGuestEmulator) -> None:
    # send raw requests the production code would never build
    for raw in (
        struct.pack("<IIQIIQ", 0, 1, 0b1000, 0, 0, 0),  # rsvd set
        struct.pack("<IIQIIQ", 2, 0, 0b1000, 0, 0, 0),  # ROOT_KEY_SELECT 2
        struct.pack("<IIQIIQ", 0, 0, 1 << 6, 0, 0, 0),  # reserved GUEST_FIELD_SELECT bit
    ):
        req = ctypes.create_string_buffer(raw, 32)
        resp = SnpDerivedKeyResp()
        arg = SnpGuestRequestIoctl(
            msg_version=1, req_data=ctypes.addressof(req), resp_data=ctypes.addressof(resp)
        )
        fd = os.open(guest.device, os.O_RDWR)
        try:
            guest(fd, SNP_GET_DERIVED_KEY, arg)
        finally:
            os.close(fd)
        (status,) = struct.unpack_from("<I", bytes(resp.data))
        assert status == 0x16
        assert bytes(resp.data)[32:] == bytes(32)  # no key


def test_emulator_kernel_checks(guest: SevGuestEmulator) -> None:
    resp = SnpDerivedKeyResp()
    req = SnpDerivedKeyReq()
    fd = os.open(guest.device, os.O_RDWR)
    try:
        arg = SnpGuestRequestIoctl(
            msg_version=0, req_data=ctypes.addressof(req), resp_data=ctypes.addressof(resp)
        )
        with pytest.raises(OSError) as info:
            guest(fd, SNP_GET_DERIVED_KEY, arg)
        assert info.value.errno == errno.EINVAL and arg.exitinfo2 == 0  # not copied back
        arg.msg_version = 1
        with pytest.raises(OSError) as info:
            guest(fd, 0xC0205300, arg)  # SNP_GET_REPORT is not emulated
        assert info.value.errno == errno.ENOTTY and arg.exitinfo2 == 0xFF
    finally:
        os.close(fd)


def test_real_fcntl_ioctl_on_a_non_device(tmp_path: Path) -> None:
    """The production ioctl on a regular file: the kernel answers ENOTTY, exitinfo2 untouched."""
    plain = tmp_path / "not-a-device"
    plain.write_bytes(b"")
    with pytest.raises(BackendUnavailable, match=r"ENOTTY.*exitinfo2 0 "):
        derived_key(device=str(plain))


def test_the_key_is_not_in_error_messages(guest: SevGuestEmulator) -> None:
    good = key(guest)
    guest.transport_error = 0x16
    with pytest.raises(BackendUnavailable) as info:
        key(guest)
    assert good.hex() not in str(info.value)
