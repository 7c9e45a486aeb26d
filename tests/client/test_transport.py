"""The SDK's hand-written HTTP/1.1 response parser, fed real bytes over a socket pair."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

import pytest

from blindinfer.client.connection import _raise_for
from blindinfer.client.transport import Reply, _Conn
from blindinfer.errors import ServerError


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, _Conn]]:
    server, client = socket.socketpair()
    client.settimeout(5)
    yield server, _Conn(client)  # type: ignore[arg-type]
    server.close()
    client.close()


def test_content_length_body_then_next_reply(pair: tuple[socket.socket, _Conn]) -> None:
    server, conn = pair
    server.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcHTTP/1.1 204 No\r\n"
                   b"content-length: 0\r\n\r\n")  # fmt: skip
    assert conn.read_response()[:3] == (200, {"content-length": "3"}, b"abc")
    assert conn.read_response()[0] == 204


def test_chunked_body(pair: tuple[socket.socket, _Conn]) -> None:
    server, conn = pair
    server.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\n"
                   b"de\r\n0\r\n\r\n")  # fmt: skip
    assert conn.read_response()[2] == b"abcde"


@pytest.mark.parametrize("length", [b"-5", b"+5", b"5 5", b"0x10", b"", b"9" * 30])
def test_malformed_content_length_is_refused(
    pair: tuple[socket.socket, _Conn], length: bytes
) -> None:
    server, conn = pair
    server.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: " + length + b"\r\n\r\nabcdefgh")
    with pytest.raises(http.client.HTTPException):
        conn.read_response()


def test_body_cap_refuses_before_reading(pair: tuple[socket.socket, _Conn]) -> None:
    server, conn = pair
    server.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n")
    with pytest.raises(http.client.HTTPException, match="over 1000"):
        conn.read_response(max_body=1000)


def test_chunked_body_cap(pair: tuple[socket.socket, _Conn]) -> None:
    server, conn = pair
    server.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"200\r\n" + b"a" * 512 + b"\r\n200\r\n")  # fmt: skip
    with pytest.raises(http.client.HTTPException):
        conn.read_response(max_body=1000)


def test_unframed_body_cap(pair: tuple[socket.socket, _Conn]) -> None:
    server, conn = pair
    server.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 50_000)
    with pytest.raises(http.client.HTTPException):
        conn.read_response(max_body=1000)


@pytest.mark.parametrize("status", [101, 301, 302, 307])
def test_non_2xx_below_400_is_an_error_not_a_json_crash(status: int) -> None:
    with pytest.raises(ServerError, match=f"unexpected HTTP {status}") as info:
        _raise_for(Reply(status, {"location": "http://elsewhere"}, b"<html>moved</html>"))
    assert info.value.status == status
