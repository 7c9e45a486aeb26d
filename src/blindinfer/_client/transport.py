"""A lean HTTP/1.1 keep-alive transport for the SDK's hot path.

Measured on this kind of machine (2 vCPU): httpx cost ~0.45 ms per request and http.client
~0.12 ms, more than TLS and the server's own work. Here h11 (a maintained, sans-I/O HTTP/1.1
state machine) does all the message framing, and this module only moves bytes over a pool of
kept-alive sockets.

Which server a socket talks to is decided per connection, before any request byte: with a
``VerifiedCertificates`` set, every new connection's peer certificate must be in it; one that is
not is attested on that very connection (the caller's ``attestor`` sends the attestation request
on it and adds the certificate when the evidence passes) and closed, with the error raised,
when it does not pass. Behind an L4 balancer each new connection may reach another replica, so
a refusing replica is retried on a fresh connection a bounded number of times
(``attest_attempts``). Without a set, the caller's SSLContext decides alone (``pinned_context``).
A connection lost mid-flight (reset, EOF before a full reply) is retried once on another
connection for a request the caller marks idempotent.

What is refused, on top of what h11 refuses (RFC 9112 framing):
- a reply body larger than the caller's cap: a Content-Length over it before any body byte is
  read, a chunked or close-delimited body as soon as what arrived passes it;
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import h11

from blindinfer._client.tls import VerifiedCertificates
from blindinfer.errors import AttestationError, BindingError, BlindInferError, ConnectError

log = logging.getLogger("blindinfer.client")


class _Closed(ConnectionError):
    """The peer closed the connection before sending any byte of the reply."""


class _Lost(ConnectionError):
    """The peer closed the connection in the middle of the reply."""


class _Refused(Exception):
    """A reply that h11 accepts but this client does not (size cap, ambiguous framing)."""


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
# h11 refuses a 101 to a request that proposed no upgrade without naming the status; the start
# of the reply lets it be reported as the unexpected status it is (as any other 1xx is).
_SWITCHING = re.compile(rb"HTTP/1\.[01] 101(?:[ \r]|$)")
_END = h11.EndOfMessage()  # immutable: one instance serves every request
# h11 validates every header of every Request it is given (~8 us); an SDK sends the same few
# request heads over and over (same model, same body size), so validated events are reused.
_REQUEST_CACHE_SIZE = 256


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    peer_certificate: bytes | None = None


def _octets(chunk: bytes | bytearray | memoryview) -> bytes:
    """A body piece as bytes or a flat byte view, so h11 counts octets, not array items.

    Typed as bytes for h11's annotations: it only takes len() of a Data payload and hands the
    very object back to be written, so any flat buffer works and big tensors are not copied."""
    if isinstance(chunk, bytes):
        return chunk
    view = memoryview(chunk)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return cast(bytes, view)


class _Conn:
    """One kept-alive HTTP/1.1 connection over a pinned TLS socket, framed by h11."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEADER)
        self._buf = bytearray(_RECV)
        self._view = memoryview(self._buf)

    def _recv(self) -> memoryview:
        """The next bytes of the reply (empty at EOF), valid until the next read: h11 copies
        what it is given."""
        return self._view[: self.sock.recv_into(self._buf)]

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
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                readable = bool(poller.poll(0))
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

    def send(self, request: h11.Request, body: bytes | Iterable[bytes] | None) -> None:
        http = self.http
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
        head = http.send(request) or b""
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            # Head and a small body in one write: one TLS record, one segment with TCP_NODELAY.
            data = http.send(h11.Data(data=_octets(body))) if body else b""
            end = http.send(_END) or b""
            self.sock.sendall(b"".join((head, data or b"", end)))
            return
        self.sock.sendall(head)
        for chunk in body:
            # h11 checks the streamed octets against the declared Content-Length (RFC 9112
            # section 6.2) and passes our own buffers through, so big tensors are not copied.
            for piece in http.send_with_data_passthrough(h11.Data(data=_octets(chunk))) or ():
                self.sock.sendall(piece)
        end = http.send(_END)
        if end:
            self.sock.sendall(end)

    def receive(self, method: bytes, limit: int) -> tuple[int, dict[str, str], bytes, bool]:
        """The reply to the request just sent: status, headers, body, and whether the
        connection may go back to the pool."""
        http = self.http
        # Nothing of the reply can be buffered yet (a pooled connection had none): read first,
        # sparing h11 a round that can only ask for data.
        first = self._recv()
        start = first[:32].tobytes()  # enough of the reply to name a refused 101
        if not first:
            raise _Closed("the server closed the connection")
        http.receive_data(cast(bytes, first))  # h11 copies it (typed bytes, takes any buffer)
        status = 0
        headers: dict[str, str] = {}
        parts: list[bytes | bytearray] = []
        size = 0
        eof = False
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                if eof:  # h11 ends a close-delimited body at EOF; any other reply is cut short
                    raise _Lost(f"connection closed before a full reply: {exc}") from exc
                # ``start`` (the first read) holds the status line of a refused 101.
                if not status and _SWITCHING.match(start):
                    return 101, {}, b"", False
                raise
            kind = type(event)
            if kind is h11.Data:
                size += len(event.data)  # type: ignore[union-attr]
                if size > limit:
                    raise _Refused(f"response body over {limit} bytes")
                parts.append(event.data)  # type: ignore[union-attr]
            elif kind is h11.EndOfMessage:
                break
            elif event is h11.NEED_DATA:
                more = self._recv()
                eof = not more
                http.receive_data(cast(bytes, more))  # empty at EOF: h11 marks the close
            elif isinstance(event, h11.InformationalResponse):
                # A 1xx to a request that asked for none: handed up as the reply (the caller
                # refuses it); the final reply that may follow is never read, so never reuse.
                return event.status_code, _header_dict(event.headers), b"", False
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = _header_dict(event.headers)
                _check_framing(method, status, headers, limit)
            else:  # ConnectionClosed or PAUSED cannot come before EndOfMessage
                raise _Refused(f"unexpected {event!r} in the reply")
        reusable = (
            http.our_state is h11.DONE
            and http.their_state is h11.DONE
            # RFC 9112 section 9.3.2: replies come in request order, one per request; we
            # sent one request, so anything past this reply is not an answer to anything.
            and not http.trailing_data[0]
        )
        return status, headers, b"".join(parts), reusable


