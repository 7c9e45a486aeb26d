"""A response's head and body leave in one transport call; a big body is never copied for it.

A real uvloop TLS connection on loopback: the client reads exactly what the server wrote, and
the transport's own calls are counted to show how it was written."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import uvloop

from blindinfer._server.coalesce import _JOIN_BELOW, CoalescingTransport
from blindinfer._server.tls import generate_identity

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n"


class _Counting:
    """The server's real transport, with its write calls recorded."""

    def __init__(self, real: asyncio.Transport) -> None:
        self.real = real
        self.calls: list[tuple[str, list[Any]]] = []

    def write(self, data: Any) -> None:
        self.calls.append(("write", [data]))
        self.real.write(data)

    def writelines(self, pieces: Any) -> None:
        pieces = list(pieces)
        self.calls.append(("writelines", pieces))
        self.real.writelines(pieces)

    def is_closing(self) -> bool:
        return self.real.is_closing()


async def _exchange(writes: list[bytes], expect: int) -> tuple[bytes, list[tuple[str, list[Any]]]]:
    identity = generate_identity()
    loop = asyncio.get_running_loop()
    made: asyncio.Future[_Counting] = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            counting = _Counting(transport)  # type: ignore[arg-type]
            made.set_result(counting)

    server = await loop.create_server(Server, "127.0.0.1", 0, ssl=identity.server_context())
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    counting = await made
    coalescing = CoalescingTransport(counting)  # type: ignore[arg-type]
    for data in writes:
        coalescing.write(data)
    got = await reader.readexactly(expect)
    writer.close()
    server.close()
    return got, counting.calls


@pytest.mark.parametrize("size", [10, _JOIN_BELOW - 1, _JOIN_BELOW, 200_000])
def test_head_and_body_go_out_in_one_call(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    head = HEAD % size
    got, calls = uvloop.run(_exchange([head, body], len(head) + size))
    assert got == head + body
    assert len(calls) == 1
    kind, pieces = calls[0]
    if size < _JOIN_BELOW:
        assert kind == "write" and pieces == [head + body]
    else:
        assert kind == "writelines" and pieces[0] == head and pieces[1] is body  # not copied


def test_a_head_alone_is_sent_on_the_next_loop_turn() -> None:
    head = HEAD % 0
    got, calls = uvloop.run(_exchange([head], len(head)))
    assert got == head and calls == [("write", [head])]


def test_other_writes_pass_through() -> None:
    got, calls = uvloop.run(_exchange([b"chunk one", b"chunk two"], 18))
    assert got == b"chunk onechunk two"
    assert [kind for kind, _ in calls] == ["write", "write"]
