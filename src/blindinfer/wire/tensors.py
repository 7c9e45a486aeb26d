"""Tensor datatypes shared by the server and the SDK (wire formats only, no transport).

Names are the Open Inference Protocol v2 datatypes (KServe "Tensor Data Types"); the BlindAI
0.6 datum-type codes map onto the same set. Tensors travel as raw little-endian bytes.
"""

from __future__ import annotations

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

_BY_NUMPY: Final[dict[np.dtype, str]] = {dt.newbyteorder("="): n for n, dt in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """OIP datatype name of a numpy array; ValueError for unsupported dtypes."""
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        supported = ", ".join(DATATYPES)
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


def to_wire_bytes(array: np.ndarray) -> bytes | memoryview:
    """Raw little-endian C-order bytes of an array (zero-copy when already in that layout)."""
    dt = DATATYPES[datatype_of(array)]
    if array.dtype != dt or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dt)
    return memoryview(array.data).cast("B")


def from_wire_bytes(
    data: bytes | bytearray | memoryview, datatype: str, shape: tuple[int, ...]
) -> np.ndarray:
    """Array view over raw bytes (no per-element work); ValueError if the size does not match."""
    dt = numpy_dtype(datatype)
    count = 1
    for dim in shape:
        if dim < 0:
            raise ValueError(f"negative dimension in shape {list(shape)}")
        count *= dim
    if len(data) != count * dt.itemsize:
        raise ValueError(
            f"{len(data)} bytes of data do not make a {datatype} tensor of shape {list(shape)} "
            f"({count * dt.itemsize} bytes expected)"
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)
