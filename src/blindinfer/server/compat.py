"""BlindAI 0.6 compatibility: the unmodified ``blindai==0.6.3`` Python client works against us.

Three listeners, as the 0.6.3 client expects them (ports from ``settings.blindai_ports``):

- unattested (9923): ``GET /`` -> CBOR byte string holding our TLS certificate (DER), with a
  ``Server`` header that contains "mock" when the TEE is simulated (the client refuses a mock
  unless it runs in simulation mode); ``GET /quote`` and ``GET /collateral`` -> the SGX quote and
  its collateral (a map with the fields of the client's ``Collateral`` dataclass). The client
  speaks plain HTTP here with ``hazmat_http_on_unattested_port=True`` and HTTPS otherwise: one port
  serves both by looking at the first byte of each connection (0x16 starts a TLS handshake record,
  RFC 8446 section 5.1), see :func:`sniffing_protocol`.
- attested (9924, HTTPS): ``POST /run``.
- management (9925, HTTPS, no authentication in BlindAI 0.6, so loopback only by default):
  ``POST /upload`` and ``POST /delete``.

Bodies are CBOR (RFC 8949). The upload carries the model as an *array of small unsigned
integers*; :class:`UploadDecoder` decodes that shape incrementally, with numpy, into one
preallocated buffer, so a 100 MB model never becomes 100 million Python ints. Errors are CBOR text
bodies with the status of the matching :class:`~blindinfer.errors.ServerError` (4xx for the
client's mistakes; the 0.6.3 client raises ``requests.HTTPError`` for any of them).

The model registry is the one the native API uses: a model uploaded through either interface can
be run or deleted through either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import re
import ssl
import struct
from asyncio import sslproto
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import cbor2
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blindinfer import __version__
from blindinfer.attestation.claims import Evidence
from blindinfer.engine.registry import LoadedModel, ModelInfo, ModelRegistry, check_name
from blindinfer.errors import (
    AttestationError,
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
)
from blindinfer.server.app import read_body
from blindinfer.server.state import Listener, ServerState
from blindinfer.wire.tensors import datatype_of, from_wire_bytes, to_wire_bytes

log = logging.getLogger("blindinfer.compat")

# BlindAI 0.6 ``ModelDatumType`` codes, in the client's enum order (blindai/client.py), as OIP
# datatypes, and the names the client accepts back (``ModelDatumType[name]``).
DATUM_TYPES: Final[tuple[str, ...]] = (
    "FP32", "FP64", "INT32", "INT64", "UINT32", "UINT64", "UINT8", "UINT16", "INT8", "INT16",
    "BOOL",
)  # fmt: skip
DATUM_NAMES: Final[tuple[str, ...]] = (
    "F32", "F64", "I32", "I64", "U32", "U64", "U8", "U16", "I8", "I16", "Bool",
)  # fmt: skip
_DATUM_BY_DATATYPE: Final[dict[str, int]] = {dt: i for i, dt in enumerate(DATUM_TYPES)}
_DATUM_BY_NAME: Final[dict[str, int]] = {n.upper(): i for i, n in enumerate(DATUM_NAMES)}

CBOR_CONTENT_TYPE = "application/cbor"
SMALL_ITEM_LIMIT = 64 * 1024  # any field but the model itself
BODY_OVERHEAD = 1024 * 1024  # what an upload body may hold beyond the model's 1-2 bytes per byte
MAX_SMALL_DEPTH = 8
MAX_DIMS = 32
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
TLS_HANDSHAKE = 0x16  # TLS record content type "handshake" (RFC 8446 section 5.1)


# --- CBOR: small items (RFC 8949 section 3) ------------------------------------------------------


class _NeedMore(Exception):
    """The buffer ends inside the item being decoded; feed more bytes."""


def _head(buf: bytes | bytearray, pos: int) -> tuple[int, int, int, int]:
    """Initial byte and argument (RFC 8949 section 3): (major, info, argument, next position).

    ``argument`` is -1 for an indefinite length (additional information 31)."""
    if pos >= len(buf):
        raise _NeedMore
    initial = buf[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, info, pos + 1
    if info <= 27:
        end = pos + 1 + (1 << (info - 24))
        if end > len(buf):
            raise _NeedMore
        return major, info, int.from_bytes(buf[pos + 1 : end], "big"), end
    if info == 31 and major in (2, 3, 4, 5, 7):
        return major, info, -1, pos + 1
    raise InvalidInput(f"malformed CBOR: initial byte {initial:#04x} is not well-formed")


def _simple(info: int, arg: int) -> object:
    """Major type 7 (RFC 8949 section 3.3): false, true, null, undefined and floats."""
    simple = {20: False, 21: True, 22: None, 23: None}
    if info < 24 and info in simple:
        return simple[info]
    fmt = {25: ">e", 26: ">f", 27: ">d"}.get(info)
    if fmt is None:
        raise InvalidInput(f"unsupported CBOR simple value (additional information {info})")
    size = struct.calcsize(fmt)
    return struct.unpack(fmt, arg.to_bytes(size, "big"))[0]


def _small_item(buf: bytes | bytearray, pos: int, depth: int = 0) -> tuple[object, int]:
    """Decode one complete small item (ints, strings, bools, null, floats, arrays, maps)."""
    if depth > MAX_SMALL_DEPTH:
        raise InvalidInput("CBOR item nested too deeply")
    major, info, arg, pos = _head(buf, pos)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 7:
        return _simple(info, arg), pos
    if arg < 0:
        raise InvalidInput("indefinite-length CBOR items are not supported in this message")
    if major in (2, 3):
        end = pos + arg
        if end > len(buf):
            raise _NeedMore
        raw = bytes(buf[pos:end])
        if major == 2:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise InvalidInput("a CBOR text string is not valid UTF-8") from None
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _small_item(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        entries: dict[object, object] = {}
        for _ in range(arg):
            key, pos = _small_item(buf, pos, depth + 1)
            value, pos = _small_item(buf, pos, depth + 1)
            if not isinstance(key, str | int):
                raise InvalidInput("CBOR map keys must be text or integers here")
            entries[key] = value
        return entries, pos
    raise InvalidInput("CBOR tags are not supported in BlindAI messages")


# --- CBOR: the model as an array of unsigned integers 0..255 -----------------------------------

_WINDOW = 1 << 20  # bytes decoded per numpy pass
_MIN_BATCH = 256 * 1024  # wait for this much before a pass (fewer, larger numpy calls)


@dataclass(frozen=True)
class _Window:
    values: np.ndarray  # the decoded bytes of the complete elements
    consumed: int  # input bytes used
    pending: bool  # the window ended on 0x18 whose one-byte argument is in the next window
    bad: int  # position of the first byte that does not start a 0..255 integer, or -1
    bad_index: int  # that element's index within this window


def _decode_window(b: np.ndarray, remaining: int) -> _Window:
    """Decode up to ``remaining`` elements from ``b`` (position 0 starts an element).

    Each element is one unsigned integer (major type 0): 0x00..0x17 stand for themselves, 0x18 is
    followed by a one-byte argument (RFC 8949 section 3, additional information 24). In a run of
    0x18 bytes that begins on an element start, the bytes alternate: element start, argument,
    start...; the byte after an odd-length run is an argument too; every other byte starts an
    element. Runs are sparse, so element boundaries come from a few vectorised passes with no
    per-element Python work. Decoding stops after ``remaining`` elements: what follows belongs to
    the enclosing map.
    """
    n = len(b)
    is24 = b == 0x18
    edges = np.diff(is24.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    run_begin = np.flatnonzero(edges == 1)
    run_end = np.flatnonzero(edges == -1)  # one past the run
    run_len = run_end - run_begin
    heads = (run_len + 1) // 2  # 0x18 bytes of each run that start an element
    prefix = np.zeros(n, dtype=bool)  # 0x18 bytes that start an element (dropped)
    if len(heads) and int(heads.max()) == 1:
        prefix[run_begin] = True
    elif len(heads):
        nth = np.arange(int(heads.sum())) - np.repeat(np.cumsum(heads) - heads, heads)
        prefix[np.repeat(run_begin, heads) + 2 * nth] = True
    start = ~(is24 & ~prefix)  # arguments inside runs are not starts
    after_odd = run_end[(run_len & 1) == 1]
    start[after_odd[after_odd < n]] = False  # the argument of a run's last 0x18
    cut = n
    if np.count_nonzero(start) > remaining:
        cut = int(np.flatnonzero(start)[remaining])
    seg, seg_start = b[:cut], start[:cut]
    bad_mask = seg_start & (seg > 0x18)
    if bad_mask.any():
        bad = int(np.argmax(bad_mask))
        index = int(np.count_nonzero(seg_start[:bad]))
        return _Window(np.empty(0, np.uint8), 0, False, bad, index)
    values = seg[~prefix[:cut]]
    pending = cut == n and n > 0 and bool(prefix[n - 1])
    return _Window(values, cut, pending, -1, 0)


def _bad_element(initial: int, index: int) -> InvalidInput:
    major = initial >> 5
    if major == 0:
        return InvalidInput(
            f"model element #{index} is larger than 255: the model must be a CBOR array of "
            "byte values 0..255"
        )
    return InvalidInput(
        f"model element #{index} is not an unsigned integer (CBOR major type {major}): the "
        "model must be a CBOR array of byte values 0..255"
    )


@dataclass(frozen=True)
class UploadRequest:
    model: bytes
    length: int | None
    model_name: str | None
    optimize: bool


_MAP_HEAD, _KEY, _VALUE, _MODEL_HEAD, _ARRAY, _BYTES, _DONE = range(7)


class UploadDecoder:
    """Incremental decoder of the 0.6 ``UploadModel`` message (a CBOR map).

    ``{"model": [uint 0..255, ...], "length": uint, "model_name": text, "optimize": bool,
    "client_info": map}`` in any key order. The model array is written into one preallocated
    buffer as it streams in; every element is checked to be 0..255, the real byte count (not the
    declared ``length``) is held to ``max_model_size``, and the body to twice that plus 1 MiB. A
    definite-length byte string is accepted for ``model`` too. Feed chunks, then ``finish()``.
    """

    def __init__(self, max_model_size: int) -> None:
        self.max_model_size = max_model_size
        self.max_body = 2 * max_model_size + BODY_OVERHEAD
        self._buf = bytearray()
        self._received = 0
        self._state = _MAP_HEAD
        self._entries_left = 0
        self._key = ""
        self._fields: dict[str, object] = {}
        self._model: np.ndarray | None = None
        self._written = 0
        self._remaining = 0
        self._pending = False

    # -- public ---------------------------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self._received += len(chunk)
        if self._received > self.max_body:
            raise PayloadTooLarge(
                f"the upload body is over {self.max_body} bytes, more than a model of the server "
                f"limit of {self.max_model_size} bytes (setting max_model_size) can take"
            )
        self._buf += chunk
        self._advance(final=False)

    def finish(self) -> UploadRequest:
        self._advance(final=True)
        if self._state != _DONE:
            raise InvalidInput(
                f"the upload body is truncated: it ended after {self._received} bytes, inside "
                f"{self._where()}"
            )
        if self._buf:
            raise InvalidInput(f"{len(self._buf)} unexpected byte(s) after the UploadModel map")
        if self._model is None:
            raise InvalidInput("the UploadModel message has no 'model' field")
        model = self._model.tobytes()
        self._model = None
        return UploadRequest(model, *self._checked_fields(len(model)))

    # -- state machine --------------------------------------------------------------------------

    def _where(self) -> str:
        if self._state in (_ARRAY, _BYTES):
            return f"the model after {self._written} bytes"
        return "the map header" if self._state == _MAP_HEAD else f"field {self._key!r}"

    def _consume(self, n: int) -> None:
        del self._buf[:n]

    def _advance(self, final: bool) -> None:
        step = {
            _MAP_HEAD: self._map_head,
            _KEY: self._map_key,
            _VALUE: self._map_value,
            _MODEL_HEAD: self._model_head,
            _ARRAY: self._array,
            _BYTES: self._bytes,
        }
        while self._state != _DONE:
            try:
                if not step[self._state](final):
                    break
            except _NeedMore:
                if len(self._buf) > SMALL_ITEM_LIMIT:
                    raise InvalidInput(
                        f"{self._where()} is over {SMALL_ITEM_LIMIT} bytes or malformed"
                    ) from None
                break
        if self._state == _DONE and self._buf:
            raise InvalidInput(f"unexpected byte(s) after the UploadModel map: {len(self._buf)}")

    def _next_entry(self) -> None:
        self._entries_left -= 1
        self._state = _KEY if self._entries_left > 0 else _DONE

    def _map_head(self, final: bool) -> bool:
        major, _, arg, pos = _head(self._buf, 0)
        if major != 5:
            raise InvalidInput(
                f"the upload body must be a CBOR map (UploadModel), not CBOR major type {major}"
            )
        if arg < 0:
            raise InvalidInput("indefinite-length maps are not supported for UploadModel")
        self._consume(pos)
        self._entries_left = arg
        self._state = _KEY if arg else _DONE
        return True

    def _map_key(self, final: bool) -> bool:
        key, pos = _small_item(self._buf, 0)
        if not isinstance(key, str):
            raise InvalidInput(f"UploadModel keys must be text strings, got {type(key).__name__}")
        if key in self._fields or (key == "model" and self._model is not None):
            raise InvalidInput(f"field {key!r} appears twice in the UploadModel message")
        self._consume(pos)
        self._key = key
        self._state = _MODEL_HEAD if key == "model" else _VALUE
        return True

    def _map_value(self, final: bool) -> bool:
        value, pos = _small_item(self._buf, 0)
        self._consume(pos)
        self._fields[self._key] = value
        self._next_entry()
        return True

    def _model_head(self, final: bool) -> bool:
        major, _, count, pos = _head(self._buf, 0)
        if major not in (2, 4):
            raise InvalidInput(
                "'model' must be a CBOR array of byte values (or a byte string), not CBOR major "
                f"type {major}"
            )
        if count < 0:
            raise InvalidInput("'model' must have a definite length (indefinite CBOR length)")
        if count > self.max_model_size:
            raise PayloadTooLarge(
                f"the model is {count} bytes, over the server limit of {self.max_model_size} "
                "bytes (setting max_model_size)"
            )
        self._consume(pos)
        # np.zeros is calloc: pages cost memory only once written, i.e. as real bytes arrive.
        self._model = np.zeros(count, dtype=np.uint8)
        self._remaining = count
        self._state = _ARRAY if major == 4 else _BYTES
        if count == 0:
            self._next_entry()
        return True

    def _bytes(self, final: bool) -> bool:
        assert self._model is not None
        take = min(len(self._buf), self._remaining)
        self._model[self._written : self._written + take] = np.frombuffer(
            self._buf, dtype=np.uint8, count=take
        )
        self._consume(take)
        self._written += take
        self._remaining -= take
        if self._remaining:
            return False
        self._next_entry()
        return True

    def _array(self, final: bool) -> bool:
        if not final and len(self._buf) < _MIN_BATCH:
            return False
        used = 0
        while self._remaining and used < len(self._buf):
            used += self._array_pass(used)
        self._consume(used)
        if self._remaining:
            return False
        self._next_entry()
        return True

    def _array_pass(self, offset: int) -> int:
        """Decode one window of the buffer at ``offset``; returns the bytes used."""
        out = self._model
        assert out is not None
        avail = min(len(self._buf) - offset, _WINDOW)
        b = np.frombuffer(self._buf, dtype=np.uint8, count=avail, offset=offset)
        if self._pending:  # the argument byte of a 0x18 that ended the previous window
            out[self._written] = b[0]
            self._written += 1
            self._remaining -= 1
            self._pending = False
            return 1
        win = _decode_window(b, self._remaining)
        if win.bad >= 0:
            raise _bad_element(int(b[win.bad]), self._written + win.bad_index)
        k = len(win.values)
        out[self._written : self._written + k] = win.values
        self._written += k
        self._remaining -= k
        self._pending = win.pending
        return win.consumed

    def _checked_fields(self, size: int) -> tuple[int | None, str | None, bool]:
        f = self._fields
        length = f.get("length")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool)):
            raise InvalidInput("'length' must be an unsigned integer")
        if length is not None and length != size:
            raise InvalidInput(
                f"'length' says {length} bytes but the model has {size} bytes; the server "
                "trusts only the bytes it received"
            )
        name = f.get("model_name")
        if name is not None and not isinstance(name, str):
            raise InvalidInput("'model_name' must be a text string")
        optimize = f.get("optimize", True)
        if not isinstance(optimize, bool):
            raise InvalidInput("'optimize' must be a boolean")
        return length, name, optimize


# --- CBOR: RunModel and DeleteModel --------------------------------------------------------------


@dataclass(frozen=True)
class InputTensor:
    datatype: str  # OIP datatype
    shape: tuple[int, ...]
    node_name: str | None
    data: bytes


@dataclass(frozen=True)
class RunRequest:
    ref: str  # a model id, or the hex sha256 of the model
    by_hash: bool
    inputs: tuple[InputTensor, ...]


def _loads(body: bytes | bytearray, what: str) -> object:
    try:
        return cbor2.loads(body)
    except Exception as exc:  # cbor2 raises several unrelated types on malformed input
        raise InvalidInput(f"the {what} body is not valid CBOR: {exc}") from None


def _map(value: object, what: str) -> Mapping[object, object]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a CBOR map, got {type(value).__name__}")
    return value


def _text_or_empty(doc: Mapping[object, object], key: str) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"'{key}' must be a text string, got {type(value).__name__}")
    return value


def _datum_type(value: object, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(DATUM_TYPES):
        return DATUM_TYPES[value]
    if isinstance(value, str) and value.upper() in _DATUM_BY_NAME:
        return DATUM_TYPES[_DATUM_BY_NAME[value.upper()]]
    raise InvalidInput(
        f"{where}: unknown datum_type {value!r}; BlindAI datum types are 0..10 "
        f"({', '.join(DATUM_NAMES)})"
    )


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise InvalidInput(f"{where}: 'fact' (the shape) must be a list of at most {MAX_DIMS} dims")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"{where}: 'fact' (the shape) must hold non-negative integers")
    return tuple(value)


def _input_tensor(item: object, i: int) -> InputTensor:
    where = f"input #{i}"
    doc = _map(item, where)
    info = _map(doc.get("info"), f"{where} 'info'")
    data = doc.get("bytes_data")
    if not isinstance(data, bytes):
        raise InvalidInput(f"{where}: 'bytes_data' must be a CBOR byte string")
    name = info.get("node_name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"{where}: 'node_name' must be a text string or null")
    if name is not None:
        where = f"input {name!r}"
    return InputTensor(
        _datum_type(info.get("datum_type"), where), _shape(info.get("fact"), where), name, data
    )


def decode_run(body: bytes | bytearray) -> RunRequest:
    """Parse a 0.6 ``RunModel``: exactly one of model_id / model_hash, a list of tensors."""
    doc = _map(_loads(body, "RunModel"), "the RunModel message")
    model_id = _text_or_empty(doc, "model_id")
    model_hash = _text_or_empty(doc, "model_hash")
    if bool(model_id) == bool(model_hash):
        raise InvalidInput(
            "set exactly one of 'model_id' and 'model_hash' (both are "
            f"{'set' if model_id else 'empty'})"
        )
    if model_hash and not _HEX64.match(model_hash):
        raise InvalidInput(
            "'model_hash' must be the sha256 of the model as 64 hex digits, got "
            f"{model_hash[:80]!r}"
        )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    tensors = tuple(_input_tensor(item, i) for i, item in enumerate(inputs))
    return RunRequest(model_hash.lower() or model_id, bool(model_hash), tensors)


def decode_delete(body: bytes | bytearray) -> str:
    doc = _map(_loads(body, "DeleteModel"), "the DeleteModel message")
    model_id = _text_or_empty(doc, "model_id")
    if not model_id:
        raise InvalidInput("'model_id' is missing or empty in the DeleteModel message")
    return model_id


# --- CBOR encoders (RFC 8949 section 3; preferred serialization, section 4.2.1) -----------------


def _enc_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("CBOR argument too large")


def _enc_text(s: str) -> bytes:
    raw = s.encode()
    return _enc_head(3, len(raw)) + raw


def encode_upload_reply(sha256_hex: str, model_id: str) -> bytes:
    """``SendModelReply``: {hash: 32 raw bytes, model_id: text}."""
    digest = bytes.fromhex(sha256_hex)
    return b"".join(
        [
            _enc_head(5, 2),
            _enc_text("hash"),
            _enc_head(2, len(digest)),
            digest,
            _enc_text("model_id"),
            _enc_text(model_id),
        ]
    )


def datum_code(array: np.ndarray, name: str) -> int:
    dt = datatype_of(array)
    code = _DATUM_BY_DATATYPE.get(dt)
    if code is None:
        raise InvalidInput(
            f"output {name!r} is {dt}, which the BlindAI 0.6 client cannot represent; use the "
            "blindinfer SDK for this model"
        )
    return code


def encode_run_reply(outputs: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """``RunModelReply``: {outputs: [{info: {fact, datum_type: "F32".., node_name}, bytes_data}]}.

    Written by hand around the raw tensor bytes: no re-encoding of the tensor data."""
    parts: list[bytes | memoryview] = [_enc_head(5, 1), _enc_text("outputs")]
    parts.append(_enc_head(4, len(outputs)))
    for name, array in outputs:
        code = datum_code(array, name)
        data = to_wire_bytes(array)
        parts += [_enc_head(5, 2), _enc_text("info"), _enc_head(5, 3), _enc_text("fact")]
        parts.append(_enc_head(4, array.ndim))
        parts += [_enc_head(0, int(d)) for d in array.shape]
        parts += [_enc_text("datum_type"), _enc_text(DATUM_NAMES[code])]
        parts += [_enc_text("node_name"), _enc_text(name)]
        parts += [_enc_text("bytes_data"), _enc_head(2, len(data)), data]
    return b"".join(parts)


def encode_error(message: str) -> bytes:
    return _enc_text(message)


CBOR_NULL: Final = b"\xf6"


# --- SGX quote collateral for the 0.6.3 client's own DCAP verification ----------------------------

COLLATERAL_FIELDS: Final = (
    "version", "pck_certificate", "pck_crl_issuer_chain", "pck_signing_chain", "root_ca_crl",
    "pck_crl", "tcb_info", "tcb_info_issuer_chain", "qe_identity", "qe_identity_issuer_chain",
)  # fmt: skip


def _crl_pem(value: object, field: str) -> str:
    """dcap-qvl keeps CRLs as hex DER; Intel's QVL (the client's verifier) reads PEM."""
    if not isinstance(value, str):
        raise InvalidInput(f"collateral field {field} is missing")
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text
    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(text))
    except ValueError as exc:
        raise InvalidInput(f"collateral field {field} is not a DER CRL: {exc}") from None
    return crl.public_bytes(Encoding.PEM).decode()


def _signed_json(body: object, signature: object, wrapper: str, field: str) -> str:
    """Rebuild Intel's signed document {"<wrapper>": body, "signature": hex}, keeping ``body``
    byte for byte (the signature covers exactly those bytes)."""
    if not isinstance(body, str) or not isinstance(signature, str):
        raise InvalidInput(f"collateral field {field} or its signature is missing")
    return f'{{"{wrapper}":{body},"signature":"{signature}"}}'


def blindai_collateral(evidence: Evidence) -> dict[str, object]:
    """Map an SGX Evidence (quote + dcap-qvl QuoteCollateralV3 JSON under ``collateral["dcap"]``)
    onto the fields of blindai 0.6.3's ``Collateral`` dataclass (all text but ``version``)."""
    from blindinfer.attestation._dcap import parse_layout

    raw = evidence.collateral.get("dcap")
    if raw is None:
        raise InvalidInput("the server has no DCAP collateral for its quote (no PCCS reachable?)")
    try:
        coll = json.loads(raw)
        chain = parse_layout(evidence.evidence).pck_chain
    except (ValueError, AttestationError) as exc:
        raise InvalidInput(f"the server's quote or collateral cannot be read: {exc}") from None
    if not isinstance(coll, dict):
        raise InvalidInput("the server's DCAP collateral is not a JSON object")
    pem = [c.public_bytes(Encoding.PEM).decode() for c in chain]
    return {
        "version": 3,  # sgx_ql_qve_collateral_t major version for DCAP quote v3
        "pck_certificate": pem[0],
        "pck_crl_issuer_chain": str(coll.get("pck_crl_issuer_chain", "")),
        "pck_signing_chain": "".join(pem[1:]),
        "root_ca_crl": _crl_pem(coll.get("root_ca_crl"), "root_ca_crl"),
        "pck_crl": _crl_pem(coll.get("pck_crl"), "pck_crl"),
        "tcb_info": _signed_json(
            coll.get("tcb_info"), coll.get("tcb_info_signature"), "tcbInfo", "tcb_info"
        ),
        "tcb_info_issuer_chain": str(coll.get("tcb_info_issuer_chain", "")),
        "qe_identity": _signed_json(
            coll.get("qe_identity"),
            coll.get("qe_identity_signature"),
            "enclaveIdentity",
            "qe_identity",
        ),
        "qe_identity_issuer_chain": str(coll.get("qe_identity_issuer_chain", "")),
    }


