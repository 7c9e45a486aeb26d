"""Everything a running server shares between its API surfaces (native, BlindAI compatibility)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from blindinfer._engine.limits import RunHandle
from blindinfer._engine.registry import ModelRegistry
from blindinfer._server.config import Settings
from blindinfer._server.metrics import Metrics, collateral_expiry
from blindinfer._server.tls import TlsIdentity
from blindinfer._tee.base import TeeBackend
from blindinfer.attestation._binding import report_data_for
from blindinfer.attestation._claims import Evidence

T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# Startup evidence is re-generated this often, so collateral attached to it stays fresh.
EVIDENCE_MAX_AGE_S = 3600.0


@dataclass
class ServerState:
    settings: Settings
    backend: TeeBackend
    registry: ModelRegistry
    tls: TlsIdentity
    owner_token_sha256: bytes | None
    executor: ThreadPoolExecutor
    # Evidence generation (a device round trip, seconds on some TEEs) gets its own thread, so a
    # flood of attestation requests queues there and never starves inference workers.
    attest_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="attest")
    )
    stop_event: asyncio.Event | None = None  # set by the runner; set it to stop serving
    metrics: Metrics = field(default_factory=Metrics)
    running: int = 0  # blocking calls on the workers right now (read by the inline policy)
    _evidence: Evidence | None = None
    _evidence_time: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def evidence(self, nonce: bytes | None = None) -> Evidence:
        """Evidence binding this server's certificate (and the client's nonce, when given)."""
        if nonce is not None:
            return self.backend.get_evidence(report_data_for(self.tls.certificate_der, nonce))
        with self._lock:
            if (
                self._evidence is None
                or time.monotonic() - self._evidence_time > EVIDENCE_MAX_AGE_S
            ):
                self._evidence = self.backend.get_evidence(
                    report_data_for(self.tls.certificate_der)
                )
                self._evidence_time = time.monotonic()
            return self._evidence

    def is_owner(self, token: str | None) -> bool:
        if token is None or self.owner_token_sha256 is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.owner_token_sha256)

    async def evidence_async(self, nonce: bytes | None = None) -> Evidence:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.attest_executor, self.evidence, nonce)

    async def run_cancellable(
        self, work: Callable[[Callable[[RunHandle], None]], T], receive: Receive
    ) -> T:
        """Run ``work(on_start)`` on a worker; if the client disconnects meanwhile, the run it
        started (``on_start`` gets its handle) is stopped and the worker is free again."""
        handles: list[RunHandle] = []
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, work, handles.append)
        watcher: asyncio.Future[Any] = asyncio.ensure_future(receive())
        self.metrics.in_flight.inc()
        self.running += 1
        try:
            done, _ = await asyncio.wait([future, watcher], return_when=asyncio.FIRST_COMPLETED)
            if future not in done and watcher.result().get("type") == "http.disconnect":
                for handle in handles:
                    handle.stop("cancelled")
            return await future
        finally:
            watcher.cancel()
            self.running -= 1
            self.metrics.in_flight.dec()

    async def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking work (inference, model loading, evidence) off the event loop."""
        loop = asyncio.get_running_loop()
        self.metrics.in_flight.inc()
        self.running += 1
        try:
            return await loop.run_in_executor(self.executor, fn, *args)
        finally:
            self.running -= 1
            self.metrics.in_flight.dec()

    def update_gauges(self, metrics: Metrics) -> None:
        """Scrape-time gauges: loaded models, evidence age, collateral expiry."""
        metrics.models.set(len(self.registry.list()))
        evidence = self._evidence
        if evidence is None:
            return
        metrics.evidence_age.set(time.monotonic() - self._evidence_time)
        expiry = collateral_expiry(evidence.collateral)
        metrics.collateral_expiry.set(expiry.timestamp() if expiry else 0)


@dataclass(frozen=True)
class Listener:
    """One listening socket the runner starts: an ASGI app on host:port, TLS when ``ssl``."""

    name: str
    app: object  # an ASGI application
    host: str
    port: int
    ssl: object | None  # ssl.SSLContext, or None for plain HTTP
    http_protocol: object | None = None  # a uvicorn HTTP protocol class; None = "auto"
