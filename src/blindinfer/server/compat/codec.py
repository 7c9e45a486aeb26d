"""CBOR (RFC 8949) codec for the BlindAI 0.6 messages: UploadModel (streamed), RunModel,
DeleteModel and the replies, with the datum-type tables of the 0.6.3 client."""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from blindinfer.errors import (
    InvalidInput,
    PayloadTooLarge,
)
from blindinfer.wire.tensors import datatype_of, to_wire_bytes

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

SMALL_ITEM_LIMIT = 64 * 1024  # any field but the model itself
MAX_ID_LENGTH = 256  # model ids are 36 characters, names at most 128, hashes 64
BODY_OVERHEAD = 1024 * 1024  # what an upload body may hold beyond the model's 1-2 bytes per byte
MAX_SMALL_DEPTH = 8
MAX_DIMS = 32
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


# --- CBOR: small items (RFC 8949 section 3) ------------------------------------------------------


class _NeedMore(Exception):
    """The buffer ends inside the item being decoded; feed more bytes."""


Buffer = bytes | bytearray  # what the decoders read (indexing and slicing bytes is fastest)


def _head(buf: Buffer, pos: int) -> tuple[int, int, int, int]:
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


_SIMPLE: Final[dict[int, object]] = {20: False, 21: True, 22: None, 23: None}
_FLOATS: Final = {25: struct.Struct(">e"), 26: struct.Struct(">f"), 27: struct.Struct(">d")}


def _simple(info: int, arg: int) -> object:
    """Major type 7 (RFC 8949 section 3.3): false, true, null, undefined and floats."""
    if info in _SIMPLE:
        return _SIMPLE[info]
    fmt = _FLOATS.get(info)
    if fmt is None:
        raise InvalidInput(f"unsupported CBOR simple value (additional information {info})")
    return fmt.unpack(arg.to_bytes(fmt.size, "big"))[0]


def _small_item(
    buf: Buffer, pos: int, depth: int = 0, view: memoryview | None = None
) -> tuple[object, int]:
    """Decode one complete small item (ints, strings, bools, null, floats, arrays, maps).

    Bounded work whatever the lengths declared: nesting stops at MAX_SMALL_DEPTH, and every
    element of an array or map uses at least one byte of ``buf``, so a declared count past the
    bytes at hand ends in ``_NeedMore`` (nothing is allocated ahead of the bytes). Tags and
    indefinite lengths are refused. Given ``view`` (a memoryview of ``buf``), byte strings come
    back as views into it, not copies. (Hot on every RunModel: common heads are inline.)"""
    if pos >= len(buf):
        raise _NeedMore
    major, info = buf[pos] >> 5, buf[pos] & 0x1F
    if info < 24:
        arg, pos = info, pos + 1
    else:
        major, info, arg, pos = _head(buf, pos)
    if major == 3 or major == 2:
        if arg < 0:
            raise InvalidInput("indefinite-length CBOR strings are not supported here")
        end = pos + arg
        if end > len(buf):
            raise _NeedMore
        if major == 2:
            return (bytes(buf[pos:end]) if view is None else view[pos:end]), end
        try:
            return buf[pos:end].decode("utf-8"), end
        except UnicodeDecodeError:
            raise InvalidInput("a CBOR text string is not valid UTF-8") from None
    if major == 0:
        return arg, pos
    if major == 4 or major == 5:
        if arg < 0:
            raise InvalidInput("indefinite-length CBOR arrays and maps are not supported here")
        if depth >= MAX_SMALL_DEPTH:
            raise InvalidInput(f"CBOR items nested more than {MAX_SMALL_DEPTH} levels deep")
        if major == 5:
            return _small_map(buf, pos, arg, depth + 1, view)
        items = []
        for _ in range(arg):
            item, pos = _small_item(buf, pos, depth + 1, view)
            items.append(item)
        return items, pos
    if major == 7:
        return _simple(info, arg), pos
    if major == 1:
        return -1 - arg, pos
    raise InvalidInput("CBOR tags are not supported in BlindAI messages")


def _small_map(
    buf: Buffer, pos: int, count: int, depth: int, view: memoryview | None
) -> tuple[dict[object, object], int]:
    entries: dict[object, object] = {}
    for _ in range(count):
        initial = buf[pos] if pos < len(buf) else 0
        if 0x60 <= initial <= 0x77:  # a text key under 24 bytes, as every BlindAI key is
            end = pos + 1 + (initial - 0x60)
            if end > len(buf):
                raise _NeedMore
            try:
                key: object = buf[pos + 1 : end].decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("a CBOR text string is not valid UTF-8") from None
            pos = end
        else:
            key, pos = _small_item(buf, pos, depth, view)
            if not isinstance(key, (str, int)):  # a tuple: faster than str | int
                raise InvalidInput("CBOR map keys must be text or integers here")
        if key in entries:
            raise InvalidInput(f"the CBOR map key {_shown(key)} appears twice")
        entries[key], pos = _small_item(buf, pos, depth, view)
    return entries, pos


def _shown(value: object) -> str:
    """A client-sent value as quoted in an error message: bounded, and cheap to build (never the
    repr of a whole 64 MiB string)."""
    if isinstance(value, list | dict):
        return f"{_cbor_type(value)} of {len(value)} items"
    if isinstance(value, str | bytes | memoryview):
        head = value[:60]
        text = repr(bytes(head) if isinstance(head, memoryview) else head)
        return text + "..." if len(value) > 60 else text
    return repr(value)[:80]


# --- CBOR: the model as an array of unsigned integers 0..255 -----------------------------------

