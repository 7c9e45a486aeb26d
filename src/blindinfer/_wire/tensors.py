"""Tensor datatypes shared by the server and the SDK (wire formats only, no transport).

Names are the Open Inference Protocol v2 datatypes (KServe "Tensor Data Types"); the BlindAI
0.6 datum-type codes map onto the numeric set. Numeric tensors travel as raw little-endian
bytes. ``BYTES`` tensors (files, text) are numpy object arrays of ``bytes``; in binary form each
element is a 4-byte little-endian length followed by its bytes (Triton's binary tensor data
extension, "BYTES" element serialisation), in C order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import numpy as np

# OIP v2 datatype -> numpy dtype (explicitly little-endian: the wire is little-endian).
DATATYPES: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

BYTES: Final = "BYTES"
# Every datatype the wire carries: the numeric ones and BYTES.
ALL_DATATYPES: Final = (*DATATYPES, BYTES)
# Elements of one BYTES tensor: each is one Python object, so the count is bounded (the body's
# size bounds the bytes; this bounds the per-element work a small body could ask for).
MAX_BYTES_ELEMENTS: Final = 65_536
_LEN: Final = struct.Struct("<I")

# ONNX tensor element type string (as onnxruntime reports it) -> OIP datatype.
ONNX_TO_DATATYPE: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}

# numpy's own limit on dimensions (NPY_MAXDIMS); refused here with a message, not numpy's error.
MAX_DIMS: Final = 64
# numpy refuses an array whose non-zero dimensions multiply to more bytes than this, even when
# another dimension is 0 (and its sizes are int64 anyway).
MAX_TENSOR_BYTES: Final = 2**63 - 1

_BY_NUMPY: Final[dict[np.dtype, str]] = {dt.newbyteorder("="): n for n, dt in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """OIP datatype name of a numpy array (object arrays are BYTES); ValueError otherwise."""
    if array.dtype == object:
        return BYTES
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        supported = ", ".join(ALL_DATATYPES)
        raise ValueError(
            f"unsupported tensor dtype {array.dtype}; supported: {supported}"
        ) from None


def numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype for an OIP datatype name; ValueError naming the supported set otherwise."""
    try:
        return DATATYPES[datatype.upper()]
    except KeyError:
        raise ValueError(
            f"unsupported datatype {datatype!r}; supported: {', '.join(DATATYPES)}"
        ) from None


def element_count(shape: Sequence[int], itemsize: int = 1) -> int:
    """Number of elements of a tensor of ``shape``; ValueError naming the problem when no numpy
    array can have that shape (negative or too many dimensions, sizes past int64)."""
    if len(shape) > MAX_DIMS:
        raise ValueError(f"the shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    volume = itemsize  # bytes of the non-zero dimensions: bounded even for an empty tensor
    for i, dim in enumerate(shape):
        if dim < 0:
            raise ValueError(f"dimension {i} of the shape is negative")
        volume *= max(dim, 1)
        if volume > MAX_TENSOR_BYTES:
            raise ValueError(
                f"the shape is too large: its dimensions multiply to more than {MAX_TENSOR_BYTES} "
                "bytes"
            )
    return 0 if 0 in shape else volume // itemsize


def bytes_elements(array: np.ndarray) -> list[bytes]:
    """The elements of a BYTES array in C order; ValueError unless each is bytes (or str,
    taken as UTF-8)."""
    out: list[bytes] = []
    for i, item in enumerate(array.reshape(-1)):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif isinstance(item, bytearray | memoryview):
            item = bytes(item)
        elif not isinstance(item, bytes):
            raise ValueError(f"element {i} of a BYTES tensor is {type(item).__name__}, not bytes")
        out.append(item)
    return out


def to_wire_bytes(array: np.ndarray) -> bytes | memoryview:
    """Raw little-endian C-order bytes of an array (zero-copy when already in that layout);
    BYTES tensors as length-prefixed elements."""
    datatype = datatype_of(array)
    if datatype == BYTES:
        items = bytes_elements(array)
        return b"".join(part for item in items for part in (_LEN.pack(len(item)), item))
    dt = DATATYPES[datatype]
    if array.size == 0:
        return b""  # memoryview cannot cast a view with a 0 in its shape
    if array.dtype != dt or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dt)
    return memoryview(array.data).cast("B")


def from_wire_bytes(
    data: bytes | bytearray | memoryview, datatype: str, shape: tuple[int, ...]
) -> np.ndarray:
    """Array view over raw bytes (no per-element work); ValueError if the size does not match.
    BYTES: an object array of ``bytes`` read from the length-prefixed elements."""
    if datatype.upper() == BYTES:
        return bytes_from_wire(data, shape)
    dt = numpy_dtype(datatype)
    expected = element_count(shape, dt.itemsize) * dt.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{len(data)} bytes of data do not make a {datatype} tensor of shape {list(shape)} "
            f"({expected} bytes expected)"
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)


def bytes_from_wire(data: bytes | bytearray | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """A BYTES tensor of ``shape`` from length-prefixed elements; ValueError naming the problem.

    The element count is checked against what the data can hold (4 bytes an element at least)
    and MAX_BYTES_ELEMENTS before anything is allocated."""
    count = element_count(shape)
    if count > MAX_BYTES_ELEMENTS:
        raise ValueError(
            f"a BYTES tensor may have at most {MAX_BYTES_ELEMENTS} elements; shape "
            f"{list(shape)} has {count}"
        )
    view = memoryview(data).cast("B")
    if count * _LEN.size > len(view):
        raise ValueError(
            f"{len(view)} bytes of data cannot hold the {count} length-prefixed elements of "
            f"BYTES shape {list(shape)}"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + _LEN.size > len(view):
            raise ValueError(f"the BYTES data ends before element {i}'s length")
        (size,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if size > len(view) - offset:
            raise ValueError(
                f"element {i} of the BYTES data declares {size} bytes; {len(view) - offset} "
                "are left"
            )
        out[i] = view[offset : offset + size].tobytes()
        offset += size
    if offset != len(view):
        raise ValueError(
            f"{len(view) - offset} bytes follow the last element of the BYTES data of shape "
            f"{list(shape)}"
        )
    return out.reshape(shape)


def bytes_array(items: Sequence[bytes | str], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A BYTES tensor (object array of bytes) from bytes or str (UTF-8) items."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out.reshape(shape if shape is not None else (len(items),))