# --- request handling ---------------------------------------------------------------------------


def server_header(state: ServerState) -> str:
    """The 0.6.3 client refuses a server whose Server header contains "mock" unless it runs in
    simulation mode: our simulated TEE says exactly that."""
    if state.backend.insecure:
        return f"blindinfer-mock/{__version__} (simulation TEE, no hardware protection)"
    return f"blindinfer/{__version__} ({state.backend.name})"


def _bind_inputs(model: LoadedModel, tensors: Sequence[InputTensor]) -> dict[str, np.ndarray]:
    """Named tensors go to their input, in any order; unnamed ones fill the rest in order."""
    order = [t.name for t in model.info.signature.inputs]
    if len(tensors) != len(order):
        raise InvalidInput(
            f"model {model.info.name!r} takes {len(order)} input(s) {order}, got {len(tensors)}"
        )
    named = [t.node_name for t in tensors if t.node_name is not None]
    if len(set(named)) != len(named):
        raise InvalidInput(f"an input name appears twice: {named}")
    unknown = [n for n in named if n not in model.inputs]
    if unknown:
        raise InvalidInput(f"model {model.info.name!r} has no input(s) {unknown}; it takes {order}")
    free = iter(n for n in order if n not in named)
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        name = t.node_name if t.node_name is not None else next(free)
        try:
            out[name] = from_wire_bytes(t.data, t.datatype, t.shape)
        except ValueError as exc:
            raise InvalidInput(f"input {name!r}: {exc}") from None
    return out


