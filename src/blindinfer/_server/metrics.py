"""Operational metrics: Prometheus text on a separate port, and OIP per-model statistics.

The metrics port is unattested by design (a scraper cannot verify evidence) and plain HTTP, so
it discloses nothing a client could not already learn from ``/v2``: no tensor value, no token,
no request or model name in labels. Labels are fixed, closed sets (API, route class, status
class); per-model figures are served on the attested port instead
(``GET /v2/models/{ref}/stats``, the KServe/Triton statistics extension shape).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Route classes: a closed set, so a client cannot mint label values (or leak a path) by
# requesting odd URLs.
ROUTES = ("infer", "metadata", "health", "attestation", "models", "upload", "delete", "other")
_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


def route_of(scope: Scope) -> str:
    """The route class of a native-API request (never the path itself)."""
    path: str = scope.get("path", "")
    method: str = scope.get("method", "")
    if path.startswith("/v2/models/"):
        if path.endswith("/infer") and method == "POST":
            return "infer"
        return "health" if path.endswith("/ready") else "metadata"
    if path.startswith("/v2/health") or path == "/v2":
        return "health"
    if path == "/blindinfer/v1/attestation":
        return "attestation"
    if path.startswith("/blindinfer/v1/models"):
        return {"POST": "upload", "DELETE": "delete"}.get(method, "models")
    return "other"


@dataclass
class _Timing:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """One model's counters for ``/v2/models/{ref}/stats``."""

    success: _Timing
    fail: _Timing
    last_inference_ms: int = 0

    def to_json(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": "1",
            "last_inference": self.last_inference_ms,
            "inference_count": self.success.count,
            "execution_count": self.success.count,
            "inference_stats": {"success": self.success.to_json(), "fail": self.fail.to_json()},
        }


class Metrics:
    """Every counter the server keeps; cheap on the hot path (a lock-free dict hit per call)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "blindinfer_requests", "Requests answered", ("api", "route", "status"), registry=r
        )
        self.latency = Histogram(
            "blindinfer_request_seconds",
            "Time from request start to the last response byte written",
            ("api", "route"),
            buckets=_BUCKETS,
            registry=r,
        )
        self.bytes = Counter(
            "blindinfer_bytes", "HTTP body bytes", ("api", "direction"), registry=r
        )
        self.in_flight = Gauge(
            "blindinfer_inference_queue_depth",
            "Inference and model-loading jobs waiting for or running on a worker",
            registry=r,
        )
        self.models = Gauge("blindinfer_models_loaded", "Models being served", registry=r)
        self.evidence_age = Gauge(
            "blindinfer_evidence_age_seconds", "Age of the cached startup evidence", registry=r
        )
        self.collateral_expiry = Gauge(
            "blindinfer_collateral_expiry_timestamp_seconds",
            "When the earliest item of the attached collateral expires (Unix time; 0 if none)",
            registry=r,
        )
        self._stats: dict[str, ModelStats] = {}
        self._lock = threading.Lock()

    # -- per-model statistics -------------------------------------------------------------------

    def record_run(self, model_id: str, seconds: float, ok: bool) -> None:
        stats = self._stats.get(model_id)
        if stats is None:
            with self._lock:
                stats = self._stats.setdefault(model_id, ModelStats(_Timing(), _Timing()))
        (stats.success if ok else stats.fail).add(seconds)
        if ok:
            stats.last_inference_ms = int(time.time() * 1000)

    def model_stats(self, model_id: str) -> ModelStats:
        return self._stats.get(model_id) or ModelStats(_Timing(), _Timing())

    def forget(self, model_id: str) -> None:
        self._stats.pop(model_id, None)

    # -- exposition -----------------------------------------------------------------------------

    def exposition(self, gauges: Callable[[Metrics], None] | None = None) -> bytes:
        if gauges is not None:
            gauges(self)
        return generate_latest(self.registry)

    def recorder(self, api: str) -> RequestRecorder:
        return RequestRecorder(self, api)

    def instrument(self, app: ASGIApp, api: str) -> ASGIApp:
        """Wrap an ASGI app: status, latency and bytes per request, by route class."""
        recorder = self.recorder(api)
        received, sent = recorder.received, recorder.sent

        async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = [0]

            async def counting_receive() -> Message:
                message = await receive()
                body = message.get("body")
                if body:
                    received.inc(len(body))
                return message

            async def counting_send(message: Message) -> None:
                kind = message["type"]
                if kind == "http.response.start":
                    status[0] = int(message["status"])
                elif kind == "http.response.body" and message.get("body"):
                    sent.inc(len(message["body"]))
                await send(message)

            try:
                await app(scope, counting_receive, counting_send)
            finally:
                recorder.record(route_of(scope), status[0], time.perf_counter() - start)

        return wrapper


class RequestRecorder:
    """One API's request series: count by (route class, status class), latency, body bytes.

    ``Metrics.instrument`` feeds it from ASGI messages; the protocol's inference lane
    (``protocol.py``), which answers without an ASGI cycle, calls it directly."""

    def __init__(self, metrics: Metrics, api: str) -> None:
        self._api = api
        self._metrics = metrics
        self.received = metrics.bytes.labels(api, "in")
        self.sent = metrics.bytes.labels(api, "out")
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def record(self, route: str, status: int, seconds: float) -> None:
        key = (route, status // 100)
        pair = self._children.get(key)
        if pair is None:
            # labels() validates and locks on every call (~2 us): the few (route, status
            # class) pairs keep their series, looked up once.
            label = f"{status // 100}xx" if status else "none"
            pair = self._children[key] = (
                self._metrics.requests.labels(self._api, route, label),
                self._metrics.latency.labels(self._api, route),
            )
        pair[0].inc()
        pair[1].observe(seconds)


def collateral_expiry(collateral: MutableMapping[str, bytes] | Any) -> datetime | None:
    """The earliest notAfter among the certificates and CRLs in attached collateral, or None.

    Only what can be read without verifying: a scraper wants to know when to worry, the client
    still verifies everything itself."""
    from cryptography import x509

    times: list[datetime] = []
    for raw in dict(collateral).values():
        for loader in (x509.load_pem_x509_certificates, _der_certificate):
            try:
                times += [c.not_valid_after_utc for c in loader(raw)]
                break
            except ValueError:
                continue
    dcap = dict(collateral).get("dcap")
    if dcap:
        times += _dcap_next_updates(dcap)
    return min(times) if times else None


def _der_certificate(raw: bytes) -> list[Any]:
    from cryptography import x509

    return [x509.load_der_x509_certificate(raw)]


def _dcap_next_updates(raw: bytes) -> list[datetime]:
    """nextUpdate of the DCAP TCB info and QE identity bodies (Intel PCS v4: ISO 8601 UTC)."""
    out: list[datetime] = []
    try:
        doc = json.loads(raw)
        for key in ("tcb_info", "qe_identity"):
            body = json.loads(doc[key])
            out.append(datetime.fromisoformat(body["nextUpdate"]).astimezone(UTC))
    except (ValueError, TypeError, KeyError):
        pass
    return out


def metrics_app(metrics: Metrics, gauges: Callable[[Metrics], None]) -> ASGIApp:
    """The metrics port's whole API: ``GET /metrics``; everything else 404."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            status, body, ctype = 200, metrics.exposition(gauges), CONTENT_TYPE_LATEST
        else:
            status, body, ctype = 404, b"not found\n", "text/plain; charset=utf-8"
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""}
        )

    return app
