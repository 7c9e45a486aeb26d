"""A lean HTTP/1.1 keep-alive transport over the standard library, for the SDK's hot path.

httpx cost about 0.45 ms per request on this kind of machine, more than the TLS and the server
together; ``http.client`` over a pool of kept-alive sockets costs a fraction of that. Every
socket is opened through the caller's SSLContext, so the pinned-certificate check runs in each
handshake.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from blindinfer.errors import BindingError, BlindInferError

# Errors that mean a kept-alive connection was closed by the server while idle: the request
# never reached it, so sending it again on a fresh connection is safe.
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    peer_certificate: bytes | None = None


class Transport:
    def __init__(self, base_url: str, context: ssl.SSLContext, timeout: float) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 443
        self._context = context
        self._timeout = timeout
        self._idle: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _new(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout, context=self._context
        )
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise BindingError(
                f"{self.base_url} presented a certificate other than the attested one: "
                "possible man in the middle; no data was sent"
            ) from exc
        except BindingError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise BlindInferError(f"cannot reach {self.base_url}: {exc}") from exc
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _take(self) -> tuple[http.client.HTTPSConnection, bool]:
        with self._lock:
            if self._closed:
                raise BlindInferError("this connection is closed")
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def _give(self, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        peer_certificate: bool = False,
    ) -> Reply:
        """Send one request; a stale pooled connection is replaced once, transparently."""
        for attempt in range(2):
            conn, reused = self._take()
            try:
                conn.request(method, path, body=body, headers=dict(headers or {}))
                response = conn.getresponse()
                data = response.read()
            except _STALE as exc:
                conn.close()
                if reused and attempt == 0 and not _is_iterator(body):
                    continue
                raise BlindInferError(f"{self.base_url} closed the connection: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise BlindInferError(f"request to {self.base_url}{path} failed: {exc}") from exc
            peer = conn.sock.getpeercert(True) if peer_certificate and conn.sock else None
            if response.will_close:
                conn.close()
            else:
                self._give(conn)
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                data,
                peer,
            )
        raise AssertionError("unreachable")

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
