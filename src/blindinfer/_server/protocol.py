"""Connection limits uvicorn's httptools protocol does not have: a request-head size limit,
header/body/idle timeouts from the first byte on, and a cap on open connections.

Measured before this layer: a 200 MB header line was buffered whole (httptools accumulates a
header value until its end), a connection that completed TLS and then stayed silent or trickled
one byte at a time was held forever, and connections were not capped. Each connection moves
through four phases:

    idle  (waiting for a request; keep-alive)  -> head (bytes of a request head are arriving)
    head  (must complete within ``timeout`` of the request's first byte, <= ``max_head`` bytes)
    body  (each chunk must follow the previous one within ``timeout``)
    app   (the request is being served: run limits apply there, not here)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import select
import struct
import termios
import time
from collections.abc import Sized
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from blindinfer._polling import poll_until, socket_poller
from blindinfer._server.coalesce import write_reply
from blindinfer._wire.oip import HeaderCache

log = logging.getLogger("blindinfer.server")

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


class Lane(Protocol):
    """Requests the protocol answers itself, without an ASGI task (``InferEndpoint``).

    ``admit`` looks at a request whose head has arrived (and whose body will land in a
    ``DirectBody``) and returns a ticket, or None to send it down the ASGI path. ``finish``
    gets the whole body and returns the reply, or None: the ASGI path serves it after all
    (nothing has been written); ``done`` is told once that reply is written. All run on the
    event loop, and must not block it for long."""

    def admit(self, scope: dict[str, Any], connections: Sized) -> object | None: ...

    def finish(self, ticket: Any, body: bytearray, seen: HeaderCache) -> Reply | None: ...

    def done(self, ticket: Any, received: int, reply: Reply) -> None:
        """``finish``'s reply to a body of ``received`` bytes is written (metrics)."""
        ...

    def idle(self) -> bool:
        """Nothing is running or queued on the workers."""
        ...


@dataclass(frozen=True)
class ConnectionLimits:
    timeout: float = 30.0
    max_head: int = 64 * 1024
    max_connections: int = 4096
    # Inference bodies up to this size go straight into their final buffer (0: off).
    direct_body_max: int = 0
    # After the lane answers the only client on the port, its socket is polled this long for
    # the next request before the loop sleeps (0: off). See ``Guarded._spin``.
    spin_ns: int = 0


# At most this much is allocated ahead of the bytes that arrived (as in requests.read_limited).
PREALLOCATE_MAX = 1024 * 1024
DIRECT_BODY = "blindinfer.body"  # the scope extension the infer endpoint reads the body from
# The scope extension holding this connection's oip.HeaderCache (never shared between
# connections: a hit is faster than a miss, and must tell a client nothing about another's).
HEADER_CACHE = "blindinfer.headers"
# At most this many headers of up to this many bytes are kept per connection (~10 KB each).
HEADER_CACHE_SIZE, HEADER_CACHE_MAX = 8, 1024
# The scope extension holding this listener's open connections (a live set: len() is current).
CONNECTIONS = "blindinfer.connections"


class DirectBody:
    """One request body, written by the protocol straight into the buffer the endpoint parses.

    uvicorn appends each piece to a bytearray, pauses reading every 64 KiB until the app takes
    it, and copies it into a new bytes object when it does; the endpoint then copied it again.
    Here each piece is copied once, into place, with no pause (the size is bounded: the
    declared length is at most ``direct_body_max``), and the app wakes once, when the body is
    complete. Memory still follows the bytes that arrived, not the length declared."""

    __slots__ = ("buf", "declared", "pos")

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self.buf = bytearray(min(declared, PREALLOCATE_MAX))
        self.pos = 0

    def write(self, chunk: bytes) -> None:
        end = self.pos + len(chunk)
        if end <= len(self.buf):
            self.buf[self.pos : end] = chunk
        else:
            del self.buf[self.pos :]
            self.buf += chunk
        self.pos = end

    def body(self) -> bytearray:
        if self.pos != len(self.buf):
            del self.buf[self.pos :]
        return self.buf


def _direct_candidate(scope: dict[str, Any], limit: int) -> DirectBody | None:
    """A DirectBody for ``POST .../infer`` with a Content-Length of at most ``limit``."""
    if limit <= 0 or scope.get("method") != "POST" or not scope.get("path", "").endswith("/infer"):
        return None
    declared = None
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            if declared is not None or not value.isdigit():
                return None  # let the endpoint refuse it with its own message
            declared = int(value)
        elif name == b"transfer-encoding":
            return None
    if declared is None or declared > limit:
        return None
    return DirectBody(declared)


