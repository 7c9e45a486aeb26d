"""A ``bytes`` object filled in place, so a big upload is never copied into one.

onnxruntime and onnx's checker take ``bytes`` only; receiving a 435 MB model into a bytearray
and then calling ``bytes()`` on it cost one more copy of the model (0.3-0.6 s of fresh-page
faults on a 2-vCPU VM) and one more model's worth of peak memory. CPython lets a new, still
private ``bytes`` be written before anyone has seen it (``PyBytes_FromStringAndSize(NULL, n)``
is documented for exactly that: "the contents are uninitialized"); this module hands out such
an object with a writable view of its storage. Off CPython, callers fall back to a bytearray
and one copy (``fill_in_place_supported``).
"""

from __future__ import annotations

import ctypes
import platform

_OFFSET = bytes.__basicsize__ - 1  # where ob_sval starts in a PyBytesObject


def fill_in_place_supported() -> bool:
    return platform.python_implementation() == "CPython"


if fill_in_place_supported():  # set up once: (NULL, n) makes n uninitialised bytes
    _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)


class WritableBytes:
    """``data``: a new bytes object of ``size`` (uninitialised until written); ``view``: a
    writable memoryview of its storage (it and its slices keep ``data`` alive). ``data`` must
    not be hashed or shared before it is completely written."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self.data: bytes = _new_bytes(None, size)
        storage = (ctypes.c_ubyte * size).from_address(id(self.data) + _OFFSET)
        # Every view (and slice of one) keeps the storage alive, and the storage the bytes:
        # a sealing worker still reading a slice never reads freed memory.
        storage._owner = self.data  # type: ignore[attr-defined]
        self.view = memoryview(storage).cast("B")

    def take(self) -> bytes:
        """The filled bytes; the view is released, so nothing can write to them any more."""
        self.view.release()
        return self.data
