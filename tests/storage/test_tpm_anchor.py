"""The TPM NV counter anchor against a real software TPM 2.0 (swtpm) on 127.0.0.1."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blindinfer._storage.manifest import MANIFEST_FILE, Entry, RolledBack, StoreManifest
from blindinfer._storage.tpm_anchor import (
    BASE_ATTRIBUTES,
    COUNTER_ATTRIBUTES,
    TPM_ALG_SHA256,
    TPM_CC_NV_READ_PUBLIC,
    TPM_NT_ORDINARY,
    TPMA_NV_AUTHREAD,
    TPMA_NV_AUTHWRITE,
    TPMA_NV_NO_DA,
    TPMA_NV_OWNERREAD,
    TPMA_NV_OWNERWRITE,
    TPMA_NV_TPM_NT_SHIFT,
    DeviceTransport,
    NvPublic,
    Tpm,
    TpmCounterAnchor,
    TpmError,
    build_command,
    parse_anchor_spec,
    parse_response,
    password_auth,
    rc_name,
)
from blindinfer.errors import StoreError
from tests.storage.swtpm import SWTPM, SwTpm, start_swtpm

INDEX = 0x01800010
BASE = INDEX + 1
KEY = b"t" * 32

needs_swtpm = pytest.mark.skipif(
    SWTPM is None, reason="swtpm not installed (apt-get install -y swtpm swtpm-tools)"
)


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[SwTpm]:
    if SWTPM is None:
        pytest.skip("swtpm not installed (apt-get install -y swtpm swtpm-tools)")
    tpm = start_swtpm(tmp_path / "tpm")
    try:
        yield tpm
    finally:
        tpm.stop()


def anchor(sw: SwTpm, index: int = INDEX, max_increments: int = 1000) -> TpmCounterAnchor:
    return TpmCounterAnchor(index, transport=sw.transport(), max_increments=max_increments)


def ordinary(index: int, attributes: int = 0) -> NvPublic:
    attrs = attributes or (
        (TPM_NT_ORDINARY << TPMA_NV_TPM_NT_SHIFT)
        | TPMA_NV_OWNERWRITE
        | TPMA_NV_OWNERREAD
        | TPMA_NV_NO_DA
    )
    return NvPublic(index, TPM_ALG_SHA256, attrs, b"", 8)


# --- marshalling, no TPM needed -------------------------------------------------------------------


def test_commands_are_marshalled_as_part_1_section_18() -> None:
    assert build_command(TPM_CC_NV_READ_PUBLIC, (INDEX,)) == bytes.fromhex(
        "80010000000e0000016901800010"
    )
    auth = password_auth(b"pw")
    assert auth == bytes.fromhex("400000090000000002") + b"pw"
    cmd = build_command(0x134, (0x40000001, INDEX), b"", auth)
    assert cmd[:2] == b"\x80\x02" and struct.unpack(">I", cmd[2:6])[0] == len(cmd)
    assert cmd[14:18] == INDEX.to_bytes(4, "big")
    assert cmd[18:22] == len(auth).to_bytes(4, "big") and cmd[22:] == auth


def test_nv_public_round_trips() -> None:
    pub = NvPublic(INDEX, TPM_ALG_SHA256, COUNTER_ATTRIBUTES, b"\x01" * 32, 8)
    blob = pub.marshal()
    assert struct.unpack(">H", blob[:2])[0] == len(blob) - 2
    assert NvPublic.unmarshal(blob[2:]) == pub
    with pytest.raises(StoreError, match="trailing"):
        NvPublic.unmarshal(blob[2:] + b"\x00")
    with pytest.raises(StoreError, match="truncated"):
        NvPublic.unmarshal(blob[2:-1])


def test_responses_are_checked() -> None:
    ok = bytes.fromhex("80010000000c00000000") + b"\xab\xcd"
    assert parse_response(ok, "X", sessions=False) == b"\xab\xcd"
    with pytest.raises(StoreError, match="response size"):
        parse_response(ok + b"\x00", "X", sessions=False)
    with pytest.raises(StoreError, match="tag"):
        parse_response(ok, "X", sessions=True)
    err = bytes.fromhex("80010000000a0000018b")
    with pytest.raises(TpmError, match=r"TPM2_NV_Read failed: TPM_RC_HANDLE \(handle 1\)"):
        parse_response(err, "NV_Read", sessions=False)


@pytest.mark.parametrize(
    ("rc", "name"),
    [
        (0x18B, "TPM_RC_HANDLE (handle 1) [0x18b]"),
        (0x28B, "TPM_RC_HANDLE (handle 2) [0x28b]"),
        (0x9A2, "TPM_RC_BAD_AUTH (session 1) [0x9a2]"),
        (0x1C4, "TPM_RC_VALUE (parameter 1) [0x1c4]"),
        (0x14A, "TPM_RC_NV_UNINITIALIZED [0x14a]"),
        (0x14C, "TPM_RC_NV_DEFINED [0x14c]"),
        (0x920, "TPM_RC_NV_RATE [0x920]"),
        (0x921, "TPM_RC_LOCKOUT [0x921]"),
        (0x17F, "TPM_RC_UNKNOWN [0x17f]"),
    ],
)
def test_response_codes_are_named(rc: int, name: str) -> None:
    assert rc_name(rc) == name


def test_the_device_transport_writes_a_command_and_reads_one_response(tmp_path: Path) -> None:
    fifo = tmp_path / "tpm"
    os.mkfifo(fifo)  # read back what was written: the framing, without a TPM
    cmd = build_command(TPM_CC_NV_READ_PUBLIC, (INDEX,))
    assert DeviceTransport(str(fifo)).transact(cmd) == cmd
    with pytest.raises(StoreError, match=r"cannot open the TPM at .*missing"):
        DeviceTransport(str(tmp_path / "missing")).transact(cmd)
    with pytest.raises(StoreError, match="cannot open"):
        TpmCounterAnchor(INDEX, device=str(tmp_path / "missing")).read()


def test_indices_and_specs_are_validated() -> None:
    with pytest.raises(StoreError, match="not an NV index"):
        TpmCounterAnchor(0x81000001)
    with pytest.raises(StoreError, match="must differ"):
        TpmCounterAnchor(INDEX, base_index=INDEX)
    a = parse_anchor_spec("tpm:0x01800010@/dev/tpm-test")
    assert (a.index, a.base_index, a.device) == (INDEX, BASE, "/dev/tpm-test")
    assert parse_anchor_spec("tpm:25165840").device == "/dev/tpmrm0"
    for bad in ("file:/x", "tpm:", "tpm:zz", "tpm:0x1"):
        with pytest.raises(StoreError):
            parse_anchor_spec(bad)
    assert "pw" not in repr(TpmCounterAnchor(INDEX, owner_auth=b"pw"))


# --- against swtpm --------------------------------------------------------------------------------


@needs_swtpm
def test_a_fresh_tpm_reads_none_then_counts(swtpm: SwTpm) -> None:
    a = anchor(swtpm)
    assert a.read() is None
    for v in range(1, 6):
        a.advance(v)
        assert a.read() == v
    a.advance(5)  # the same version again: nothing to do
    assert a.read() == 5
    tpm = Tpm(swtpm.transport())
    assert tpm.nv_read_u64(INDEX) - tpm.nv_read_u64(BASE) == 5
    pub = tpm.nv_read_public(INDEX)
    assert pub is not None and pub.type == 1 and pub.data_size == 8


@needs_swtpm
def test_an_older_version_is_refused(swtpm: SwTpm) -> None:
    a = anchor(swtpm)
    a.advance(5)
    with pytest.raises(StoreError, match="at version 5; refusing to record the older version 3"):
        a.advance(3)
    assert a.read() == 5
    with pytest.raises(StoreError, match="negative"):
        a.advance(-1)


@needs_swtpm
def test_increments_per_call_are_bounded(swtpm: SwTpm) -> None:
    a = anchor(swtpm, max_increments=10)
    a.advance(10)
    with pytest.raises(StoreError, match="needs 11 increments, more than the 10 allowed"):
        a.advance(21)
    assert a.read() == 10  # refused before any increment
    with pytest.raises(StoreError, match="needs 1001 increments, more than the 1000"):
        anchor(swtpm).advance(1011)


@needs_swtpm
def test_other_objects_processes_and_restarts_see_the_same_value(
    swtpm: SwTpm, tmp_path: Path
) -> None:
    anchor(swtpm).advance(4)
    assert anchor(swtpm).read() == 4
    code = (
        "import sys\n"
        "from blindinfer._storage.tpm_anchor import TcpTransport, TpmCounterAnchor\n"
        "t = TcpTransport('127.0.0.1', int(sys.argv[2]))\n"
        "a = TpmCounterAnchor(int(sys.argv[1]), transport=t)\n"
        "print(a.read()); a.advance(7); print(a.read())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(INDEX), str(swtpm.port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == ["4", "7"]
    assert anchor(swtpm).read() == 7
    swtpm.stop()  # the NV state survives a TPM restart
    again = start_swtpm(swtpm.state_dir)
    try:
        assert anchor(again).read() == 7
    finally:
        again.stop()


@needs_swtpm
def test_a_recreated_counter_starts_above_the_old_one_and_the_anchor_still_counts_from_zero(
    swtpm: SwTpm,
) -> None:
    a = anchor(swtpm)
    a.advance(5)
    tpm = Tpm(swtpm.transport())
    old = tpm.nv_read_u64(INDEX)
    tpm.nv_undefine_space(INDEX)
    tpm.nv_undefine_space(BASE)
    assert a.read() is None
    a.advance(1)
    assert a.read() == 1
    assert tpm.nv_read_u64(INDEX) > old  # Part 3 §31.7: never below any deleted counter


@needs_swtpm
def test_an_interrupted_setup_resumes(swtpm: SwTpm) -> None:
    tpm = Tpm(swtpm.transport())
    tpm.nv_define_space(NvPublic(INDEX, TPM_ALG_SHA256, COUNTER_ATTRIBUTES, b"", 8))
    a = anchor(swtpm)
    assert a.read() is None  # defined, never incremented
    tpm.nv_increment(INDEX)
    assert a.read() is None  # incremented, no base yet
    tpm.nv_define_space(NvPublic(BASE, TPM_ALG_SHA256, BASE_ATTRIBUTES, b"", 8))
    assert a.read() is None  # base defined, not written
    a.advance(2)
    assert a.read() == 2
    # a base written but never locked is locked on the next read, and then final
    tpm.nv_undefine_space(BASE)
    tpm.nv_define_space(NvPublic(BASE, TPM_ALG_SHA256, BASE_ATTRIBUTES, b"", 8))
    tpm.nv_write(BASE, struct.pack(">Q", tpm.nv_read_u64(INDEX) - 3))
    assert a.read() == 3
    with pytest.raises(TpmError, match="TPM_RC_NV_LOCKED"):
        tpm.nv_write(BASE, struct.pack(">Q", 0))


@needs_swtpm
def test_a_wrong_index_is_refused(swtpm: SwTpm) -> None:
    tpm = Tpm(swtpm.transport())
    tpm.nv_define_space(ordinary(INDEX))
    tpm.nv_write(INDEX, b"\x00" * 8)
    with pytest.raises(StoreError, match=r"0x1800010 is not a counter \(TPM_NT 0\)"):
        anchor(swtpm).read()
    with pytest.raises(StoreError, match="not a counter"):
        anchor(swtpm).advance(1)
    # NV_Increment on it: the TPM itself refuses, with the code named
    with pytest.raises(TpmError, match=r"TPM2_NV_Increment failed: TPM_RC_ATTRIBUTES"):
        tpm.nv_increment(INDEX)

    # a counter that its own (empty) auth value may increment
    other = 0x01800020
    auth_counter = (1 << TPMA_NV_TPM_NT_SHIFT) | TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD
    tpm.nv_define_space(NvPublic(other, TPM_ALG_SHA256, auth_counter | TPMA_NV_NO_DA, b"", 8))
    with pytest.raises(StoreError, match="AUTHWRITE/POLICYWRITE"):
        anchor(swtpm, other).read()

    # a base index that is not write-once
    third = 0x01800030
    anchor(swtpm, third).advance(1)
    tpm.nv_undefine_space(third + 1)
    tpm.nv_define_space(ordinary(third + 1))
    with pytest.raises(StoreError, match="not an ordinary write-once index"):
        anchor(swtpm, third).read()


@needs_swtpm
def test_tpm_errors_name_the_response_code_and_never_the_secret(swtpm: SwTpm) -> None:
    tpm = Tpm(swtpm.transport())
    assert tpm.nv_read_public(INDEX) is None  # undefined: handled, not an error
    with pytest.raises(TpmError, match=r"TPM2_NV_Read failed: TPM_RC_HANDLE \(handle 2\)"):
        tpm.nv_read(INDEX, 8)
    tpm.nv_define_space(NvPublic(INDEX, TPM_ALG_SHA256, COUNTER_ATTRIBUTES, b"", 8))
    with pytest.raises(TpmError, match="TPM_RC_NV_UNINITIALIZED"):
        tpm.nv_read(INDEX, 8)
    with pytest.raises(TpmError, match="TPM_RC_NV_DEFINED"):
        tpm.nv_define_space(NvPublic(INDEX, TPM_ALG_SHA256, COUNTER_ATTRIBUTES, b"", 8))
    secret = b"not-the-owner-password"
    with pytest.raises(StoreError) as info:
        TpmCounterAnchor(BASE + 5, transport=swtpm.transport(), owner_auth=secret).advance(1)
    message = str(info.value)
    assert "TPM2_NV_DefineSpace failed: TPM_RC_BAD_AUTH (session 1)" in message
    assert secret.decode() not in message and secret.hex() not in message


# --- the manifest, anchored in the TPM (mirrors test_manifest.py's FileAnchor test) ---------------


def add(mid: str, name: str) -> Callable[[dict[str, Entry], int], None]:
    def change(entries: dict[str, Entry], version: int) -> None:
        entries[mid] = Entry("ab" * 32, name, version)

    return change


@needs_swtpm
def test_an_old_manifest_is_refused_below_the_tpm_anchor(swtpm: SwTpm, tmp_path: Path) -> None:
    store = tmp_path / "store"
    m = StoreManifest(store, KEY, anchor(swtpm))
    m.update(add("a", "x"))
    old = (store / MANIFEST_FILE).read_bytes()
    m.update(add("b", "y"))
    assert anchor(swtpm).read() == 2
    (store / MANIFEST_FILE).write_bytes(old)  # the operator restores version 1
    with pytest.raises(RolledBack, match="version anchor says 2 was written"):
        StoreManifest(store, KEY, anchor(swtpm)).read()
    with pytest.raises(RolledBack):  # nor may a writer build on it
        StoreManifest(store, KEY, anchor(swtpm)).update(add("c", "z"))
    assert anchor(swtpm).read() == 2
    (store / MANIFEST_FILE).unlink()  # deleting it is no better
    with pytest.raises(RolledBack, match="missing"):
        StoreManifest(store, KEY, anchor(swtpm)).read()
    with pytest.raises(RolledBack):
        StoreManifest(store, KEY, anchor(swtpm)).create({})


@needs_swtpm
def test_the_current_manifest_starts_and_keeps_advancing_the_tpm(
    swtpm: SwTpm, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = StoreManifest(store, KEY, anchor(swtpm)).create({})
    assert first is not None and anchor(swtpm).read() == 1
    m = StoreManifest(store, KEY, anchor(swtpm))
    for i in range(3):
        m.update(add(str(i), f"n{i}"))
    current = StoreManifest(store, KEY, anchor(swtpm)).read()
    assert current is not None and current.version == 4 == anchor(swtpm).read()
