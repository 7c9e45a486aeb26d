"""``WritableBytes``: an upload written in place into the bytes object onnxruntime takes."""

from __future__ import annotations

import gc

import pytest

from blindinfer._server.buffers import WritableBytes


def test_written_bytes_are_ordinary_bytes() -> None:
    buf = WritableBytes(10)
    buf.view[0:4] = b"0123"
    buf.view[4:10] = b"456789"
    data = buf.take()
    assert type(data) is bytes and data == b"0123456789"
    assert hash(data) == hash(b"0123456789") and data.decode() == "0123456789"
    with pytest.raises(ValueError):
        buf.view[0:1] = b"x"  # released: nothing can change the bytes any more


def test_a_slice_keeps_the_storage_alive() -> None:
    """The sealing worker may still read a slice after the request dropped the buffer."""
    buf = WritableBytes(1 << 20)
    piece = buf.view[100:110]
    piece[:] = b"abcdefghij"
    del buf
    gc.collect()
    for _ in range(100):  # churn the allocator over the freed sizes
        bytes(1 << 20)
    assert bytes(piece) == b"abcdefghij"


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WritableBytes(0)
