"""A :class:`~blindinfer._storage.manifest.VersionAnchor` in a TPM 2.0 NV counter.

A TPM NV index of type counter (``TPM_NT_COUNTER``) only ever increases: no command lowers it,
and a counter that is deleted and defined again starts above the highest value any deleted
counter reached (TPM 2.0 Library Part 3 §31.7 TPM2_NV_Increment, "the TPM will initialize the
counter to the largest count value that has been in any NV counter"). That makes it a version
anchor for the store manifest, provided the TPM itself is inside the trust boundary (a vTPM run
by the TEE: SVSM, TDX vTPM, a paravisor) and its state is not restorable by the host.

Because of that initialisation rule a new counter may start anywhere at or above 1, so the
anchor keeps a second, tiny NV index beside it (``base_index``, default ``index + 1``): an
ordinary 8-byte index written once with the counter's value at creation and then write-locked
for good (``TPMA_NV_WRITEDEFINE`` + TPM2_NV_WriteLock). The anchored version is
``counter - base``.

This module speaks the TPM 2.0 command/response byte format itself (Part 1 §18; Part 2 for the
structures; Part 3 for the commands) over a :class:`Transport`: the ``/dev/tpmrm0`` character
device in production (write one command, read one response), or a TCP socket to ``swtpm`` in
tests (swtpm's ``--server type=tcp`` accepts the raw command bytes, the same as the device).
Every command is authorised with the owner hierarchy through a password session (TPM_RS_PW,
Part 1 §19.8.4; Part 2 §10.13.2 TPMS_AUTH_COMMAND); the owner auth is never put in a message.

Attributes, and why (Part 2 §13.4 TPMA_NV):

- counter: ``TPM_NT_COUNTER | OWNERWRITE | OWNERREAD | NO_DA``. Owner, not index auth: an
  index auth value would be one more secret to keep; with owner write only the owner hierarchy
  may increment (an increment is never a rollback, at worst a refusal to start). No
  ``ORDERLY``: each increment is written through to NV before the TPM answers, so an advanced
  anchor survives power loss. Deletion needs the owner (``PLATFORMCREATE``/``POLICY_DELETE``
  need platform authorisation, which an OS does not hold; an index provisioned that way is
  accepted, it is stronger).
- base: ``TPM_NT_ORDINARY | OWNERWRITE | OWNERREAD | NO_DA | WRITEDEFINE``, locked after
  its one write.

``read()`` refuses an index of another type, size or with index-auth / policy write.

Section numbers are those of the TPM 2.0 Library specification, revision 1.59 (the numbering of
Part 3 chapter 31 shifts a little between revisions; the command names do not).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from blindinfer.errors import StoreError

# --- Part 2 §6 constants --------------------------------------------------------------------------

TPM_ST_NO_SESSIONS = 0x8001  # Part 2 §6.9 TPM_ST
TPM_ST_SESSIONS = 0x8002

# Part 2 §6.5.2 TPM_CC
TPM_CC_NV_UNDEFINE_SPACE = 0x00000122
TPM_CC_NV_DEFINE_SPACE = 0x0000012A
TPM_CC_NV_INCREMENT = 0x00000134
TPM_CC_NV_WRITE = 0x00000137
TPM_CC_NV_WRITE_LOCK = 0x00000138
TPM_CC_NV_READ = 0x0000014E
TPM_CC_NV_READ_PUBLIC = 0x00000169

TPM_RH_OWNER = 0x40000001  # Part 2 §7.4 TPM_RH
TPM_RS_PW = 0x40000009  # Part 2 §7.4: the password authorisation session
TPM_ALG_SHA256 = 0x000B  # Part 2 §6.3 TPM_ALG_ID

# Part 2 §13.4 TPMA_NV bits
TPMA_NV_PPWRITE = 1 << 0
TPMA_NV_OWNERWRITE = 1 << 1
TPMA_NV_AUTHWRITE = 1 << 2
TPMA_NV_POLICYWRITE = 1 << 3
TPMA_NV_TPM_NT_SHIFT = 4  # bits 7:4, Part 2 §13.2 TPM_NT
TPMA_NV_TPM_NT_MASK = 0xF << TPMA_NV_TPM_NT_SHIFT
TPMA_NV_POLICY_DELETE = 1 << 10
TPMA_NV_WRITELOCKED = 1 << 11
TPMA_NV_WRITEDEFINE = 1 << 13
TPMA_NV_OWNERREAD = 1 << 17
TPMA_NV_AUTHREAD = 1 << 18
TPMA_NV_POLICYREAD = 1 << 19
TPMA_NV_NO_DA = 1 << 25
TPMA_NV_ORDERLY = 1 << 26
TPMA_NV_WRITTEN = 1 << 29
TPMA_NV_PLATFORMCREATE = 1 << 30

TPM_NT_ORDINARY = 0x0  # Part 2 §13.2 TPM_NT
TPM_NT_COUNTER = 0x1

COUNTER_ATTRIBUTES = (
    (TPM_NT_COUNTER << TPMA_NV_TPM_NT_SHIFT)
    | TPMA_NV_OWNERWRITE
    | TPMA_NV_OWNERREAD
    | TPMA_NV_NO_DA
)
BASE_ATTRIBUTES = (
    (TPM_NT_ORDINARY << TPMA_NV_TPM_NT_SHIFT)
    | TPMA_NV_OWNERWRITE
    | TPMA_NV_OWNERREAD
    | TPMA_NV_NO_DA
    | TPMA_NV_WRITEDEFINE
)
_WRITE_BY_INDEX_AUTH = TPMA_NV_AUTHWRITE | TPMA_NV_POLICYWRITE

NV_INDEX_FIRST = 0x01000000  # Part 2 §7.4 / §13.1: NV index handles are 0x01xxxxxx
NV_INDEX_LAST = 0x01FFFFFF
MAX_INCREMENTS = 1000  # per advance(): a bound on NV wear and on time spent in one write
MAX_RESPONSE = 4096  # TPM responses are bounded by TPM_PT_MAX_RESPONSE_SIZE (4096 in practice)

# --- response codes (Part 2 §6.6 TPM_RC) ----------------------------------------------------------

TPM_RC_SUCCESS = 0x000
RC_VER1 = 0x100
RC_FMT1 = 0x080
RC_WARN = 0x900

_RC_NAMES: dict[int, str] = {
    # format-one errors (RC_FMT1 + n), Part 2 §6.6.3
    0x081: "TPM_RC_ASYMMETRIC",
    0x082: "TPM_RC_ATTRIBUTES",
    0x083: "TPM_RC_HASH",
    0x084: "TPM_RC_VALUE",
    0x085: "TPM_RC_HIERARCHY",
    0x087: "TPM_RC_KEY_SIZE",
    0x08A: "TPM_RC_TYPE",
    0x08B: "TPM_RC_HANDLE",
    0x08D: "TPM_RC_RANGE",
    0x08E: "TPM_RC_AUTH_FAIL",
    0x08F: "TPM_RC_NONCE",
    0x090: "TPM_RC_PP",
    0x095: "TPM_RC_SIZE",
    0x097: "TPM_RC_TAG",
    0x09A: "TPM_RC_INSUFFICIENT",
    0x09D: "TPM_RC_POLICY_FAIL",
    0x09F: "TPM_RC_INTEGRITY",
    0x0A1: "TPM_RC_RESERVED_BITS",
    0x0A2: "TPM_RC_BAD_AUTH",
    # format-zero errors (RC_VER1 + n)
    0x100: "TPM_RC_INITIALIZE",
    0x101: "TPM_RC_FAILURE",
    0x103: "TPM_RC_SEQUENCE",
    0x120: "TPM_RC_DISABLED",
    0x124: "TPM_RC_AUTH_TYPE",
    0x125: "TPM_RC_AUTH_MISSING",
    0x126: "TPM_RC_POLICY",
    0x12F: "TPM_RC_AUTH_UNAVAILABLE",
    0x130: "TPM_RC_REBOOT",
    0x142: "TPM_RC_COMMAND_SIZE",
    0x143: "TPM_RC_COMMAND_CODE",
    0x144: "TPM_RC_AUTHSIZE",
    0x146: "TPM_RC_NV_RANGE",
    0x147: "TPM_RC_NV_SIZE",
    0x148: "TPM_RC_NV_LOCKED",
    0x149: "TPM_RC_NV_AUTHORIZATION",
    0x14A: "TPM_RC_NV_UNINITIALIZED",
    0x14B: "TPM_RC_NV_SPACE",
    0x14C: "TPM_RC_NV_DEFINED",
    0x153: "TPM_RC_NEEDS_TEST",
    # warnings (RC_WARN + n)
    0x902: "TPM_RC_OBJECT_MEMORY",
    0x903: "TPM_RC_SESSION_MEMORY",
    0x904: "TPM_RC_MEMORY",
    0x907: "TPM_RC_LOCALITY",
    0x908: "TPM_RC_YIELDED",
    0x909: "TPM_RC_CANCELED",
    0x90A: "TPM_RC_TESTING",
    0x920: "TPM_RC_NV_RATE",
    0x921: "TPM_RC_LOCKOUT",
    0x922: "TPM_RC_RETRY",
    0x923: "TPM_RC_NV_UNAVAILABLE",
}


def rc_name(rc: int) -> str:
    """Decode a response code (Part 2 §6.6): its TPM_RC_* name, and for a format-one code the
    handle, session or parameter it refers to; unknown codes as hex."""
    if rc & RC_FMT1:  # format one: bits 5:0 error, bit 6 P, bits 11:8 N (Part 2 §6.6.2)
        base = RC_FMT1 + (rc & 0x3F)
        n = (rc >> 8) & 0xF
        if rc & 0x40:
            where = f" (parameter {n})"
        elif n & 0x8:
            where = f" (session {n & 0x7})"
        elif n:
            where = f" (handle {n})"
        else:
            where = ""
        return f"{_RC_NAMES.get(base, f'TPM_RC_{base:#05x}')}{where} [{rc:#x}]"
    return f"{_RC_NAMES.get(rc, 'TPM_RC_UNKNOWN')} [{rc:#x}]"


class TpmError(StoreError):
    """A TPM command failed; ``rc`` is its response code."""

    def __init__(self, command: str, rc: int) -> None:
        super().__init__(f"TPM2_{command} failed: {rc_name(rc)}")
        self.command = command
        self.rc = rc

    @property
    def base(self) -> int:
        """The code without its handle/parameter/session number."""
        return RC_FMT1 + (self.rc & 0x3F) if self.rc & RC_FMT1 else self.rc


# --- transports -----------------------------------------------------------------------------------


class Transport(Protocol):
    """Carries one TPM command and returns its response (Part 1 §18: a byte string each)."""

    def transact(self, command: bytes) -> bytes: ...


def _response_length(header: bytes) -> int:
    if len(header) < 10:
        raise StoreError("TPM response truncated")
    (size,) = struct.unpack(">I", header[2:6])  # Part 1 §18.8: tag u16, responseSize u32, rc
    if not 10 <= size <= MAX_RESPONSE:
        raise StoreError(f"TPM response has an impossible size ({size})")
    return int(size)


class DeviceTransport:
    """The kernel's TPM character device (``/dev/tpmrm0``, the resource-managed one): one
    ``write`` of a whole command, one ``read`` of the whole response."""

    def __init__(self, path: str = "/dev/tpmrm0") -> None:
        self.path = path

    def transact(self, command: bytes) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot open the TPM at {self.path}: {exc.strerror}") from None
        try:
            if os.write(fd, command) != len(command):
                raise StoreError(f"{self.path}: short write of a TPM command")
            response = os.read(fd, MAX_RESPONSE)
        except OSError as exc:
            raise StoreError(f"TPM at {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(response) != _response_length(response):
            raise StoreError(f"{self.path}: TPM response length does not match its header")
        return response


class TcpTransport:
    """swtpm's ``--server type=tcp`` data channel: the raw command bytes in, the raw response
    out (swtpm would also take the MS-simulator TPM_SEND_COMMAND framing, detected by its first
    word, but the raw form is what the device speaks, so one marshalling serves both). One
    connection per command, so several anchors (or processes) can share one swtpm."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def transact(self, command: bytes) -> bytes:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                s.sendall(command)
                header = self._recv(s, 10)
                return header + self._recv(s, _response_length(header) - 10)
        except OSError as exc:
            raise StoreError(f"TPM at {self.host}:{self.port}: {exc}") from None

    @staticmethod
    def _recv(s: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise StoreError("TPM closed the connection mid-response")
            buf += chunk
        return buf


# --- marshalling (Part 2 §4 base types are big-endian; §10.4 TPM2B = u16 size + bytes) ------------


def _u16(v: int) -> bytes:
    return struct.pack(">H", v)


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


def _tpm2b(data: bytes) -> bytes:
    return _u16(len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise StoreError("TPM response truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def tpm2b(self) -> bytes:
        return self.take(self.u16())


def password_auth(password: bytes) -> bytes:
    """A TPMS_AUTH_COMMAND for the password session (Part 2 §10.13.2; Part 1 §19.8.4):
    sessionHandle TPM_RS_PW, an empty nonce, sessionAttributes 0, hmac = the password."""
    return _u32(TPM_RS_PW) + _tpm2b(b"") + b"\x00" + _tpm2b(password)


def build_command(
    code: int, handles: tuple[int, ...], params: bytes = b"", auth: bytes | None = None
) -> bytes:
    """Part 1 §18.7 command structure: header (tag, commandSize, commandCode), handle area,
    then with sessions an authorizationSize-prefixed auth area, then the parameters."""
    body = b"".join(_u32(h) for h in handles)
    if auth is not None:
        body += _u32(len(auth)) + auth
    body += params
    tag = TPM_ST_NO_SESSIONS if auth is None else TPM_ST_SESSIONS
    return _u16(tag) + _u32(10 + len(body)) + _u32(code) + body


def parse_response(response: bytes, command: str, *, sessions: bool) -> bytes:
    """Part 1 §18.8 response structure: returns the response parameters (no response handles
    in the commands used here); a non-zero responseCode raises :class:`TpmError`."""
    r = _Reader(response)
    tag, size, rc = r.u16(), r.u32(), r.u32()
    if size != len(response):
        raise StoreError(f"TPM2_{command}: response size {size} != {len(response)} received")
    if rc != TPM_RC_SUCCESS:
        raise TpmError(command, rc)
    if not sessions:
        if tag != TPM_ST_NO_SESSIONS:
            raise StoreError(f"TPM2_{command}: unexpected response tag {tag:#x}")
        return response[10:]
    if tag != TPM_ST_SESSIONS:
        raise StoreError(f"TPM2_{command}: unexpected response tag {tag:#x}")
    return r.take(r.u32())  # parameterSize, then the parameters; the auth area follows


@dataclass(frozen=True)
class NvPublic:
    """TPMS_NV_PUBLIC (Part 2 §13.5)."""

    index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    data_size: int

    @property
    def type(self) -> int:
        return (self.attributes & TPMA_NV_TPM_NT_MASK) >> TPMA_NV_TPM_NT_SHIFT

    @property
    def written(self) -> bool:
        return bool(self.attributes & TPMA_NV_WRITTEN)

    def marshal(self) -> bytes:
        """As a TPM2B_NV_PUBLIC (Part 2 §13.6)."""
        inner = (
            _u32(self.index)
            + _u16(self.name_alg)
            + _u32(self.attributes)
            + _tpm2b(self.auth_policy)
            + _u16(self.data_size)
        )
        return _tpm2b(inner)

    @classmethod
    def unmarshal(cls, data: bytes) -> NvPublic:
        r = _Reader(data)
        index, alg, attrs = r.u32(), r.u16(), r.u32()
        policy, size = r.tpm2b(), r.u16()
        if r.pos != len(data):
            raise StoreError("TPM2B_NV_PUBLIC has trailing bytes")
        return cls(index, alg, attrs, policy, size)


# --- the commands ---------------------------------------------------------------------------------


class Tpm:
    """The few NV commands the anchor needs, authorised by the owner hierarchy."""

    def __init__(self, transport: Transport, owner_auth: bytes = b"") -> None:
        self.transport = transport
        self._owner_auth = owner_auth

    def _call(self, name: str, code: int, handles: tuple[int, ...], params: bytes = b"") -> bytes:
        cmd = build_command(code, handles, params, password_auth(self._owner_auth))
        return parse_response(self.transport.transact(cmd), name, sessions=True)

    def nv_read_public(self, index: int) -> NvPublic | None:
        """Part 3 §31.5 TPM2_NV_ReadPublic (no authorisation). None when not defined."""
        cmd = build_command(TPM_CC_NV_READ_PUBLIC, (index,))
        try:
            r = _Reader(
                parse_response(self.transport.transact(cmd), "NV_ReadPublic", sessions=False)
            )
        except TpmError as exc:
            if exc.base == 0x08B:  # TPM_RC_HANDLE: no such index
                return None
            raise
        public = NvPublic.unmarshal(r.tpm2b())
        r.tpm2b()  # nvName
        if public.index != index:
            raise StoreError(f"TPM answered for NV index {public.index:#x}, not {index:#x}")
        return public

    def nv_define_space(self, public: NvPublic) -> None:
        """Part 3 §31.3 TPM2_NV_DefineSpace: authHandle TPM_RH_OWNER; parameters auth
        (TPM2B_AUTH, empty: the index is owner-authorised) and publicInfo."""
        self._call(
            "NV_DefineSpace",
            TPM_CC_NV_DEFINE_SPACE,
            (TPM_RH_OWNER,),
            _tpm2b(b"") + public.marshal(),
        )

    def nv_undefine_space(self, index: int) -> None:
        """Part 3 §31.4 TPM2_NV_UndefineSpace (used by tests and by hand)."""
        self._call("NV_UndefineSpace", TPM_CC_NV_UNDEFINE_SPACE, (TPM_RH_OWNER, index))

    def nv_increment(self, index: int) -> None:
        """Part 3 §31.7 TPM2_NV_Increment: authHandle, nvIndex; no parameters."""
        self._call("NV_Increment", TPM_CC_NV_INCREMENT, (TPM_RH_OWNER, index))

    def nv_write(self, index: int, data: bytes, offset: int = 0) -> None:
        """Part 3 §31.6 TPM2_NV_Write: data (TPM2B_MAX_NV_BUFFER), offset (u16)."""
        self._call("NV_Write", TPM_CC_NV_WRITE, (TPM_RH_OWNER, index), _tpm2b(data) + _u16(offset))

    def nv_write_lock(self, index: int) -> None:
        """Part 3 §31.10 TPM2_NV_WriteLock (with TPMA_NV_WRITEDEFINE: until undefined)."""
        self._call("NV_WriteLock", TPM_CC_NV_WRITE_LOCK, (TPM_RH_OWNER, index))

    def nv_read(self, index: int, size: int, offset: int = 0) -> bytes:
        """Part 3 §31.12 TPM2_NV_Read: parameters size, offset (u16 each); returns the data
        (TPM2B_MAX_NV_BUFFER)."""
        params = self._call(
            "NV_Read", TPM_CC_NV_READ, (TPM_RH_OWNER, index), _u16(size) + _u16(offset)
        )
        data = _Reader(params).tpm2b()
        if len(data) != size:
            raise StoreError(f"TPM2_NV_Read returned {len(data)} bytes, not {size}")
        return data

    def nv_read_u64(self, index: int) -> int:
        """A counter's value: 8 bytes, big-endian (Part 2 §13.2, TPM_NT_COUNTER)."""
        return int(struct.unpack(">Q", self.nv_read(index, 8))[0])


# --- the anchor -----------------------------------------------------------------------------------


def _check_index(index: int, what: str) -> None:
    if not NV_INDEX_FIRST <= index <= NV_INDEX_LAST:
        raise StoreError(f"{what} {index:#x} is not an NV index handle (0x01000000-0x01ffffff)")


class TpmCounterAnchor:
    """The manifest version anchored in TPM NV counter ``index`` (see the module docstring).

    ``read()``: None until the first ``advance``; ``advance(v)`` increments the counter until
    it says ``v`` (at most :data:`MAX_INCREMENTS` per call; never down)."""

    def __init__(
        self,
        index: int,
        *,
        device: str = "/dev/tpmrm0",
        transport: Transport | None = None,
        base_index: int | None = None,
        owner_auth: bytes = b"",
        max_increments: int = MAX_INCREMENTS,
    ) -> None:
        _check_index(index, "TPM anchor index")
        self.index = index
        self.base_index = index + 1 if base_index is None else base_index
        _check_index(self.base_index, "TPM anchor base index")
        if self.base_index == index:
            raise StoreError("the TPM anchor's base index must differ from its counter index")
        self.device = device
        self.max_increments = max_increments
        self.tpm = Tpm(transport if transport is not None else DeviceTransport(device), owner_auth)

    def __repr__(self) -> str:  # never the owner auth
        return f"TpmCounterAnchor({self.index:#010x}, base={self.base_index:#010x})"

    # --- checks ----------------------------------------------------------------------------

    def _counter_public(self) -> NvPublic | None:
        pub = self.tpm.nv_read_public(self.index)
        if pub is None:
            return None
        where = f"TPM NV index {self.index:#x}"
        if pub.type != TPM_NT_COUNTER:
            raise StoreError(f"{where} is not a counter (TPM_NT {pub.type}); refusing it as anchor")
        _check_owner_only(pub, where)
        return pub

    def _base_public(self) -> NvPublic | None:
        pub = self.tpm.nv_read_public(self.base_index)
        if pub is None:
            return None
        where = f"TPM NV index {self.base_index:#x} (the anchor's base)"
        if pub.type != TPM_NT_ORDINARY or not pub.attributes & TPMA_NV_WRITEDEFINE:
            raise StoreError(f"{where} is not an ordinary write-once index; refusing it")
        _check_owner_only(pub, where)
        return pub

    def _base(self) -> int | None:
        """The counter value at creation, once written and locked; None before."""
        pub = self._base_public()
        if pub is None or not pub.written:
            return None
        if not pub.attributes & TPMA_NV_WRITELOCKED:
            # written but the lock did not happen (interrupted): lock it now, it is final
            self.tpm.nv_write_lock(self.base_index)
        return self.tpm.nv_read_u64(self.base_index)

    # --- VersionAnchor ---------------------------------------------------------------------

    def read(self) -> int | None:
        counter = self._counter_public()
        if counter is None or not counter.written:
            return None
        base = self._base()
        if base is None:
            # interrupted setup: the counter exists but no version was ever anchored on it
            return None
        value = self.tpm.nv_read_u64(self.index)
        if value < base:
            raise StoreError(
                f"TPM NV counter {self.index:#x} ({value}) is below its recorded base ({base}): "
                "the base index was replaced; refusing the anchor"
            )
        return value - base

    def advance(self, version: int) -> None:
        if version < 0:
            raise StoreError(f"cannot anchor a negative version ({version})")
        base = self._setup()
        value = self.tpm.nv_read_u64(self.index)
        current = value - base
        if version < current:
            raise StoreError(
                f"TPM anchor {self.index:#x} is at version {current}; refusing to record the "
                f"older version {version} (an NV counter never goes down)"
            )
        steps = version - current
        if steps > self.max_increments:
            raise StoreError(
                f"TPM anchor {self.index:#x} is at version {current}: reaching {version} needs "
                f"{steps} increments, more than the {self.max_increments} allowed per write"
            )
        for _ in range(steps):
            self.tpm.nv_increment(self.index)
        after = self.tpm.nv_read_u64(self.index) - base
        if after != version:
            raise StoreError(
                f"TPM anchor {self.index:#x} reads {after} after advancing to {version} "
                "(another writer of the same index?)"
            )

    def _setup(self) -> int:
        """Define the counter and its base on first use; return the base (idempotent, and
        resumable after an interruption at any step)."""
        counter = self._counter_public()
        if counter is None:
            self.tpm.nv_define_space(
                NvPublic(self.index, TPM_ALG_SHA256, COUNTER_ATTRIBUTES, b"", 8)
            )
            counter = self._counter_public()
            assert counter is not None
        base = self._base()
        if base is not None:
            if not counter.written:
                raise StoreError(
                    f"TPM NV counter {self.index:#x} was never incremented but has a base "
                    "recorded; refusing the anchor"
                )
            return base
        if not counter.written:
            # First increment: the TPM starts it at the highest value any deleted counter held,
            # plus one (Part 3 §31.7). That value is version 0 of this anchor.
            self.tpm.nv_increment(self.index)
        # No version is ever anchored (incremented past the first) before the base is locked,
        # so the counter's value now is the base.
        value = self.tpm.nv_read_u64(self.index)
        if self._base_public() is None:
            self.tpm.nv_define_space(
                NvPublic(self.base_index, TPM_ALG_SHA256, BASE_ATTRIBUTES, b"", 8)
            )
        self.tpm.nv_write(self.base_index, struct.pack(">Q", value))
        self.tpm.nv_write_lock(self.base_index)
        return value


def _check_owner_only(pub: NvPublic, where: str) -> None:
    """Written only with the owner's authorisation, never the index's own auth value or a
    policy (Part 2 §13.4); 8 bytes."""
    if pub.data_size != 8:
        raise StoreError(f"{where} holds {pub.data_size} bytes, not 8; refusing it")
    if pub.attributes & _WRITE_BY_INDEX_AUTH:
        raise StoreError(
            f"{where} may be written with its own auth value or a policy "
            "(TPMA_NV_AUTHWRITE/POLICYWRITE); refusing it: only owner-written indices anchor"
        )
    if not pub.attributes & TPMA_NV_OWNERWRITE:
        raise StoreError(f"{where} is not owner-written (TPMA_NV_OWNERWRITE); refusing it")
    if not pub.attributes & TPMA_NV_OWNERREAD:
        raise StoreError(f"{where} is not owner-readable (TPMA_NV_OWNERREAD); refusing it")


def parse_anchor_spec(
    spec: str, transport_for: Callable[[str], Transport] | None = None
) -> TpmCounterAnchor:
    """``tpm:0x01800010[@/dev/tpmrm0]`` -> an anchor (for the CLI/config to wire)."""
    kind, _, rest = spec.partition(":")
    if kind != "tpm" or not rest:
        raise StoreError(f"store anchor {spec!r}: expected tpm:<nv index>[@<device>]")
    index_s, _, device = rest.partition("@")
    try:
        index = int(index_s, 0)
    except ValueError:
        raise StoreError(f"store anchor {spec!r}: {index_s!r} is not an NV index") from None
    device = device or "/dev/tpmrm0"
    transport = transport_for(device) if transport_for is not None else None
    return TpmCounterAnchor(index, device=device, transport=transport)
