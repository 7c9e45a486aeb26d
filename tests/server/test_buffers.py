"""``WritableBytes``: an upload written in place into the bytes object onnxruntime takes."""

from __future__ import annotations

import asyncio
import gc

import pytest
from starlette.requests import Request

from blindinfer._server.app import _receive_model, _take
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


def _request(body: bytes, pieces: int, length: bool) -> Request:
    size = -(-len(body) // pieces)
    messages = [
        {"type": "http.request", "body": body[i : i + size], "more_body": i + size < len(body)}
        for i in range(0, len(body), size)
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    headers = [(b"content-length", str(len(body)).encode())] if length else []
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


class _Upload:
    """Stands in for registry.Upload: records what the sealing worker would be fed."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def feed(self, piece: bytes | memoryview) -> None:
        self.fed.append(bytes(piece))


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_an_upload_body_lands_in_the_bytes_onnxruntime_takes(length: bool) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    upload = _Upload()
    received = asyncio.run(_receive_model(_request(body, 7, length), upload, 1 << 30))  # type: ignore[arg-type]
    # With a Content-Length the buffer is the final bytes object, written in place (no copy).
    assert isinstance(received[0], WritableBytes) == length
    data = _take(received)
    assert type(data) is bytes and data == body
    assert b"".join(upload.fed) == body  # everything was hashed and sealed, in order
