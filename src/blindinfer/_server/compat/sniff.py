"""One port, plain HTTP and HTTPS: the first byte of a connection decides (0x16 starts a TLS
handshake record, RFC 8446 section 5.1)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast

from blindinfer._server._internals import start_tls_with

TLS_HANDSHAKE = 0x16  # TLS record content type "handshake" (RFC 8446 section 5.1)


# --- one port, plain HTTP and HTTPS ---------------------------------------------------------------


def sniffing_protocol(
    base: type[asyncio.Protocol], context: ssl.SSLContext, first_byte_timeout: float = 30.0
) -> type:
    """A uvicorn HTTP protocol class that serves both plain HTTP and HTTPS on one port.

    The first bytes of each connection decide: a TLS handshake record (content type 0x16,
    RFC 8446 section 5.1) gets a TLS layer before ``base`` (uvicorn's HTTP protocol), anything
    else goes to ``base`` as plain HTTP, replayed with ``data_received``. Works on asyncio and
    uvloop transports. Pass the result as ``uvicorn.Config(http=...)``.
    """

    class TlsSniffingProtocol(asyncio.Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._args, self._kwargs = args, kwargs
            self._transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._transport = cast(asyncio.Transport, transport)  # uvloop's: not subclasses
            # A peer that connects and says nothing is dropped (the TLS layer and ``base`` have
            # their own timeouts once the first byte has decided which one serves it).
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(first_byte_timeout, self._silent)

        def _silent(self) -> None:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._timer.cancel()
            self._transport = None

        def data_received(self, data: bytes) -> None:
            transport = self._transport
            if transport is None or not data:
                return
            self._transport = None
            self._timer.cancel()
            inner = base(*self._args, **self._kwargs)
            if data[0] == TLS_HANDSHAKE:
                start_tls_with(transport, inner, context, data)
                return
            transport.set_protocol(inner)
            inner.connection_made(transport)
            inner.data_received(data)

        def eof_received(self) -> bool | None:
            return None  # closed before a single byte: nothing to serve

    return TlsSniffingProtocol
