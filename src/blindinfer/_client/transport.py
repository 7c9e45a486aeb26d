"""A lean HTTP/1.1 keep-alive transport for the SDK's hot path.

Measured on this kind of machine (2 vCPU): httpx cost ~0.45 ms per request, http.client
~0.12 ms and h11 ~0.045 ms (0.25 ms right after a long wait, caches cold), more than TLS and the
server's own work. Replies are parsed by httptools (the llhttp C parser, as in uvicorn: 2.5 us
per reply); a request head is validated once (RFC 9110 field syntax: no request splitting) and
reused, and this module moves bytes over a pool of kept-alive sockets.

Which server a socket talks to is decided per connection, before any request byte: with a
``VerifiedCertificates`` set, every new connection's peer certificate must be in it; one that is
not is attested on that very connection (the caller's ``attestor`` sends the attestation request
on it and adds the certificate when the evidence passes) and closed, with the error raised,
when it does not pass. Behind an L4 balancer each new connection may reach another replica, so
a refusing replica is retried on a fresh connection a bounded number of times
(``attest_attempts``). Without a set, the caller's SSLContext decides alone (``pinned_context``).
A connection lost mid-flight (reset, EOF before a full reply) is retried once on another
connection for a request the caller marks idempotent.

What is refused, on top of what llhttp refuses (RFC 9112 framing: malformed or repeated
Content-Length, bad chunk sizes, obsolete line folding, control characters in fields):
- a reply body larger than the caller's cap: a Content-Length over it before any body byte is
  read, a chunked or close-delimited body as soon as what arrived passes it;
- a reply head over 64 KiB, a version other than HTTP/1.0 or 1.1, a transfer coding other than
  chunked alone (nothing here decodes gzip);
- a reply with both Transfer-Encoding and Content-Length (RFC 9112 section 6.3, rule 3: a sign
  of response splitting that "ought to be handled as an error");
- reuse of a connection after any error, after a reply that is followed by bytes nobody asked
  for, or after anything arrived on it while it sat idle (we never pipeline, so such bytes can
  only be a confused or hostile peer, and would otherwise be read as the next request's reply).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from blindinfer._client.tls import VerifiedCertificates
from blindinfer._polling import poll_until, socket_poller
from blindinfer.errors import AttestationError, BindingError, BlindInferError, ConnectError

log = logging.getLogger("blindinfer.client")


class _Closed(ConnectionError):
    """The peer closed the connection before sending any byte of the reply."""


class _Lost(ConnectionError):
    """The peer closed the connection in the middle of the reply."""


class _Refused(Exception):
    """A reply this client does not take (size cap, ambiguous framing, malformed bytes)."""


class _BodyLength(Exception):
    """A streamed request body whose length is not the Content-Length it declared."""


# A request that failed for good: the connection is closed and the error reported.
_FAILED = (OSError, httptools.HttpParserError, _Refused, _BodyLength)

# Errors that mean a kept-alive connection was closed by the server while idle: the request
# never reached it, so sending it again on a fresh connection is safe.
_STALE = (
    _Closed,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
# Errors that mean the connection died with the request in flight: only an idempotent request
# may be sent again.
_LOST = (*_STALE, _Lost, ConnectionAbortedError)

_MAX_HEADER = 65536
_MAX_BODY = 1 << 34  # no reply of ours comes near it; a bound on a lying Content-Length
# Replies are read into one buffer per connection, reused: ``recv(262144)`` allocated a fresh
# 256 KiB bytes object per read (past glibc's mmap threshold: page faults every time), which
# cost 0.5-0.9 ms per ResNet-18 call here. A TLS read returns at most one 16 KiB record anyway.
_RECV = 65536
# Request heads are validated and serialised once and reused: an SDK sends the same few heads
# over and over (same model, same body size).
_REQUEST_CACHE_SIZE = 256
# How long before and after a reply is due the SDK polls for it instead of sleeping
# (_Conn._first).
SPIN_NS = 200_000
# The threads of this process spinning now (set.add/discard are atomic under the GIL).
_SPINNING: set[int] = set()
_SMALL_BODY = 65536  # a body below this goes out with its head in one write (one TLS record)
# A reply body with at least this much still to come is read into one buffer, not record by
# record through the parser and joined (a BERT-sized 128 KiB output: 8 records, 2 copies less).
_DIRECT_BODY = 32768
# RFC 9110 section 5.1 (field-name = token), 5.5 (field-value; obs-text allowed, no CR, LF or
# NUL, no leading or trailing whitespace), section 9.1 (method = token); request-target: visible
# ASCII only (RFC 9112 section 3.2), so nothing can end the request line early.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALUE = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?\Z"
)
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")


@dataclass(frozen=True)
class _Head:
    """A validated request head: what goes on the wire and the body length it declares."""

    method: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    data: bytes
    length: int | None  # the declared Content-Length


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes | bytearray  # a bytearray when read straight into its buffer
    peer_certificate: bytes | None = None


def _octets(chunk: bytes | bytearray | memoryview) -> bytes | memoryview:
    """A body piece as bytes or a flat byte view, so that len() counts octets, not array items;
    big tensors are sent from their own memory, not copied."""
    if isinstance(chunk, bytes):
        return chunk
    view = memoryview(chunk)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return view


class _Parse:
    """httptools callbacks for one reply: status, headers and body, checked as they come."""

    __slots__ = (
        "body",
        "chunked",
        "done",
        "extra",
        "fields",
        "head_only",
        "headers",
        "in_body",
        "keep_alive",
        "length",
        "limit",
        "parser",
        "size",
        "status",
    )

    def __init__(self, limit: int, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.limit = limit
        self.head_only = head_only  # a reply to HEAD: no body, whatever it declares
        self.status = 0
        self.fields: list[tuple[bytes, bytes]] = []
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.length: int | None = None
        self.chunked = False
        self.in_body = False
        self.done = False
        self.extra = False  # bytes past the end of the reply: never reuse the connection
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True  # a second reply to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        parser = self.parser
        self.status = parser.get_status_code()
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _Refused(f"unsupported HTTP version {version}")
        self.headers = headers = _header_dict(self.fields)
        _check_framing(self.head_only, self.status, headers, self.limit)
        self.chunked = "transfer-encoding" in headers
        declared = headers.get("content-length")
        self.length = int(declared) if declared is not None else None
        self.keep_alive = version == "1.1" and parser.should_keep_alive()
        if self.head_only or 100 <= self.status < 200:
            # A 1xx is handed up as the reply (the caller refuses it); what follows it, and
            # anything after a HEAD reply's head, is never read as this reply.
            self.done = True
            self.keep_alive = self.keep_alive and not 100 <= self.status < 200
        else:
            self.in_body = True

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.extra = True
            return
        self.size += len(body)
        if self.size > self.limit:
            raise _Refused(f"response body over {self.limit} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.done:
            self.extra = True
            return
        self.done = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()

    def joined(self) -> bytes:
        return self.body[0] if len(self.body) == 1 else b"".join(self.body)

    def feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserUpgrade:
            if not self.done:  # a 101 whose head is complete is handed up (never reused)
                raise _Refused("the reply ended in a protocol upgrade") from None
            self.extra = True
        except httptools.HttpParserError:
            if not self.done:
                raise
            self.extra = True  # garbage after a complete reply: the reply stands, the socket goes

    def at_eof(self) -> None:
        """The peer closed the connection: the end of a close-delimited body, else a cut."""
        if self.done:
            return
        if self.in_body and not self.chunked and self.length is None:
            self.done = True
            self.keep_alive = False
            return
        if not self.in_body:
            raise _Lost("connection closed before a full reply: in the middle of the head")
        if self.chunked:
            raise _Lost("connection closed before a full reply: incomplete chunked body")
        raise _Lost(
            "connection closed before a full reply: the peer closed the connection without "
            f"sending the complete message body ({self.size} of {self.length} bytes)"
        )


class _Conn:
    """One kept-alive HTTP/1.1 connection over a pinned TLS socket."""

    def __init__(self, sock: ssl.SSLSocket, spin_ns: int = SPIN_NS) -> None:
        self.sock = sock
        self._buf = bytearray(_RECV)
        # Registered once, asked before each reuse and while a reply is due.
        self._poller = socket_poller(sock) if hasattr(select, "poll") else None
        self._view = memoryview(self._buf)
        self._spin_ns = spin_ns if self._poller is not None else 0
        self._last_wait = 0  # ns from the request's last byte to its reply's first

    def _first(self) -> memoryview:
        """The first bytes of a reply, waited for by polling the socket around the time it is
        due rather than by sleeping through it: a sleeping thread's vCPU halts, and waking it
        costs more than a fast reply takes (measured ~40-90 us per call on the 2-vCPU test VM;
        ~0.15 ms after an 18 ms run, `bench.timeline`). The reply is due when the last one on
        this connection came (``_last_wait``): one due within ``spin_ns`` is polled for from
        the start; a later one is slept for until ``spin_ns`` (to 1 ms) before it is due, then
        polled for until ``spin_ns`` after. A reply that comes early ends the nap at once;
        one that comes late is waited for by sleeping. Only one thread of the process polls at
        a time (several would fight over the GIL: 4 client threads lost 14% of their
        throughput)."""
        spin = self._spin_ns
        start = time.perf_counter_ns()
        if spin:
            due = self._last_wait if self._last_wait > spin else 0
            nap_ms = (due - spin) // 1_000_000
            assert self._poller is not None
            if (nap_ms <= 0 or not self._poller.poll(nap_ms)) and not _SPINNING:
                me = threading.get_ident()
                _SPINNING.add(me)
                try:
                    if len(_SPINNING) == 1:
                        self._spin(start + due + spin)
                finally:
                    _SPINNING.discard(me)
        data = self._recv()
        self._last_wait = time.perf_counter_ns() - start
        return data

    def _recv(self) -> memoryview:
        """The next bytes of the reply (empty at EOF), valid until the next read: the parser
        copies what it keeps."""
        return self._view[: self.sock.recv_into(self._buf)]

    def _spin(self, until_ns: int) -> None:
        """Poll until the socket is readable or ``until_ns``."""
        assert self._poller is not None
        poll_until(self._poller, until_ns)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def idle_and_clean(self) -> bool:
        """Whether a pooled connection can carry the next request: nothing arrived while it
        was idle. Data or an EOF there means the server closed it, or sent bytes that would
        be taken for the next reply."""
        if self.sock.pending():
            return False
        try:
            if self._poller is not None:
                readable = bool(self._poller.poll(0))
            else:  # pragma: no cover - platforms without poll()
                readable = bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        # Readable at the TCP level can still mean only TLS housekeeping (a TLS 1.3 session
        # ticket): read without blocking to tell that from application data or an EOF.
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except ssl.SSLWantReadError:
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(timeout)
        return False

    def send(self, request: _Head, body: bytes | Iterable[bytes] | None) -> None:
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            data = _octets(body) if body else b""
            _check_length(request, len(data), final=True)
            if len(data) < _SMALL_BODY:
                # Head and a small body in one write: one TLS record, one segment (TCP_NODELAY).
                self.sock.sendall(request.data + data)
                return
            self.sock.sendall(request.data)
            self.sock.sendall(data)
            return
        self.sock.sendall(request.data)
        sent = 0
        for chunk in body:
            # Streamed octets are checked against the declared Content-Length (RFC 9112
            # section 6.2) before they leave; our own buffers are sent, big tensors not copied.
            piece = _octets(chunk)
            sent += len(piece)
            _check_length(request, sent, final=False)
            self.sock.sendall(piece)
        _check_length(request, sent, final=True)

    def receive(
        self, method: bytes, limit: int
    ) -> tuple[int, dict[str, str], bytes | bytearray, bool]:
        """The reply to the request just sent: status, headers, body, and whether the
        connection may go back to the pool."""
        reply = _Parse(limit, method == b"HEAD")
        # Nothing of the reply can be buffered yet (a pooled connection had none).
        data = self._first()
        if not data:
            raise _Closed("the server closed the connection")
        head = 0
        body: bytes | bytearray | None = None
        while True:
            reply.feed(data)
            if reply.done:
                break
            if not reply.in_body:
                head += len(data)
                if head > _MAX_HEADER:
                    raise _Refused(f"response head over {_MAX_HEADER} bytes")
            elif reply.length is not None and reply.length - reply.size >= _DIRECT_BODY:
                # The rest of a long Content-Length body goes straight into its final buffer:
                # exactly the declared bytes are read, nothing past them (a later byte is
                # caught by the idle check before the connection is used again).
                body = self._read_body(reply)
                break
            data = self._recv()
            if not data:
                reply.at_eof()
                break
        # RFC 9112 section 9.3.2: replies come in request order, one per request; we sent one
        # request, so anything past this reply is not an answer to anything. (A 1xx, 101
        # included, is handed up as the reply and never reused: its keep_alive is False.)
        reusable = reply.keep_alive and not reply.extra
        return reply.status, reply.headers, reply.joined() if body is None else body, reusable

    def _read_body(self, reply: _Parse) -> bytearray:
        assert reply.length is not None
        target = bytearray(reply.length)
        view = memoryview(target)
        pos = 0
        for part in reply.body:
            view[pos : pos + len(part)] = part
            pos += len(part)
        while pos < reply.length:
            got = self.sock.recv_into(view[pos:])
            if not got:
                reply.size = pos
                reply.at_eof()  # raises: the body was cut short
            pos += got
        return target


def _head(method: str, path: str, fields: Iterable[tuple[str, str]]) -> _Head:
    """A request head, refused (ValueError) when any piece could end a line or a field early:
    a CR, LF or NUL, or whitespace in the target, smuggles a second request or header."""
    verb, target = method.encode("ascii"), path.encode("latin-1")
    if not _TOKEN.match(verb) or not _TARGET.match(target):
        raise ValueError("the method must be a token and the target visible ASCII")
    headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in fields)
    length: int | None = None
    for name, value in headers:
        if not _TOKEN.match(name) or not _VALUE.match(value):
            raise ValueError(f"illegal header {name[:50]!r}")
        if name.lower() == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ValueError("content-length must be one decimal number")
            length = int(value)
    lines = [verb, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return _Head(verb, headers, b"".join(lines), length)


def _check_length(request: _Head, sent: int, final: bool) -> None:
    if request.length is None:
        return
    if sent > request.length:
        raise _BodyLength("Too much data for declared Content-Length")
    if final and sent < request.length:
        raise _BodyLength("Too little data for declared Content-Length")


def _header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    # Names lower-cased; llhttp has refused a repeated Content-Length (RFC 9110 section 8.6
    # lets a recipient reject it) and any control character in a field.
    return {name.decode("latin-1").lower(): value.decode("latin-1").strip() for name, value in raw}


def _check_framing(head_only: bool, status: int, headers: Mapping[str, str], limit: int) -> None:
    coding = headers.get("transfer-encoding")
    if coding is not None and "content-length" in headers:
        raise _Refused("response has both Transfer-Encoding and Content-Length")
    if coding is not None and coding.lower() != "chunked":
        raise _Refused(f"unsupported transfer coding {coding[:50]!r} (only chunked is read)")
    # RFC 9112 section 6.3, rule 1: no body follows a HEAD, 1xx, 204 or 304, whatever it says.
    if head_only or status < 200 or status in (204, 304):
        return
    declared = headers.get("content-length")
    # llhttp has checked it is digits only (RFC 9110 section 8.6: no sign, no spaces).
    if declared is not None and int(declared) > limit:
        raise _Refused(f"response body of {int(declared)} bytes is over {limit}")


# Sends a GET for ``path`` on the connection being verified and returns the reply (body capped
# at ``max_body``): what an attestor uses to fetch evidence on that very connection.
Exchange = Callable[[str, int], Reply]
# Attests a new connection: given its Exchange and peer certificate DER, verifies the evidence
# and adds the certificate to the VerifiedCertificates set, or raises an AttestationError.
Attestor = Callable[[Exchange, bytes], None]


class Transport:
    def __init__(
        self,
        base_url: str,
        context: ssl.SSLContext,
        timeout: float,
        *,
        verified: VerifiedCertificates | None = None,
        attestor: Attestor | None = None,
        attest_attempts: int = 1,
        spin_ns: int = SPIN_NS,
    ) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 443
        host = self._host if ":" not in self._host else f"[{self._host}]"
        self._host_header = f"{host}:{self._port}"
        self._context = context
        self._timeout = timeout
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False
        self._requests: dict[tuple[str, str, tuple[tuple[str, str], ...], int | None], _Head] = {}
        self._verified = verified
        self._attestor = attestor
        self._attest_attempts = max(1, attest_attempts)
        self.refused = 0  # new connections closed because their peer failed attestation
        self._spin_ns = spin_ns

    def _new(self) -> _Conn:
        """A new connection whose peer is verified; nothing but an attestation request (no
        credential, no input) has been sent on it."""
        if self._verified is None:
            return self._dial()
        last: AttestationError | None = None
        for _ in range(self._attest_attempts):
            conn = self._dial()
            try:
                self._check_peer(conn, self._verified)
                return conn
            except AttestationError as exc:
                conn.close()
                self.refused += 1
                last = exc
                log.warning("refused a connection to %s: %s", self.base_url, exc)
            except BaseException:
                conn.close()
                raise
        assert last is not None
        raise last

    def _check_peer(self, conn: _Conn, verified: VerifiedCertificates) -> None:
        peer = conn.sock.getpeercert(True)
        if peer is not None and peer in verified:
            return
        if self._attestor is None or peer is None:
            raise BindingError(
                f"{self.base_url} presented a certificate other than the attested one: "
                "possible man in the middle; no data was sent"
            )
        self._attestor(functools.partial(self._exchange, conn), peer)
        # The set is the one authority: whatever the attestor did, no request leaves on a
        # connection whose certificate is not in it.
        if peer not in verified:
            raise BindingError(
                f"{self.base_url} presented a certificate that was not verified by attestation; "
                "no data was sent"
            )

    def _exchange(self, conn: _Conn, path: str, max_body: int) -> Reply:
        event = self._build_request("GET", path, None, None)
        try:
            conn.send(event, None)
            status, headers, data, reusable = conn.receive(event.method, max_body)
        except _LOST as exc:
            raise ConnectError(f"{self.base_url} closed the connection: {exc}") from exc
        except _FAILED as exc:
            raise BlindInferError(f"attestation request to {self.base_url} failed: {exc}") from exc
        if not reusable:
            raise ConnectError(f"{self.base_url} closed the connection after attestation")
        return Reply(status, headers, data, conn.sock.getpeercert(True))

    def _dial(self) -> _Conn:
        try:
            raw = socket.create_connection((self._host, self._port), timeout=self._timeout)
        except OSError as exc:
            raise ConnectError(f"cannot reach {self.base_url}: {exc}") from exc
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._context.wrap_socket(raw, server_hostname=self._host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise BindingError(
                f"{self.base_url} presented a certificate other than the attested one: "
                "possible man in the middle; no data was sent"
            ) from exc
        except BindingError:
            raw.close()
            raise
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise ConnectError(f"cannot reach {self.base_url}: {exc}") from exc
        return _Conn(sock, self._spin_ns)

    def _take(self) -> tuple[_Conn, bool]:
        while True:
            with self._lock:
                if self._closed:
                    raise BlindInferError("this connection is closed")
                if not self._idle:
                    break
                conn = self._idle.pop()
            if conn.idle_and_clean():
                return conn, True
            conn.close()
        return self._new(), False

    def _give(self, conn: _Conn) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _request_event(
        self, method: str, path: str, body: object, headers: Mapping[str, str] | None
    ) -> _Head:
        size = memoryview(body).nbytes if isinstance(body, bytes | bytearray | memoryview) else None
        key = (method, path, tuple((headers or {}).items()), size)
        event = self._requests.get(key)
        if event is None:
            event = self._build_request(method, path, body, headers)
            if len(self._requests) >= _REQUEST_CACHE_SIZE:
                self._requests.clear()
            self._requests[key] = event
        return event

    def _build_request(
        self, method: str, path: str, body: object, headers: Mapping[str, str] | None
    ) -> _Head:
        fields = [("host", self._host_header)]
        given = {k.lower() for k in headers or {}}
        fields += list((headers or {}).items())
        if "content-length" not in given:
            if isinstance(body, bytes | bytearray | memoryview):
                fields.append(("content-length", str(memoryview(body).nbytes)))
            elif body is not None:
                raise ValueError("a streamed body needs a content-length header")
            elif method in ("POST", "PUT"):
                fields.append(("content-length", "0"))
        try:
            return _head(method, path, fields)
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"invalid request {method} {path[:100]!r}: {exc}") from exc

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        peer_certificate: bool = False,
        max_body: int | None = None,
        idempotent: bool = False,
    ) -> Reply:
        """Send one request; a stale pooled connection is replaced once, transparently, and an
        ``idempotent`` request whose connection is lost (or cannot be opened) is sent once more
        on another connection (attested first when new)."""
        event = self._request_event(method, path, body, headers)
        limit = _MAX_BODY if max_body is None else max_body
        replayable = not _is_iterator(body)
        stale_retry = replayable
        lost_retry = idempotent and replayable
        while True:
            try:
                conn, reused = self._take()
            except ConnectError:
                if not lost_retry:
                    raise
                lost_retry = False
                continue
            try:
                conn.send(event, body)
                status, reply_headers, data, reusable = conn.receive(event.method, limit)
            except _LOST as exc:
                conn.close()
                if reused and stale_retry and isinstance(exc, _STALE):
                    stale_retry = False  # an idle keep-alive connection the server had closed
                    continue
                if lost_retry:
                    lost_retry = False
                    log.info("%s lost a connection mid-request (%s): retrying", self.base_url, exc)
                    continue
                raise BlindInferError(f"{self.base_url} closed the connection: {exc}") from exc
            except _FAILED as exc:
                conn.close()
                raise BlindInferError(f"request to {self.base_url}{path} failed: {exc}") from exc
            peer = conn.sock.getpeercert(True) if peer_certificate else None
            if reusable:
                self._give(conn)
            else:
                conn.close()
            return Reply(status, reply_headers, data, peer)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _is_iterator(body: object) -> bool:
    # A one-shot iterator (a generator) cannot be replayed after a failed first attempt;
    # bytes and re-iterable objects can.
    if body is None or isinstance(body, bytes | bytearray | memoryview):
        return False
    return iter(body) is body  # type: ignore[call-overload]
