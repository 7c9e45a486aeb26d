"""An ONNX model's skeleton: its protobuf bytes with the tensor payloads left out.

Validation looks at a model's structure (nodes, functions, where tensors say their data lives),
never at its weights. Parsing a whole model into Python copies every weight (a 435 MB model cost
0.6 s and 435 MB to parse, and a generic walk over ``ListFields`` copied each ``raw_data`` once
more: 0.8 s and another 435 MB). This module walks the protobuf wire format instead
(https://protobuf.dev/programming-guides/encoding/), guided by onnx's own message descriptors,
and writes three re-encodings of the model in one pass:

- the **skeleton**: every ``TensorProto`` without its data fields. It parses in milliseconds
  and the structural checks (``validate.py``) run on it unchanged;
- the **loadable** model: the big ``raw_data`` of the main graph's initializers replaced by an
  external-data reference, everything else as uploaded. onnxruntime gets each of those weights
  as a read-only numpy view of the upload (``SessionOptions.add_external_initializers``, whose
  documented contract is that the data is copied into the session, checked against the
  tensor's name, type and shape, and the caller's buffers may be freed afterwards). It then
  parses a small protobuf instead of growing a string to the model's size and copies each weight
  once: a 435 MB model loaded in 0.2 s instead of 0.8-2.3 s, peaking at 1x its size instead
  of 2x on top of the upload. Only this module writes external-data references; the uploaded
  model itself may hold none (refused on the skeleton before onnxruntime sees anything);
- the **checkable** model, for onnx's checker: the loadable one with each handed-over
  initializer shown as an empty tensor (its byte length against its shape and type is checked
  here instead), so the checker no longer parses a copy of every weight.

onnxruntime and the checker only ever parse these re-encodings, never the uploaded bytes, so
what is checked and what is loaded come from one reading of the upload.

The walk must see the structure exactly as protobuf (and so onnxruntime) will:

- a field is descended into only where the descriptor says it is a message *and* it arrives
  with the length-delimited wire type; protobuf keeps any other encoding as an unknown field,
  and so do both outputs (copied as is);
- unknown field numbers are copied as is; duplicated singular messages are kept as separate
  occurrences (protobuf merges them the same way when the output is parsed);
- only the payload fields of a ``TensorProto`` are left out of the skeleton; ``data_location``
  and ``external_data`` stay, so the external-data check sees what onnxruntime would;
- anything protobuf itself would refuse (a truncated varint or length, a length past the end,
  wire types 6/7) is refused; so are groups (wire types 3/4: not in ONNX's schema) and nesting
  deeper than protobuf's default recursion limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from blindinfer.errors import InvalidModel

# TensorProto fields holding element data (onnx.proto: float_data 4, int32_data 5,
# string_data 6, int64_data 7, raw_data 9, double_data 10, uint64_data 11).
PAYLOAD_FIELDS = frozenset({4, 5, 6, 7, 9, 10, 11})
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 1, 2, 8, 9, 13, 14
_GRAPH_IN_MODEL, _INITIALIZER_IN_GRAPH = 7, 5
# Element types an initializer may have to be loaded from the upload: those numpy holds as is,
# and (below) those handed over as their bits; int4, float4 and complex stay inline.
_NUMPY_TYPES: dict[int, np.dtype[Any]] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.INT16: np.dtype(np.int16),
    onnx.TensorProto.UINT16: np.dtype(np.uint16),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.UINT32: np.dtype(np.uint32),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.UINT64: np.dtype(np.uint64),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
}
# Element types numpy has no dtype for, handed over as their bits (an array of the unsigned
# integer of the same width, tagged with the ONNX type for onnxruntime); packed sub-byte types
# (int4, float4) stay inline.
_BITS_TYPES: dict[int, np.dtype[Any]] = {
    onnx.TensorProto.BFLOAT16: np.dtype(np.uint16),
    onnx.TensorProto.FLOAT8E4M3FN: np.dtype(np.uint8),
    onnx.TensorProto.FLOAT8E4M3FNUZ: np.dtype(np.uint8),
    onnx.TensorProto.FLOAT8E5M2: np.dtype(np.uint8),
    onnx.TensorProto.FLOAT8E5M2FNUZ: np.dtype(np.uint8),
}
# Protobuf's default recursion limit (upb and C++ alike): deeper messages are refused.
MAX_DEPTH = 100
# Initializers at least this big are loaded from the upload's buffer; smaller ones (shapes,
# scalars, which shape inference reads) stay inline.
MIN_IN_MEMORY = 64 * 1024
# The external-data location written for initializers read from the upload (onnxruntime takes
# them by name from SessionOptions.add_external_initializers; the name is never opened).
IN_MEMORY = "blindinfer-upload.in-memory"

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_EMPTY_DIMS = bytes([_DIMS << 3 | _VARINT, 0])  # dims = [0]: a tensor with no elements
_TENSOR = onnx.TensorProto.DESCRIPTOR.full_name


@dataclass(frozen=True)
class External:
    """One initializer of the loadable model whose data is ``length`` bytes of the upload at
    ``offset``, to be handed to onnxruntime as an array of ``dtype`` and ``shape``."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    length: int
    onnx_type: int | None = None  # set when ``dtype`` only holds the bits (bfloat16, float8)

    def array(self, data: bytes) -> np.ndarray:
        """A read-only view of the upload (no copy)."""
        count = self.length // self.dtype.itemsize
        return np.frombuffer(data, self.dtype, count, self.offset).reshape(self.shape)