_WINDOW = 1 << 20  # bytes decoded per numpy pass
_MODEL_FIRST_ALLOC = 1 << 20  # the model buffer starts at this size and doubles as bytes arrive
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
    "client_info": map}`` in any key order. The model array is written into one buffer as it
    streams in, grown with the bytes that arrived (never to a declared length ahead of them);
    every element is checked to be 0..255, the real byte count (not the declared ``length``) is
    held to ``max_model_size``, and the body to twice that plus 1 MiB. A definite-length byte
    string is accepted for ``model`` too. Feed chunks, then ``finish()``.
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
        self._retry_at = 0  # an incomplete item is decoded again once the buffer is this long

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
        model = self._model[: self._written].tobytes()
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
        if not final and len(self._buf) < self._retry_at:
            return  # still short of what the last attempt found missing
        while self._state != _DONE:
            try:
                if not step[self._state](final):
                    break
            except _NeedMore:
                if len(self._buf) > SMALL_ITEM_LIMIT:
                    raise InvalidInput(
                        f"{self._where()} is over {SMALL_ITEM_LIMIT} bytes or malformed"
                    ) from None
                # Decoding again on every chunk would be quadratic for a client that sends an
                # item (up to SMALL_ITEM_LIMIT bytes) a byte at a time: wait for twice as much.
                self._retry_at = min(2 * len(self._buf), SMALL_ITEM_LIMIT + 1)
                break
            self._retry_at = 0
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
        self._model = np.empty(min(count, _MODEL_FIRST_ALLOC), dtype=np.uint8)
        self._remaining = count
        self._state = _ARRAY if major == 4 else _BYTES
        if count == 0:
            self._next_entry()
        return True

    def _reserve(self, extra: int) -> np.ndarray:
        """The model buffer, with room for ``extra`` more bytes: it grows (doubling) with the
        bytes received, up to the declared count, never ahead of them."""
        model = self._model
        assert model is not None
        need = self._written + extra
        if need > len(model):
            limit = self._written + self._remaining
            grown = np.empty(min(limit, max(need, 2 * len(model))), dtype=np.uint8)
            grown[: self._written] = model[: self._written]
            self._model = model = grown
        return model

    def _bytes(self, final: bool) -> bool:
        take = min(len(self._buf), self._remaining)
        self._reserve(take)[self._written : self._written + take] = np.frombuffer(
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
        avail = min(len(self._buf) - offset, _WINDOW)
        b = np.frombuffer(self._buf, dtype=np.uint8, count=avail, offset=offset)
        if self._pending:  # the argument byte of a 0x18 that ended the previous window
            self._reserve(1)[self._written] = b[0]
            self._written += 1
            self._remaining -= 1
            self._pending = False
            return 1
        win = _decode_window(b, self._remaining)
        if win.bad >= 0:
            raise _bad_element(int(b[win.bad]), self._written + win.bad_index)
        k = len(win.values)
        self._reserve(k)[self._written : self._written + k] = win.values
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
    data: bytes | memoryview  # a view into the request body


@dataclass(frozen=True)
class RunRequest:
    ref: str  # a model id, or the hex sha256 of the model
    by_hash: bool
    inputs: tuple[InputTensor, ...]


def _message(body: bytes | bytearray, what: str) -> Mapping[object, object]:
    """A complete RunModel / DeleteModel body: one CBOR map, nothing after it. Byte strings in
    it are views into ``body`` (no copy of the tensors)."""
    try:
        doc, end = _small_item(body, 0, view=memoryview(body))
    except _NeedMore:
        raise InvalidInput(
            f"the {what} body is truncated or is not CBOR: it ended after {len(body)} bytes, "
            "inside an item"
        ) from None
    if end != len(body):
        raise InvalidInput(f"{len(body) - end} unexpected byte(s) after the {what} message")
    return _map(doc, f"the {what} message")


def _map(value: object, what: str) -> Mapping[object, object]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a CBOR map, got {_cbor_type(value)}")
    return value


def _text_or_empty(doc: Mapping[object, object], key: str) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"'{key}' must be a text string, got {_cbor_type(value)}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"'{key}' is {len(value)} characters long, over {MAX_ID_LENGTH}")
    return value


def _cbor_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {
        int: "an integer",
        float: "a float",
        str: "a text string",
        bytes: "a byte string",
        memoryview: "a byte string",
        list: "an array",
        dict: "a map",
    }.get(type(value), type(value).__name__)


def _datum_type(value: object, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(DATUM_TYPES):
        return DATUM_TYPES[value]
    if isinstance(value, str) and value.upper() in _DATUM_BY_NAME:
        return DATUM_TYPES[_DATUM_BY_NAME[value.upper()]]
    raise InvalidInput(
        f"{where}: unknown datum_type {_shown(value)}; BlindAI datum types are 0..10 "
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
    if not isinstance(data, bytes | memoryview):
        raise InvalidInput(f"{where}: 'bytes_data' must be a CBOR byte string")
    name = info.get("node_name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"{where}: 'node_name' must be a text string or null")
    if name is not None:
        where = f"input {_shown(name)}"
    return InputTensor(
        _datum_type(info.get("datum_type"), where), _shape(info.get("fact"), where), name, data
    )


def decode_run(body: bytes | bytearray) -> RunRequest:
    """Parse a 0.6 ``RunModel``: exactly one of model_id / model_hash, a list of tensors."""
    doc = _message(body, "RunModel")
    model_id = _text_or_empty(doc, "model_id")
    model_hash = _text_or_empty(doc, "model_hash")
    if bool(model_id) == bool(model_hash):
        raise InvalidInput(
            "set exactly one of 'model_id' and 'model_hash' (both are "
            f"{'set' if model_id else 'empty'})"
        )
    if model_hash and not _HEX64.fullmatch(model_hash):
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
    doc = _message(body, "DeleteModel")
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
