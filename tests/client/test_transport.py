"""The SDK's HTTP/1.1 transport against a real loopback TLS server that sends crafted bytes.

Each test scripts the server's replies byte for byte and checks what the client makes of them:
the reply, the error, and whether the connection went back to the pool (the server counts
the connections it accepted).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from blindinfer._client.connection import _raise_for
from blindinfer._client.tls import pinned_context
from blindinfer._client.transport import Reply, Transport, _Conn
from blindinfer._server.tls import TlsIdentity, generate_identity
from blindinfer.errors import BlindInferError, ServerError

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
CLOSE = b""  # a scripted "reply" that closes the connection instead of answering


@dataclass
class Late:
    """A reply, then more bytes ``delay`` seconds later on the same connection (and then
    a close, when ``close``)."""

    now: bytes
    later: bytes
    delay: float = 0.05
    close: bool = False


@dataclass
class Slow:
    """A reply sent ``delay`` seconds after its request."""

    reply: bytes
    delay: float


@dataclass
class Scripted:
    """A one-thread TLS server: every request it reads gets the next scripted reply."""

    replies: list[bytes | Late | Slow]
    identity: TlsIdentity = field(default_factory=generate_identity)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # heads and bodies, as received
    late_sent: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        # A blocked accept() does not wake when another thread closes the socket: poll.
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def transport(self, timeout: float = 5, **options: Any) -> Transport:
        context = pinned_context(self.identity.certificate_der)
        return Transport(f"https://127.0.0.1:{self.port}", context, timeout, **options)

    def _serve(self) -> None:
        context = self.identity.server_context()
        while self.replies:
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(5)
                    self._answer(tls)
            except (OSError, ssl.SSLError):
                pass

    def _answer(self, tls: ssl.SSLSocket) -> None:
        buf = b""
        while self.replies:
            while b"\r\n\r\n" not in buf:
                data = tls.recv(65536)
                if not data:
                    return  # the client left: the next request comes on a new connection
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = tls.recv(65536)
                if not data:
                    return
                buf += data
            self.requests.append(head + b"\r\n\r\n" + buf[:length])
            buf = buf[length:]
            reply = self.replies.pop(0)
            if isinstance(reply, Late):
                tls.sendall(reply.now)
                time.sleep(reply.delay)
                tls.sendall(reply.later)
                self.late_sent.set()
                if reply.close:
                    return
            elif isinstance(reply, Slow):
                time.sleep(reply.delay)
                tls.sendall(reply.reply)
            elif reply == CLOSE:
                return
            else:
                tls.sendall(reply)

    def close(self) -> None:
        self.replies.clear()  # the serving loop ends at its next accept() poll
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[list[Scripted]]:
    servers: list[Scripted] = []
    yield servers
    for server in servers:
        server.close()


def scripted(servers: list[Scripted], *replies: bytes | Late | Slow) -> Scripted:
    server = Scripted(list(replies))
    servers.append(server)
    return server


def refused(server: Scripted, max_body: int | None = None) -> str:
    """The error a request to ``server`` fails with; then a good request must need a new
    connection (a connection that saw a framing error never goes back to the pool)."""
    transport = server.transport()
    try:
        with pytest.raises(BlindInferError) as info:
            transport.request("GET", "/bad", max_body=max_body)
        before = server.connections
        assert transport.request("GET", "/next").body == b"ok"
        assert server.connections == before + 1
    finally:
        transport.close()
    return str(info.value)


# --- good replies and the pool ----------------------------------------------------------------


def test_keep_alive_reuses_the_connection(serve: list[Scripted]) -> None:
    server = scripted(serve, OK, b"HTTP/1.1 204 No Content\r\n\r\n", OK)
    transport = server.transport()
    first = transport.request("GET", "/a")
    assert (first.status, first.headers, first.body) == (200, {"content-length": "2"}, b"ok")
    assert transport.request("DELETE", "/b").status == 204
    assert transport.request("GET", "/c").body == b"ok"
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /a HTTP/1.1\r\nhost: 127.0.0.1:")
    transport.close()


def test_chunked_reply_with_extension_and_trailer(serve: list[Scripted]) -> None:
    server = scripted(
        serve,
        CHUNKED + b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
        OK,
    )
    transport = server.transport()
    assert transport.request("GET", "/").body == b"abcde"
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 1
    transport.close()


@pytest.mark.parametrize(
    "fields", [b"content-length: 2, 2", b"content-length: 2\r\ncontent-length: 2"]
)
def test_repeated_lengths_are_refused_even_when_identical(
    serve: list[Scripted], fields: bytes
) -> None:
    # RFC 9110 section 8.6 lets a recipient reject a repeated Content-Length; our server never
    # sends one, and a parser that merges them is one more way for two parsers to disagree.
    server = scripted(serve, b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n\r\nok", OK)
    assert "Content-Length" in refused(server)


def test_head_reply_declares_a_length_but_has_no_body(serve: list[Scripted]) -> None:
    server = scripted(serve, b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n", OK)
    transport = server.transport()
    assert transport.request("HEAD", "/", max_body=10).body == b""
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 1
    transport.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ],
)
def test_connection_close_is_honoured(serve: list[Scripted], reply: bytes) -> None:
    server = scripted(serve, reply, OK)
    transport = server.transport()
    assert transport.request("GET", "/").body == b"ok"
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 2
    transport.close()


def test_close_delimited_body_is_read_to_the_end(serve: list[Scripted]) -> None:
    server = scripted(serve, Late(b"HTTP/1.1 200 OK\r\n\r\nab", b"cd", close=True), OK)
    transport = server.transport()
    assert transport.request("GET", "/").body == b"abcd"
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 2
    transport.close()


# --- Content-Length ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [b"-5", b"+5", b"5 5", b"0x10", b"", b"5.0", b"1e3", b"\xd9\xa5", b"9" * 21],
)
def test_malformed_content_length_is_refused(serve: list[Scripted], length: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: " + length + b"\r\n\r\n"
    server = scripted(serve, head + b"abcdefgh", OK)
    assert "failed" in refused(server)


@pytest.mark.parametrize(
    "fields",
    [
        b"content-length: 3, 4",
        b"content-length: 3\r\ncontent-length: 4",
        b"content-length: 3\r\ntransfer-encoding: chunked",
        b"transfer-encoding: chunked\r\ncontent-length: 3",
    ],
)
def test_conflicting_framing_is_refused(serve: list[Scripted], fields: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n\r\n"
    server = scripted(serve, head + b"3\r\nabc\r\n0\r\n\r\n", OK)
    refused(server)


def test_content_length_over_the_cap_is_refused_before_any_body(serve: list[Scripted]) -> None:
    # No body byte is ever sent: the client must refuse on the header, not wait for the body.
    server = scripted(serve, b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n", OK)
    started = time.monotonic()
    assert "over 1000" in refused(server, max_body=1000)
    assert time.monotonic() - started < 3


def test_huge_content_length_is_refused_without_a_cap(serve: list[Scripted]) -> None:
    server = scripted(serve, b"HTTP/1.1 200 OK\r\ncontent-length: " + b"9" * 20 + b"\r\n\r\n", OK)
    assert "over" in refused(server)


def test_truncated_body_is_refused_not_retried(serve: list[Scripted]) -> None:
    cut = Late(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcde", b"", 0, close=True)
    server = scripted(serve, OK, cut, OK)
    transport = server.transport()
    transport.request("GET", "/warm")
    # The server answered, then vanished mid-body: an error even on a reused connection (the
    # request did reach it), never a silent second try.
    with pytest.raises(BlindInferError, match="complete message body"):
        transport.request("GET", "/cut")
    assert len(server.requests) == 2
    assert transport.request("GET", "/next").body == b"ok"
    assert server.connections == 2
    transport.close()


# --- chunked ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        b"-5\r\nabcde\r\n0\r\n\r\n",
        b"+5\r\nabcde\r\n0\r\n\r\n",
        b"zz\r\nabcde\r\n0\r\n\r\n",
        b"\r\nabcde\r\n0\r\n\r\n",
        b"1" + b"0" * 20 + b"\r\nabcde\r\n0\r\n\r\n",  # 21 hex digits: over 2**80
        b"3\r\nabcde\r\n0\r\n\r\n",  # the chunk is longer than its size
        b"5 5\r\nabcde\r\n0\r\n\r\n",
    ],
)
def test_malformed_chunk_is_refused(serve: list[Scripted], chunks: bytes) -> None:
    server = scripted(serve, CHUNKED + chunks, OK)
    refused(server)


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, chunked"])
def test_unsupported_transfer_coding_is_refused(serve: list[Scripted], coding: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + coding + b"\r\n\r\n"
    server = scripted(serve, head + b"0\r\n\r\n", OK)
    refused(server)


def test_truncated_chunked_body_is_refused(serve: list[Scripted]) -> None:
    server = scripted(serve, Late(CHUNKED + b"5\r\nab", b"", 0, close=True), OK)
    assert "incomplete chunked" in refused(server)


def test_chunked_body_over_the_cap(serve: list[Scripted]) -> None:
    chunk = b"200\r\n" + b"a" * 512 + b"\r\n"
    server = scripted(serve, CHUNKED + chunk * 4, OK)
    assert "over 1000" in refused(server, max_body=1000)


def test_close_delimited_body_over_the_cap(serve: list[Scripted]) -> None:
    server = scripted(serve, b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 50_000, OK)
    assert "over 1000" in refused(server, max_body=1000)


def test_endless_header_is_refused(serve: list[Scripted]) -> None:
    # The unparsed head is bounded at 64 KiB (plus what one read brought in).
    server = scripted(serve, b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 400_000 + b"\r\n\r\n", OK)
    refused(server)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok",  # not HTTP/1.x
        b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\ncontent-length: 2\r\n\r\nok",  # obsolete folding
        b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",  # space before the colon
        b"HTTP/1.1 200 OK\r\nx: a\x00b\r\ncontent-length: 2\r\n\r\nok",  # NUL in a value
        b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",  # bare LF line ends
        b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok",
    ],
)
def test_malformed_reply_heads_are_refused(serve: list[Scripted], reply: bytes) -> None:
    refused(scripted(serve, reply, OK))


def test_a_head_arriving_in_pieces_is_read_whole(serve: list[Scripted]) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
    server = scripted(serve, Late(head[:20], head[20:] + b"hello", 0.05), OK)
    transport = server.transport()
    got = transport.request("GET", "/")
    assert (got.status, got.headers["content-type"], got.body) == (200, "text/plain", b"hello")
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 1
    transport.close()


BIG = bytes(range(256)) * 400  # 100 KiB: read straight into its buffer past the first bytes


def test_a_long_body_is_read_whole_into_one_buffer(serve: list[Scripted]) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BIG)
    server = scripted(serve, Late(head + BIG[:1000], BIG[1000:], 0.05), OK)
    transport = server.transport()
    assert transport.request("GET", "/").body == BIG
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 1
    transport.close()


def test_a_long_body_cut_short_is_refused(serve: list[Scripted]) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BIG)
    server = scripted(serve, Late(head + BIG[:1000], BIG[1000:-1], 0.05, close=True), OK)
    assert "complete message body (102399 of 102400 bytes)" in refused(server)


def test_bytes_after_a_long_body_drop_the_connection(serve: list[Scripted]) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BIG)
    forged = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
    server = scripted(
        serve, head + BIG + forged, b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood"
    )
    transport = server.transport()
    assert transport.request("GET", "/1").body == BIG
    time.sleep(0.05)  # let the forged bytes reach the client's socket
    assert transport.request("GET", "/2").body == b"good"
    assert server.connections == 2
    transport.close()


# --- what a reply leaves behind ---------------------------------------------------------------


def test_garbage_after_a_reply_leaves_the_reply_but_drops_the_connection(
    serve: list[Scripted],
) -> None:
    server = scripted(serve, OK + b"not http at all\r\n", OK)
    transport = server.transport()
    assert transport.request("GET", "/1").body == b"ok"
    assert transport.request("GET", "/2").body == b"ok"
    assert server.connections == 2
    transport.close()


def test_bytes_after_a_reply_never_become_the_next_reply(serve: list[Scripted]) -> None:
    # One write holds the reply and a forged second one: the client sent one request, so the
    # extra reply is unasked for and the connection is dropped with it.
    forged = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
    server = scripted(serve, OK + forged, b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood")
    transport = server.transport()
    assert transport.request("GET", "/1").body == b"ok"
    assert transport.request("GET", "/2").body == b"good"
    assert server.connections == 2
    transport.close()


def test_bytes_arriving_on_an_idle_connection_drop_it(serve: list[Scripted]) -> None:
    forged = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
    server = scripted(serve, Late(OK, forged), b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood")
    transport = server.transport()
    assert transport.request("GET", "/1").body == b"ok"
    assert server.late_sent.wait(5)
    time.sleep(0.05)  # let the forged bytes reach the client's socket
    assert transport.request("GET", "/2").body == b"good"
    assert server.connections == 2
    transport.close()


def test_connection_closed_while_idle_is_replaced(serve: list[Scripted]) -> None:
    server = scripted(serve, OK, CLOSE, OK)
    transport = server.transport()
    assert transport.request("GET", "/1").body == b"ok"
    # The server closes the kept-alive connection on the next request without answering (as
    # on an idle time-out racing the request): the request goes again on a new connection.
    assert transport.request("POST", "/2", b"xyz").body == b"ok"
    assert server.connections == 2
    assert server.requests[-2:] == [server.requests[-1]] * 2  # sent twice, byte for byte
    transport.close()


def test_one_shot_body_is_not_replayed(serve: list[Scripted]) -> None:
    server = scripted(serve, OK, CLOSE, OK)
    transport = server.transport()
    transport.request("GET", "/1")
    with pytest.raises(BlindInferError, match="closed the connection"):
        transport.request("POST", "/2", iter([b"abc"]), {"content-length": "3"})
    transport.close()


# --- 1xx and 3xx ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, 100),
        (b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + OK, 103),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n", 101),
    ],
)
def test_informational_reply_is_handed_up_and_refused(
    serve: list[Scripted], reply: bytes, status: int
) -> None:
    server = scripted(serve, reply, OK)
    transport = server.transport()
    got = transport.request("GET", "/")
    assert got.status == status
    with pytest.raises(ServerError, match=f"unexpected HTTP {status}"):
        _raise_for(got)
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 2  # what followed the 1xx was never read: not reused
    transport.close()


def test_redirect_is_read_and_refused(serve: list[Scripted]) -> None:
    server = scripted(
        serve, b"HTTP/1.1 302 Found\r\nlocation: http://x/\r\ncontent-length: 5\r\n\r\nmoved", OK
    )
    transport = server.transport()
    got = transport.request("GET", "/")
    assert (got.status, got.headers["location"], got.body) == (302, "http://x/", b"moved")
    with pytest.raises(ServerError, match="unexpected HTTP 302"):
        _raise_for(got)
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 1  # a well-framed 3xx leaves the connection usable
    transport.close()


@pytest.mark.parametrize("status", [101, 301, 302, 307])
def test_non_2xx_below_400_is_an_error_not_a_json_crash(status: int) -> None:
    with pytest.raises(ServerError, match=f"unexpected HTTP {status}") as info:
        _raise_for(Reply(status, {"location": "http://elsewhere"}, b"<html>moved</html>"))
    assert info.value.status == status


# --- requests ---------------------------------------------------------------------------------


def test_streamed_upload_arrives_whole(serve: list[Scripted]) -> None:
    server = scripted(serve, OK, OK)
    transport = server.transport()
    chunks = [b"a" * 70_000, memoryview(b"b" * 10), bytearray(b"c" * 5)]
    reply = transport.request("PUT", "/up", chunks, {"content-length": "70015"})  # type: ignore[arg-type]
    assert reply.body == b"ok"
    assert server.requests[-1].endswith(b"\r\n\r\n" + b"a" * 70_000 + b"b" * 10 + b"c" * 5)
    assert transport.request("GET", "/").body == b"ok"
    assert server.connections == 1
    transport.close()


def test_streamed_upload_shorter_than_declared_is_refused(serve: list[Scripted]) -> None:
    server = scripted(serve, OK)
    transport = server.transport()
    with pytest.raises(BlindInferError, match="Too little data"):
        transport.request("PUT", "/up", [b"abc"], {"content-length": "5"})
    with pytest.raises(BlindInferError, match="Too much data"):
        transport.request("PUT", "/up", [b"abcdefgh"], {"content-length": "5"})
    transport.close()


def test_streamed_upload_needs_a_length(serve: list[Scripted]) -> None:
    server = scripted(serve, OK)
    with pytest.raises(ValueError, match="content-length"):
        server.transport().request("PUT", "/up", [b"abc"])


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/a\r\nx-evil: 1", {}),
        ("/a b", {}),
        ("/a\x00", {}),
        ("/", {"x-evil": "1\r\nx-more: 2"}),
        ("/", {"x-evil": "1\nx-more: 2"}),
        ("/", {"x evil": "1"}),
        ("/", {"x-evil:": "1"}),
        ("/", {"x-evil": " padded"}),
        ("/", {"content-length": "-1"}),
    ],
)
def test_request_splitting_is_refused_before_sending(
    serve: list[Scripted], path: str, headers: dict[str, str]
) -> None:
    server = scripted(serve, OK)
    with pytest.raises(ValueError, match="invalid request"):
        server.transport().request("GET", path, None, headers)
    assert server.connections == 0


def test_validated_request_heads_are_reused_only_for_the_same_request() -> None:
    t = Transport("https://127.0.0.1:1", ssl.create_default_context(), 1.0)
    a = t._request_event("POST", "/v2/models/m/infer", b"x" * 10, {"content-type": "a/b"})
    assert t._request_event("POST", "/v2/models/m/infer", b"y" * 10, {"content-type": "a/b"}) is a
    other_size = t._request_event("POST", "/v2/models/m/infer", b"x" * 11, {"content-type": "a/b"})
    assert other_size is not a and (b"content-length", b"11") in other_size.headers
    assert (
        t._request_event("POST", "/v2/models/n/infer", b"x" * 10, {"content-type": "a/b"}) is not a
    )
    for i in range(300):  # bounded: a client that never repeats itself does not grow it
        t._request_event("GET", f"/p{i}", None, None)
    assert len(t._requests) <= 256


# --- waiting for a reply ----------------------------------------------------------------------


@pytest.fixture
def polled(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[bytes]]:
    """(the index of each request whose reply was polled for, the replies so far: the test
    appends each reply's body)."""
    spun: list[int] = []
    done: list[bytes] = []
    real = _Conn._spin

    def counting(self: _Conn, until_ns: int) -> None:
        spun.append(len(done))
        real(self, until_ns)

    monkeypatch.setattr(_Conn, "_spin", counting)
    return spun, done


def test_fast_replies_are_polled_for_from_the_start(
    serve: list[Scripted], polled: tuple[list[int], list[bytes]]
) -> None:
    spun, done = polled
    # 0.1 s: far longer than a loopback reply takes, far shorter than the slow one's 0.4 s
    server = scripted(serve, OK, OK, Slow(OK, 0.4), OK, OK)
    transport = server.transport(spin_ns=100_000_000)
    try:
        for _ in range(5):
            done.append(transport.request("GET", "/").body)
    finally:
        transport.close()
    assert done == [b"ok"] * 5 and server.connections == 1
    # 0 and 1 polled; 2 polled for its 0.1 s, then slept until its reply came; 3 was due
    # 0.4 s after it was sent, so it napped, and its reply came early: the nap ended then,
    # with no polling; 4 was due at once again, so it polled.
    assert spun == [0, 1, 2, 4]


class _Naps:
    """A poll object recording each positive timeout (a nap) it was given."""

    def __init__(self, inner: Any, naps: list[int]) -> None:
        self._inner, self._naps = inner, naps

    def poll(self, timeout: int = 0) -> Any:
        if timeout > 0:
            self._naps.append(timeout)
        return self._inner.poll(timeout)


def test_a_slow_reply_is_slept_for_until_just_before_it_is_due(
    serve: list[Scripted], polled: tuple[list[int], list[bytes]]
) -> None:
    spun, done = polled
    server = scripted(serve, OK, Slow(OK, 0.3), Slow(OK, 0.3), OK)
    transport = server.transport(spin_ns=100_000_000)
    naps: list[int] = []
    try:
        done.append(transport.request("GET", "/").body)
        conn = transport._idle[0]
        conn._poller = _Naps(conn._poller, naps)  # type: ignore[assignment]
        for _ in range(3):
            done.append(transport.request("GET", "/").body)
    finally:
        transport.close()
    assert done == [b"ok"] * 4 and server.connections == 1
    # 1 was due at once: polled for 0.1 s, then slept. 2 was due ~0.3 s after it was sent:
    # napped until 0.1 s before that, then polled. 3 was due then too: it napped, and its
    # reply came early, which ended the nap (no polling).
    assert spun == [0, 1, 2]
    assert len(naps) == 2 and all(100 <= nap < 300 for nap in naps), naps


def test_no_polling_when_it_is_off(serve: list[Scripted], monkeypatch: pytest.MonkeyPatch) -> None:
    spun: list[int] = []
    monkeypatch.setattr(_Conn, "_spin", lambda self, until: spun.append(until))
    server = scripted(serve, OK, OK)
    transport = server.transport(spin_ns=0)
    try:
        assert [transport.request("GET", "/").body for _ in range(2)] == [b"ok", b"ok"]
    finally:
        transport.close()
    assert spun == []