@dataclass(frozen=True)
class Split:
    """``skeleton``: the model without tensor payloads (for the structural checks);
    ``loadable``: the model for onnxruntime, whose ``externals`` read the uploaded bytes;
    ``checkable``: the model for onnx's checker, the handed-over initializers shown as empty
    tensors (their size against their shape is checked here; onnxruntime checks it again)."""

    skeleton: bytes
    loadable: bytes
    checkable: bytes
    externals: tuple[External, ...]


def _malformed(what: str) -> InvalidModel:
    return InvalidModel(f"the upload is not a valid ONNX model (protobuf parse failed: {what})")


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint at ``pos`` (at most 10 bytes): (value, position after it)."""
    value = shift = 0
    for i in range(pos, min(pos + 10, end)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise _malformed("truncated or overlong varint")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes | bytearray | memoryview) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + bytes(payload)


def _external_reference(offset: int, length: int) -> bytes:
    """TensorProto fields 13 (external_data: location, offset, length) and 14 (EXTERNAL)."""
    out = b""
    for key, value in (("location", IN_MEMORY), ("offset", str(offset)), ("length", str(length))):
        entry = _len_field(1, key.encode()) + _len_field(2, value.encode())  # StringStringEntry
        out += _len_field(_EXTERNAL_DATA, entry)
    return out + _encode_varint(_DATA_LOCATION << 3 | _VARINT) + _encode_varint(1)


@dataclass
class _Tensor:
    """The facts about one initializer that decide whether it is loaded from the upload."""

    raw: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of raw_data
    dims: list[int] = field(default_factory=list)
    data_type: int | None = None
    name: bytes = b""
    other_payload: bool = False
    external: bool = False

    def take(self, number: int, wire: int, value: int, data: memoryview, body: int) -> None:
        """Note one field (``value``: a varint's value, or a LEN field's length at ``body``)."""
        if number in (_EXTERNAL_DATA, _DATA_LOCATION):
            self.external = True  # refused by the checks; never loaded from the buffer
        elif number == _DATA_TYPE and wire == _VARINT:
            self.data_type = value
        elif number == _NAME and wire == _LEN:
            self.name = bytes(data[body : body + value])
        elif number == _RAW_DATA and wire == _LEN:
            self.raw.append((body, value))
        elif number == _DIMS and wire == _VARINT:
            self.dims.append(_signed(value))
        elif number == _DIMS and wire == _LEN:  # packed
            pos = body
            while pos < body + value:
                dim, pos = _varint(data, pos, body + value)
                self.dims.append(_signed(dim))
        elif number in PAYLOAD_FIELDS:
            self.other_payload = True

    def external_form(self) -> External | None:
        """How onnxruntime can read this initializer from the upload, or None (kept inline)."""
        onnx_type = self.data_type or 0
        dtype = _NUMPY_TYPES.get(onnx_type) or _BITS_TYPES.get(onnx_type)
        if (
            dtype is None
            or len(self.raw) != 1
            or self.other_payload
            or self.external
            or any(d < 0 for d in self.dims)
        ):
            return None
        offset, length = self.raw[0]
        if length < MIN_IN_MEMORY or length != math.prod(self.dims) * dtype.itemsize:
            return None
        try:
            name = self.name.decode()
        except UnicodeDecodeError:
            return None
        if not name:
            return None
        bits = onnx_type if onnx_type in _BITS_TYPES else None
        return External(name, dtype, tuple(self.dims), offset, length, bits)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Walker:
    def __init__(self) -> None:
        # message full name -> {field number: message descriptor} for its message fields
        self._fields: dict[str, dict[int, Any]] = {}
        self.externals: dict[str, External] = {}

    def message_fields(self, desc: Any) -> dict[int, Any]:
        known = self._fields.get(desc.full_name)
        if known is None:
            known = {f.number: f.message_type for f in desc.fields if f.type == f.TYPE_MESSAGE}
            self._fields[desc.full_name] = known
        return known

    def walk(
        self, data: memoryview, start: int, end: int, desc: Any, depth: int, where: str = ""
    ) -> tuple[bytearray, bytearray, bytearray]:
        """(skeleton, loadable, checkable) of the message ``desc`` held in ``data[start:end]``.
        ``where``: "model" for the ModelProto, "graph" for its main graph, "initializer" for
        that graph's initializers (the only tensors loaded from the buffer)."""
        if depth > MAX_DEPTH:
            raise InvalidModel(
                f"the model nests protobuf messages deeper than {MAX_DEPTH} levels; refused"
            )
        children = self.message_fields(desc)
        is_tensor = desc.full_name == _TENSOR
        tensor = _Tensor() if where == "initializer" else None
        skel, load, check = bytearray(), bytearray(), bytearray()
        dims = bytearray()  # an initializer's dims fields: left out of ``check`` if handed over
        pos = start
        while pos < end:
            field_start = pos
            key, pos = _varint(data, pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _malformed("field number 0")
            value = body = 0
            if wire == _VARINT:
                value, pos = _varint(data, pos, end)
            elif wire == _I64:
                pos += 8
            elif wire == _I32:
                pos += 4
            elif wire == _LEN:
                key_end = pos
                value, body = _varint(data, pos, end)
                pos = body + value
                if pos > end:
                    raise _malformed("a length runs past the end of its message")
                child = children.get(number)
                if child is not None and not (is_tensor and number in PAYLOAD_FIELDS):
                    if tensor is not None:
                        tensor.take(number, wire, value, data, body)
                    inner = self.walk(data, body, pos, child, depth + 1, _child(where, number))
                    head = data[field_start:key_end]
                    for out, part in zip((skel, load, check), inner, strict=True):
                        out += head
                        out += _encode_varint(len(part))
                        out += part
                    continue
            elif wire in (_SGROUP, _EGROUP):
                raise InvalidModel("the model uses protobuf groups, which ONNX never does; refused")
            else:
                raise _malformed(f"wire type {wire}")
            if pos > end:
                raise _malformed("a field runs past the end of its message")
            if tensor is not None:
                tensor.take(number, wire, value, data, body)
            field = data[field_start:pos]
            if not (is_tensor and number in PAYLOAD_FIELDS):
                skel += field
            if tensor is None:
                load += field
                check += field
            elif number == _DIMS:
                load += field
                dims += field
            elif not (number == _RAW_DATA and wire == _LEN):
                load += field
                check += field
        if tensor is not None:
            handed, tail = self._initializer_data(data, tensor)
            load += tail
            if handed:
                check += _EMPTY_DIMS
            else:
                check += dims
                check += tail
        return skel, load, check

    def _initializer_data(self, data: memoryview, tensor: _Tensor) -> tuple[bool, bytes]:
        """The raw_data left out of an initializer's loadable form, put back: as a reference to
        the upload when it is one big, plain payload (True), else as uploaded (False)."""
        ext = tensor.external_form()
        if ext is not None and ext.name not in self.externals:
            self.externals[ext.name] = ext
            return True, _external_reference(ext.offset, ext.length)
        out = b""
        for offset, length in tensor.raw:
            out += _len_field(_RAW_DATA, data[offset : offset + length])
        return False, out


def _child(where: str, number: int) -> str:
    if where == "model" and number == _GRAPH_IN_MODEL:
        return "graph"
    if where == "graph" and number == _INITIALIZER_IN_GRAPH:
        return "initializer"
    return ""


def split(data: bytes | bytearray | memoryview) -> Split:
    """The model's skeleton, loadable and checkable forms (see the module docstring);
    InvalidModel when the bytes are not a well-formed protobuf message."""
    view = memoryview(data).cast("B")
    walker = _Walker()
    skel, load, check = walker.walk(view, 0, len(view), onnx.ModelProto.DESCRIPTOR, 0, "model")
    loadable = bytes(load)
    checkable = bytes(check) if walker.externals else loadable
    return Split(bytes(skel), loadable, checkable, tuple(walker.externals.values()))