def _header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    # h11 gives names lower-cased and Content-Length duplicates already merged or refused.
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}


def _check_framing(method: bytes, status: int, headers: Mapping[str, str], limit: int) -> None:
    if "transfer-encoding" in headers and "content-length" in headers:
        raise _Refused("response has both Transfer-Encoding and Content-Length")
    # RFC 9112 section 6.3, rule 1: no body follows a HEAD, 204 or 304, whatever it declares.
    if method == b"HEAD" or status in (204, 304):
        return
    declared = headers.get("content-length")
    # h11 has checked it is 1 to 20 digits (RFC 9110 section 8.6: no sign, no spaces).
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
        self._requests: dict[tuple[str, str, tuple[tuple[str, str], ...], int | None], h11.Request]
        self._requests = {}
        self._verified = verified
        self._attestor = attestor
        self._attest_attempts = max(1, attest_attempts)
        self.refused = 0  # new connections closed because their peer failed attestation

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
        except (OSError, h11.ProtocolError, _Refused) as exc:
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
        return _Conn(sock)

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
    ) -> h11.Request:
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
    ) -> h11.Request:
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
            # h11 refuses a CR, LF or NUL in the target or a header (no request splitting).
            return h11.Request(
                method=method.encode("ascii"),
                target=path.encode("latin-1"),
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields],
            )
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
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
            except (OSError, h11.ProtocolError, _Refused) as exc:
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
