"""The one fence around private internals of uvicorn and asyncio that the server relies on.

Three measured features need more than uvicorn's and asyncio's public API:

- ``server/protocol.py`` and ``server/coalesce.py`` subclass uvicorn's httptools protocol and
  override its parser callbacks, keep-alive handler and task start (connection limits,
  one-write replies, and the inference lane, which answers a request in place of the request
  cycle's task and so sets that cycle's response state itself);
- the TLS context is set on ``uvicorn.Config`` after ``load()``, because uvicorn only takes key
  *files* and the server's key must never touch a disk;
- the BlindAI port sniffer builds ``asyncio.sslproto.SSLProtocol`` by hand to replay the
  ClientHello bytes it has already read (``loop.start_tls`` cannot take them).

Everything that touches those internals lives here, and :func:`problems` says what has moved;
``tests/server/test_internals.py`` fails loudly when a uvicorn or Python upgrade moves any of it
(pyproject pins uvicorn's upper bound for the same reason).
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from asyncio import sslproto
from typing import Any

import uvicorn

# uvicorn protocol members overridden or read by server/protocol.py and server/coalesce.py.
PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "timeout_keep_alive_handler",
    "_start_asgi_task",
    "_unset_keepalive_if_required",
)
PROTOCOL_ATTRIBUTES = ("loop", "transport", "connections", "timeout_keep_alive", "server_state")
# Request cycle members the inference lane reads or sets when it answers without the cycle's
# task (server/protocol.py, Guarded._answer).
CYCLE_ATTRIBUTES = (
    "keep_alive",
    "waiting_for_100_continue",
    "response_started",
    "response_complete",
)
SSLPROTOCOL_PARAMETERS = (
    "loop",
    "app_protocol",
    "sslcontext",
    "waiter",
    "server_side",
    "ssl_handshake_timeout",
)


def http_protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol (h11's where httptools is missing)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol  # type: ignore[no-any-return]
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol  # type: ignore[no-any-return]


def load_config(config: uvicorn.Config, context: object | None) -> None:
    """``config.load()``, then the in-memory TLS context (uvicorn reads ``config.ssl`` when it
    creates the listening server)."""
    config.load()
    config.ssl = context  # type: ignore[assignment]


def start_tls_with(
    transport: asyncio.Transport,
    inner: asyncio.Protocol,
    context: ssl.SSLContext,
    first: bytes,
    handshake_timeout: int = 15,
) -> None:
    """Put a server-side TLS layer between ``transport`` and ``inner``, replaying ``first``.

    This builds the layer ``loop.start_tls`` builds (``SSLProtocol``, a buffered protocol since
    Python 3.11) and feeds it the ClientHello bytes already consumed. ``inner.connection_made``
    runs once the handshake is done."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # handshake errors: logged
    tls = sslproto.SSLProtocol(
        loop, inner, context, waiter, server_side=True, ssl_handshake_timeout=handshake_timeout
    )
    transport.set_protocol(tls)
    tls.connection_made(transport)
    view = memoryview(first)
    while view:
        buf = tls.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        tls.buffer_updated(n)
        view = view[n:]


def problems() -> list[str]:
    """What of the internals above has moved in the installed uvicorn / Python (empty: none)."""
    out: list[str] = []
    proto = http_protocol_class()
    out += [f"{proto.__name__}.{m} is gone" for m in PROTOCOL_METHODS if not hasattr(proto, m)]
    instance = _protocol_instance(proto)
    out += [
        f"{proto.__name__} instances have no {a!r}"
        for a in PROTOCOL_ATTRIBUTES
        if not hasattr(instance, a)
    ]
    cycle = _cycle_class(proto)
    if cycle is not None:
        source = inspect.getsource(cycle)
        out += [
            f"{cycle.__name__} no longer sets {a!r}"
            for a in CYCLE_ATTRIBUTES
            if f"self.{a} =" not in source
        ]
    if "config.ssl" not in inspect.getsource(uvicorn.Server.startup):
        out.append("uvicorn.Server.startup no longer reads config.ssl")
    params = inspect.signature(sslproto.SSLProtocol).parameters
    out += [
        f"SSLProtocol() lost parameter {p!r}" for p in SSLPROTOCOL_PARAMETERS if p not in params
    ]
    if "ssl_handshake_timeout" not in params:
        out.append("SSLProtocol() lost parameter 'ssl_handshake_timeout'")
    out += [
        f"SSLProtocol.{m} is gone (no longer a buffered protocol)"
        for m in ("get_buffer", "buffer_updated")
        if not hasattr(sslproto.SSLProtocol, m)
    ]
    return out


def _cycle_class(proto: type[asyncio.Protocol]) -> type | None:
    """The request cycle class of ``proto``'s module (None: the h11 fallback has no lane)."""
    module = inspect.getmodule(proto)
    cycle = getattr(module, "RequestResponseCycle", None)
    return cycle if isinstance(cycle, type) else None


def _protocol_instance(proto: type[asyncio.Protocol]) -> Any:
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never run
        pass

    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        return proto(config=config, server_state=ServerState(), app_state={}, _loop=loop)  # type: ignore[call-arg]
    finally:
        loop.close()
