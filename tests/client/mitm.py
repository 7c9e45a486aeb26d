"""A man in the middle for tests: a loopback proxy in front of a real server.

Modes:
- ``passthrough``: relays raw TCP, so TLS runs end to end with the real server;
- ``terminate``: ends TLS itself with its own certificate, records every plaintext byte the
  client sends, and relays it to the real server over a second TLS connection (so it can also
  relay the real server's evidence).
``drop_connections()`` closes every relayed connection, forcing the client to reconnect.
It runs an asyncio loop in a thread (asyncio's TLS is memory-BIO based, safe for full duplex).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from blindinfer._server.tls import generate_identity


class Mitm:
    def __init__(self, upstream_port: int, mode: str) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.seen = bytearray()  # plaintext (terminate) or raw bytes (passthrough) from clients
        self.tls_attempts = 0  # client connections the proxy tried to end TLS on
        self.handshakes = 0  # ...and those whose handshake the client completed
        self._server_ctx = generate_identity().server_context()
        self._client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._client_ctx.check_hostname = False
        self._client_ctx.verify_mode = ssl.CERT_NONE
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._plain = await asyncio.start_server(self._handle_plain, "127.0.0.1", 0)
        self.port = self._plain.sockets[0].getsockname()[1]

    async def _handle_plain(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Decide per connection, so the mode can change while the proxy runs.
        up_ssl = None
        if self.mode == "terminate":
            self.tls_attempts += 1
            try:
                await writer.start_tls(self._server_ctx)
            except (ssl.SSLError, OSError, ConnectionError):
                writer.close()
                return
            self.handshakes += 1
            up_ssl = self._client_ctx
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port, ssl=up_ssl
            )
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pump(reader, up_writer, True),
            self._pump(up_reader, writer, False),
            return_exceptions=True,
        )

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if record:
                    self.seen += data
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    def drop_connections(self) -> None:
        async def drop() -> None:
            writers, self._writers = self._writers, []
            for w in writers:
                w.close()

        asyncio.run_coroutine_threadsafe(drop(), self._loop).result(5)

    def close(self) -> None:
        self.drop_connections()

        async def stop() -> None:
            self._plain.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextmanager
def mitm(upstream_port: int, mode: str = "terminate") -> Iterator[Mitm]:
    proxy = Mitm(upstream_port, mode)
    try:
        yield proxy
    finally:
        proxy.close()