ABORT_AFTER_S = 1.0


def _unsent(transport: asyncio.BaseTransport) -> int:
    """Bytes written but not yet acknowledged by the peer: the transport's buffer plus the
    kernel's send queue (TIOCOUTQ, Linux)."""
    pending = 0
    with contextlib.suppress(AttributeError, NotImplementedError):
        pending = int(transport.get_write_buffer_size())  # type: ignore[attr-defined]
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            pending += struct.unpack("i", raw)[0]
    return pending


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


_STATUS_LINES: dict[int, bytes] = {}


def _response_head(
    status: int, headers: list[tuple[bytes, bytes]], length: int, keep_alive: bool
) -> bytes:
    """A response head as uvicorn writes it (status line, headers, Content-Length last)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
    parts = [line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"content-length: %d\r\n" % length)
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_INTERNAL_ERROR: Reply = (
    500,
    [(b"content-type", b"application/json")],
    b'{"error":"internal server error"}',
)


def guarded(base: type[Any], limits: ConnectionLimits, lane: Lane | None = None) -> type[Any]:
    """A subclass of a uvicorn HTTP protocol class that enforces ``limits``, and answers the
    requests ``lane`` admits itself (the inference hot path: no ASGI task, scope messages or
    second write; ``infer.py``)."""

    class Guarded(base):  # type: ignore[misc, valid-type]
        _limits = limits

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._deferring = False
            self._deferred: tuple[Any, Any] | None = None  # (cycle, app) not started yet
            self._ticket: tuple[object, Any, Any] | None = None  # (ticket, cycle, app)
            self._direct: DirectBody | None = None
            self._poller: select.poll | None = None  # this socket, for _spin
            self._spinning = False
            self._deadline = 0.0
            self._phase = "idle"
            self._head_bytes = 0
            self._timer: asyncio.TimerHandle | None = None
            self._refused = False
            self._pending: int | None = None
            self._headers = HeaderCache(HEADER_CACHE_SIZE, HEADER_CACHE_MAX)
            super().connection_made(transport)
            if len(self.connections) > self._limits.max_connections:
                self._refuse(503, "Service Unavailable", "the server has too many connections")
                return
            self._arm()

        # --- timers ---------------------------------------------------------------------------

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(self._limits.timeout, self._on_timeout)

        def _extend(self) -> None:
            """Push the running timer's deadline back (per body piece: no timer churn)."""
            self._deadline = self.loop.time() + self._limits.timeout
            if self._timer is None:
                self._arm()

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _on_timeout(self) -> None:
            self._timer = None
            left = self._deadline - self.loop.time()
            if self._phase in ("body", "drain") and left > 0:
                self._timer = self.loop.call_later(left, self._on_timeout)
                return
            if self._phase in ("head", "body"):
                self._refuse(
                    408,
                    "Request Timeout",
                    f"the request did not arrive within {self._limits.timeout:g} s",
                )
            elif not self.transport.is_closing():
                self.transport.close()
                self.loop.call_later(ABORT_AFTER_S, self.transport.abort)

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._refused = True
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_raw_response(status, reason, message))
                self.transport.close()
                # A TLS close waits for the peer's close_notify (up to 30 s in asyncio); a peer
                # that keeps sending instead must not hold the connection that long.
                self.loop.call_later(ABORT_AFTER_S, self.transport.abort)

        # --- parser feed and callbacks --------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            counting = self._phase in ("idle", "head")
            if self._phase == "idle":
                self._phase = "head"
                self._head_bytes = 0
                self._arm()  # the whole head must arrive within the timeout
            if counting:
                self._head_bytes += len(data)
            super().data_received(data)
            if counting and self._phase == "head" and self._head_bytes > self._limits.max_head:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"the request head is over {self._limits.max_head} bytes",
                )

        def on_headers_complete(self) -> None:
            self._phase = "body"
            # The head's timer runs on with the body's deadline (no cancel and re-arm).
            self._extend()
            # A request parsed in the same read as a reply the lane just wrote must not be
            # cut by that reply's keep-alive timer.
            self._unset_keepalive_if_required()
            self._deferring = lane is not None
            try:
                super().on_headers_complete()
            finally:
                self._deferring = False
            # The app's task exists but has not run: it sees the extension in its scope.
            self._direct = _direct_candidate(self.scope, self._limits.direct_body_max)
            extensions = self.scope.setdefault("extensions", {})
            extensions[CONNECTIONS] = self.connections
            extensions[HEADER_CACHE] = self._headers
            if self._direct is not None:
                extensions[DIRECT_BODY] = self._direct
            deferred, self._deferred = self._deferred, None
            if deferred is not None:
                cycle, app = deferred
                ticket = None
                if lane and self._direct is not None and not cycle.waiting_for_100_continue:
                    ticket = lane.admit(self.scope, self.connections)
                if ticket is None:
                    super()._start_asgi_task(cycle, app)
                else:
                    self._ticket = (ticket, cycle, app)

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if self._deferring:  # on_headers_complete decides once the scope is complete
                self._deferred = (cycle, app)
            else:
                super()._start_asgi_task(cycle, app)

        def on_body(self, body: bytes) -> None:
            self._extend()
            direct = self._direct
            if direct is None:
                super().on_body(body)
            elif not self.cycle.response_complete:  # answered early (401, 404): drop the rest
                direct.write(body)

        def on_message_complete(self) -> None:
            direct, self._direct = self._direct, None
            ticket, self._ticket = self._ticket, None
            if self._phase == "drain":  # the rest of a body answered early has been read
                self._phase = "idle"
                self._disarm()
            else:
                self._phase = "app"
                self._disarm()
            super().on_message_complete()
            if ticket is not None and direct is not None:
                self._answer(direct, *ticket)

        def _answer(self, direct: DirectBody, ticket: object, cycle: Any, app: Any) -> None:
            """Serve a request the lane admitted: the reply, or the ASGI path after all."""
            assert lane is not None  # only admitted tickets come here
            request_body = direct.body()
            try:
                reply = lane.finish(ticket, request_body, self._headers)
            except Exception as exc:  # the lane's own failure: the type only, never the text
                log.error("internal error in the inference lane: %s", type(exc).__name__)
                reply = _INTERNAL_ERROR
            if reply is None:
                super()._start_asgi_task(cycle, app)
                return
            status, headers, body = reply
            keep_alive = cycle.keep_alive
            head = _response_head(
                status, self.server_state.default_headers + headers, len(body), keep_alive
            )
            cycle.response_started = cycle.response_complete = True
            write_reply(self.transport, head, body)
            if not keep_alive:
                self.transport.close()
            self.on_response_complete()
            lane.done(ticket, len(request_body), reply)
            if keep_alive:
                self._spin_soon()

        # --- waiting for a lone client by polling -----------------------------------------

        def _spin_soon(self) -> None:
            """Poll this connection's socket for the next request before the loop sleeps.

            A client calling in a loop sends its next request within ~0.1 ms of a reply; a
            loop asleep meanwhile is a halted vCPU to wake when it comes, which cost more than
            a small model's whole request on the test VM (bench/README.md, "Third pass").
            Done after the current callbacks (a pipelined request may already be parsed), and
            only while this is the only connection on the port with nothing on the workers:
            then nobody waits for the loop but a new connection, for at most ``spin_ns``.
            Never while a body arrives: a peer trickling its body would keep a core spinning
            (and polling there showed no gain for big bodies)."""
            if self._limits.spin_ns and not self._spinning:
                self._spinning = True
                self.loop.call_soon(self._spin)

        def _spin(self) -> None:
            self._spinning = False
            if self.transport.is_closing() or len(self.connections) > 1:
                return
            cycle = self.cycle
            waiting = self._phase == "idle" and (cycle is None or cycle.response_complete)
            if not waiting or lane is None or not lane.idle():
                return
            poller = self._poller
            if poller is None:
                sock = self.transport.get_extra_info("socket")
                if sock is None:
                    return
                poller = self._poller = socket_poller(sock.fileno())
            poll_until(poller, time.perf_counter_ns() + self._limits.spin_ns)

        def on_response_complete(self) -> None:
            # uvicorn arms its keep-alive timer here (timeout_keep_alive = the same timeout).
            if self._phase == "body":
                # Answered before the body ended (413, 401): what follows is still that body,
                # read and dropped under the body timeout, never counted as a request head.
                self._phase = "drain"
                super().on_response_complete()
                self._arm()
                return
            self._phase = "idle"
            self._disarm()
            super().on_response_complete()

        def timeout_keep_alive_handler(self) -> None:
            # uvicorn arms this when the app has *written* the response, not when the peer has
            # read it: a big response to a slow reader would be cut mid-body. Wait while the
            # peer keeps draining; a peer that stops reading for a whole timeout is dropped.
            # (The TLS transport reports an empty write buffer while its own backlog is full,
            # so progress is read off the kernel's send queue.)
            pending = _unsent(self.transport)
            if pending and pending != self._pending:
                self._pending = pending
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
                return
            self._pending = None
            super().timeout_keep_alive_handler()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    Guarded.__name__ = f"Guarded{base.__name__}"
    return Guarded