def _add_model(registry: ModelRegistry, data: bytes, name: str | None) -> ModelInfo:
    """BlindAI names are labels, not keys: use the name when it is valid and free, else none."""
    if name:
        try:
            check_name(name)
        except InvalidInput:
            name = None
    if name and any(i.name == name for i in registry.list()):
        name = None
    try:
        return registry.add(data, name=name)
    except Conflict:
        if name is None:
            raise
        return registry.add(data, name=None)  # the name was taken meanwhile


class _Handlers:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.server = server_header(state)

    def cbor(self, content: bytes, status: int = 200) -> Response:
        return Response(
            content, status, headers={"server": self.server}, media_type=CBOR_CONTENT_TYPE
        )

    # -- unattested ----------------------------------------------------------------------------

    async def certificate(self, request: Request) -> Response:
        return self.cbor(cbor2.dumps(self.state.tls.certificate_der))

    async def _sgx_evidence(self) -> Evidence:
        kind = self.state.backend.kind
        if kind != "sgx":
            raise ServerError(
                f"this server runs on {self.state.backend.name} (evidence kind {kind}); the "
                "BlindAI 0.6 client can only verify Intel SGX quotes: use the blindinfer SDK",
                501,
            )
        return await self.state.run_blocking(self.state.evidence)

    async def quote(self, request: Request) -> Response:
        evidence = await self._sgx_evidence()
        return self.cbor(cbor2.dumps(evidence.evidence))

    async def collateral(self, request: Request) -> Response:
        evidence = await self._sgx_evidence()
        return self.cbor(cbor2.dumps(blindai_collateral(evidence)))

    # -- attested ------------------------------------------------------------------------------

    async def run(self, request: Request) -> Response:
        state = self.state
        body = await read_body(request, state.settings.max_request_size, "RunModel request")
        req = decode_run(body)
        del body
        model = state.registry.resolve(req.ref)
        if model.info.restricted or state.settings.run_token is not None:
            raise Unauthorized(
                "this model needs a token to run (restricted model or run_token set), which the "
                "BlindAI 0.6 client cannot send; use the blindinfer SDK",
                403,
            )
        inputs = _bind_inputs(model, req.inputs)
        outputs = await state.run_blocking(state.registry.run, model, inputs)
        return self.cbor(encode_run_reply(list(outputs.items())))

    # -- management ----------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        state = self.state
        decoder = UploadDecoder(state.settings.max_model_size)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > decoder.max_body:
            raise PayloadTooLarge(
                f"the upload body is {declared} bytes, more than a model of the server limit of "
                f"{decoder.max_model_size} bytes (setting max_model_size) can take"
            )
        async for chunk in request.stream():
            decoder.feed(chunk)
        upload = decoder.finish()
        del decoder
        info = await state.run_blocking(_add_model, state.registry, upload.model, upload.model_name)
        log.info("model %s uploaded via BlindAI port (%d bytes)", info.model_id, info.size)
        return self.cbor(encode_upload_reply(info.sha256, info.model_id))

    async def delete(self, request: Request) -> Response:
        body = await read_body(request, SMALL_ITEM_LIMIT, "DeleteModel request")
        info = await self.state.run_blocking(self.state.registry.delete, decode_delete(body))
        log.info("model %s deleted via BlindAI port", info.model_id)
        return self.cbor(CBOR_NULL)

    # -- errors --------------------------------------------------------------------------------

    async def on_server_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServerError)
        return self.cbor(encode_error(exc.message), exc.status)

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = f"{exc.detail}: {request.method} {request.url.path}"
        return self.cbor(encode_error(text), exc.status_code)

    async def on_unexpected(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on BlindAI %s: %s", request.url.path, type(exc).__name__)
        return self.cbor(encode_error("internal server error"), 500)

    def app(self, routes: list[Route]) -> Starlette:
        return Starlette(
            routes=routes,
            exception_handlers={
                ServerError: self.on_server_error,
                HTTPException: self.on_http_error,
                Exception: self.on_unexpected,
            },
        )


def build_compat_apps(state: ServerState) -> tuple[Starlette, Starlette, Starlette]:
    """The unattested, attested and management ASGI apps."""
    h = _Handlers(state)
    unattested = h.app(
        [
            Route("/", h.certificate, methods=["GET"]),
            Route("/quote", h.quote, methods=["GET"]),
            Route("/collateral", h.collateral, methods=["GET"]),
        ]
    )
    # The client opens each HTTPS connection with ``GET /``: any answer will do.
    attested = h.app(
        [Route("/", h.certificate, methods=["GET"]), Route("/run", h.run, methods=["POST"])]
    )
    management = h.app(
        [
            Route("/", h.certificate, methods=["GET"]),
            Route("/upload", h.upload, methods=["POST"]),
            Route("/delete", h.delete, methods=["POST"]),
        ]
    )
    return unattested, attested, management


# --- one port, plain HTTP and HTTPS ---------------------------------------------------------------


def _start_tls_with(
    transport: asyncio.Transport,
    inner: asyncio.Protocol,
    context: ssl.SSLContext,
    first: bytes,
) -> None:
    """Put a server-side TLS layer between ``transport`` and ``inner``, replaying ``first``.

    ``loop.start_tls`` cannot take bytes already read, so this builds the same layer asyncio
    builds there (``asyncio.sslproto.SSLProtocol``, a buffered protocol since Python 3.11) and
    feeds it the ClientHello bytes the sniffer consumed. It calls ``inner.connection_made`` once
    the handshake is done."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # handshake errors: logged
    tls = sslproto.SSLProtocol(
        loop, inner, context, waiter, server_side=True, ssl_handshake_timeout=15
    )
    transport.set_protocol(tls)
    tls.connection_made(transport)
    view = memoryview(first)
    while view:
        buf = tls.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        tls.buffer_updated(n)
        view = view[n:]


def sniffing_protocol(base: type[asyncio.Protocol], context: ssl.SSLContext) -> type:
    """A uvicorn HTTP protocol class that serves both plain HTTP and HTTPS on one port.

    The first bytes of each connection decide: a TLS handshake record (content type 0x16,
    RFC 8446 section 5.1) gets a TLS layer before ``base`` (uvicorn's HTTP protocol), anything
    else goes to ``base`` as plain HTTP, replayed with ``data_received``. Works on asyncio and
    uvloop transports. Pass the result as ``uvicorn.Config(http=...)``.
    """

    class TlsSniffingProtocol(asyncio.Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._args, self._kwargs = args, kwargs
            self._transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._transport = cast(asyncio.Transport, transport)  # uvloop's: not subclasses

        def data_received(self, data: bytes) -> None:
            transport = self._transport
            if transport is None or not data:
                return
            self._transport = None
            inner = base(*self._args, **self._kwargs)
            if data[0] == TLS_HANDSHAKE:
                _start_tls_with(transport, inner, context, data)
                return
            transport.set_protocol(inner)
            inner.connection_made(transport)
            inner.data_received(data)

        def eof_received(self) -> bool | None:
            return None  # closed before a single byte: nothing to serve

    return TlsSniffingProtocol


def _uvicorn_http_protocol() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol  # type: ignore[no-any-return]
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol  # type: ignore[no-any-return]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_compat_listeners(state: ServerState) -> list[Listener]:
    """The three BlindAI 0.6 listeners: unattested (HTTP and HTTPS), attested and management."""
    s = state.settings
    unattested_port, attested_port, management_port = s.blindai_ports
    unattested, attested, management = build_compat_apps(state)
    if not _is_loopback(s.blindai_management_host):
        log.warning(
            "the BlindAI management port %s:%d has no authentication (as in BlindAI 0.6): anyone "
            "who reaches it can upload and delete models; put your own access control in front",
            s.blindai_management_host,
            management_port,
        )
    extra: dict[str, Any] = {}
    if "http_protocol" in {f.name for f in dataclasses.fields(Listener)}:
        extra["http_protocol"] = sniffing_protocol(
            _uvicorn_http_protocol(), state.tls.server_context()
        )
    return [
        Listener("blindai-unattested", unattested, s.blindai_host, unattested_port, None, **extra),
        Listener(
            "blindai-attested", attested, s.blindai_host, attested_port, state.tls.server_context()
        ),
        Listener(
            "blindai-management",
            management,
            s.blindai_management_host,
            management_port,
            state.tls.server_context(),
        ),
    ]
