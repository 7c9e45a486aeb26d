"""The inference hot path as a raw ASGI endpoint: no framework objects per request.

``POST /v2/models/{ref}/infer`` is the one route whose latency users feel on every call, so it
bypasses Starlette's Request/Response machinery (measured ~0.1 ms per request here). Models that
run in well under a millisecond run inline on the event loop (a hop to a worker thread and back
costs more than the model); the rest run in the worker pool, where onnxruntime releases the GIL.

A request whose run will be inline does not even take the ASGI path: the protocol asks
``InferEndpoint.admit`` when its head has arrived and, when admitted, answers it itself once
the body is complete (``finish``; ``protocol.Lane``). No task, scope messages, metrics
closures or second write: ~12 us less per request hot, and the same bytes on the wire
(``tests/server/test_lane.py``). Every check and refusal is the ASGI path's own code.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sized
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import numpy as np

from blindinfer._engine.limits import RunHandle
from blindinfer._engine.registry import LoadedModel
from blindinfer._receipts import ReceiptSigner
from blindinfer._server.protocol import CONNECTIONS, DIRECT_BODY, HEADER_CACHE
from blindinfer._server.requests import (
    check_run_access,
    content_length,
    read_direct,
    read_limited,
)
from blindinfer._server.state import ServerState
from blindinfer._wire import oip
from blindinfer.attestation import Claims, Evidence, verify_evidence
from blindinfer.errors import (
    AttestationError,
    InvalidInput,
    LimitExceeded,
    ModelNotFound,
    PayloadTooLarge,
    ServerError,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("blindinfer.server")

MODEL_VERSION = "1"
PREFIX = "/v2/models/"
SUFFIX = "/infer"
# Below this smoothed run time, and for requests below this size (a tiny model fed a huge batch
# is not tiny), a model runs inline on the event loop; everything else goes to the workers.
INLINE_RUN_S = 0.0002
INLINE_MAX_BODY = 64 * 1024
_EWMA = 0.2


def infer_ref(scope: Scope) -> tuple[str, str | None] | None:
    """(model reference, version or None) when the request is an inference call, else None.

    Both OIP forms: /v2/models/{ref}/infer and /v2/models/{ref}/versions/{version}/infer."""
    path: str = scope["path"]
    if scope["method"] != "POST" or not path.startswith(PREFIX) or not path.endswith(SUFFIX):
        return None
    parts = path[len(PREFIX) : -len(SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return unquote(parts[0]), None
    if len(parts) == 3 and parts[0] and parts[1] == "versions":
        return unquote(parts[0]), unquote(parts[2])
    return None


def check_version(ref: str, version: str | None) -> None:
    """Every model has exactly one version, "1" (OIP lets clients name it)."""
    if version is not None and version != MODEL_VERSION:
        raise ModelNotFound(f"model {ref!r} has no version {version!r}; its only version is 1")


# An inline run past this is stopped and rerun on a worker, and its model never runs inline
# again: a tiny model whose loop count is an input must not hold the event loop.
INLINE_MAX_SECONDS = 0.01
# A model whose runs usually take up to INLINE_ALONE_S also runs on the event loop when its
# request is all the server is doing (the only open connection on this port, nothing on the
# workers): a hop to a worker and back wakes two idle threads, which cost 0.6 ms per ResNet-18
# call and 0.8 ms per BERT-shaped call on this 2-vCPU VM (bench.run --baseline, always inline
# against workers). Nobody waits meanwhile but a new connection's first bytes, for at most
# INLINE_ALONE_CAP times the model's usual time plus the run watchdog's tick (<= 0.25 s): a run
# past that is stopped, redone on a worker, and its model is never run inline again.
INLINE_ALONE_S = 0.1
INLINE_ALONE_CAP = 4.0
INLINE_ALONE_MAX_BODY = 16 * 1024 * 1024

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


class InferEndpoint:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._run_time: dict[str, float] = {}  # model_id -> smoothed seconds per run (clipped)
        self._typical: dict[str, float] = {}  # model_id -> smoothed seconds per run
        self._never_inline: set[str] = set()
        self._signer: ReceiptSigner | None = None  # made on the first receipt
        self._own_claims: tuple[Evidence, Claims | None] | None = None
        self._recorder = state.metrics.recorder("native")

    def _work(
        self,
        model: LoadedModel,
        body: bytearray,
        header_len: int | None,
        on_start: Callable[[RunHandle], None] | None = None,
        max_seconds: float | None = None,
        seen: oip.HeaderCache | None = None,
    ) -> Reply:
        """Parse, run and encode: all per-byte work, on a worker for anything but tiny calls.
        ``seen``: the connection's own cache of JSON headers read and written."""
        req = oip.parse_infer_request(body, header_len, seen)
        start = time.perf_counter()
        outputs = self.state.registry.run(model, req.inputs, req.outputs, on_start, max_seconds)
        # Clipped so that one slow sample (a noisy neighbour, a page fault) cannot push a
        # tiny model off the inline path for the next several requests.
        took = time.perf_counter() - start
        elapsed = min(took, 2 * INLINE_RUN_S)
        model_id = model.info.model_id
        old = self._run_time.get(model_id, elapsed)
        self._run_time[model_id] = old + _EWMA * (elapsed - old)
        typical = self._typical.get(model_id, took)
        self._typical[model_id] = typical + _EWMA * (took - typical)
        request_id, params = req.request_id, None
        if req.receipt:  # nothing is hashed or signed unless the client asked
            request_id = request_id if request_id is not None else uuid.uuid4().hex
            bundle = self._receipt(model, req.inputs, outputs, request_id)
            params = {"receipt": base64.b64encode(bundle).decode()}
        chunks, out_len = oip.encode_infer_response(
            model.info.name, outputs, req.binary_outputs, request_id, params, seen
        )
        if out_len is None:
            return 200, [(b"content-type", b"application/json")], bytes(chunks[0])
        headers = [
            (b"content-type", oip.BINARY_CONTENT_TYPE.encode()),
            (oip.HEADER_LENGTH.encode(), str(out_len).encode()),
        ]
        return 200, headers, b"".join(chunks)

    def _receipt(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        request_id: str,
    ) -> bytes:
        """A receipt bundle (blindinfer._receipts) signed here, inside the TEE, with the TLS key
        the evidence binds; it carries that evidence and its collateral."""
        tls = self.state.tls
        if self._signer is None:
            self._signer = ReceiptSigner(tls.private_key_pem(), tls.certificate_der)
        evidence = self.state.evidence()
        now = datetime.now(UTC)
        return self._signer.sign(
            evidence=evidence,
            model_sha256=bytes.fromhex(model.info.sha256),
            inputs=inputs,
            outputs=outputs,
            request_id=request_id,
            at=now,
            claims=self._claims_of(evidence, now),
        )

    def _claims_of(self, evidence: Evidence, now: datetime) -> Claims | None:
        """This server's own evidence verified once (pinned roots), for the receipt's readable
        claims; None where it cannot be verified here (a private PKI)."""
        cached = self._own_claims
        if cached is None or cached[0] is not evidence:
            try:
                claims: Claims | None = verify_evidence(
                    evidence, at=now, certificate_der=self.state.tls.certificate_der
                )
            except AttestationError:
                claims = None
            cached = self._own_claims = (evidence, claims)
        return cached[1]

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, ref: str, version: str | None
    ) -> None:
        try:
            check_version(ref, version)
            status, headers, body = await self._handle(scope, receive, ref)
        except Exception as exc:
            status, headers, body = error_reply(exc)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # --- the lane: inline runs answered by the protocol itself (protocol.py) -----------------

    def admit(self, scope: Scope, connections: Sized) -> Ticket | None:
        """A ticket when this request's run will be inline on the event loop, so that the
        protocol can answer it when its body is complete, with no ASGI task; None sends it
        down the ASGI path (which also gives every refusal its message and status)."""
        target = infer_ref(scope)
        if target is None:
            return None
        try:
            ref, version = target
            check_version(ref, version)
            model, header_len, declared = self._admitted(scope, ref)
        except ServerError:
            return None
        size = declared or 0
        if self._inline_limit(model.info.model_id, size, self._alone(connections, size)) is None:
            return None
        return Ticket(model, header_len, connections, time.perf_counter())

    def finish(self, ticket: Ticket, body: bytearray, seen: oip.HeaderCache) -> Reply | None:
        """Run an admitted request inline and answer it; None when it must go to a worker
        after all (another client arrived meanwhile, or the run passed its inline limit).
        What it records waits for ``done``, after the reply is written."""
        alone = self._alone(ticket.connections, len(body))
        start = time.perf_counter()
        try:
            reply = self._inline(ticket.model, body, ticket.header_len, alone, seen)
        except Exception as exc:
            if isinstance(exc, ServerError):
                ticket.run = (time.perf_counter() - start, False)
            reply = error_reply(exc)
        else:
            if reply is None:
                return None
            ticket.run = (time.perf_counter() - start, True)
        return reply

    def done(self, ticket: Ticket, received: int, reply: Reply) -> None:
        """Record a request the protocol answered with ``reply`` to a body of ``received``
        bytes, once the reply is written: the run's cold caches make this bookkeeping cost
        ~40 us, which the client need not wait for."""
        if ticket.run is not None:
            self.state.metrics.record_run(ticket.model.info.model_id, *ticket.run)
        self._recorder.received.inc(received)
        self._recorder.sent.inc(len(reply[2]))
        self._recorder.record("infer", reply[0], time.perf_counter() - ticket.start)

    def idle(self) -> bool:
        return self.state.running == 0

    def _admitted(self, scope: Scope, ref: str) -> tuple[LoadedModel, int | None, int | None]:
        """The model, the JSON header's length and the declared body length, once every
        check that needs no body byte has passed (or its ServerError)."""
        settings = self.state.settings
        declared = header_len = None
        authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = content_length(value)
            elif name == b"inference-header-content-length":
                header_len = _int(value, oip.HEADER_LENGTH)
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        model = self.state.registry.resolve(ref)
        check_run_access(self.state, authorization, model.info.restricted)
        json_len = header_len if header_len is not None else declared
        if json_len is not None and json_len > settings.max_json_request_size:
            raise PayloadTooLarge(
                f"the JSON part of the request is {json_len} bytes, over the server limit of "
                f"{settings.max_json_request_size} (setting max_json_request_size); send large "
                "tensors with the binary tensor extension"
            )
        limit = self._body_limit(header_len)
        if declared is not None and declared > limit:
            raise PayloadTooLarge(
                f"the inference request is {declared} bytes, over the server limit of {limit}"
            )
        return model, header_len, declared

    async def _handle(self, scope: Scope, receive: Receive, ref: str) -> Reply:
        state = self.state
        model, header_len, declared = self._admitted(scope, ref)
        limit = self._body_limit(header_len)
        extensions = scope.get("extensions", {})
        direct = extensions.get(DIRECT_BODY)
        if direct is not None:
            body = await read_direct(direct, receive, limit, "inference request")
        else:
            body = await read_limited(receive, declared, limit, "inference request")
        model_id = model.info.model_id
        start = time.perf_counter()
        connections = extensions.get(CONNECTIONS)
        alone = connections is not None and self._alone(connections, len(body))
        try:
            reply = await self._run(
                model, body, header_len, receive, alone, extensions.get(HEADER_CACHE)
            )
        except ServerError:
            state.metrics.record_run(model_id, time.perf_counter() - start, ok=False)
            raise
        state.metrics.record_run(model_id, time.perf_counter() - start, ok=True)
        return reply

    def _body_limit(self, header_len: int | None) -> int:
        """The largest body: a binary-extension request may be big, a JSON one may not."""
        settings = self.state.settings
        return (
            settings.max_request_size if header_len is not None else settings.max_json_request_size
        )

    def _alone(self, connections: Sized, size: int) -> bool:
        """This request is all the server is doing: the only open connection on its port,
        nothing on the workers."""
        return len(connections) <= 1 and self.state.running == 0 and size <= INLINE_ALONE_MAX_BODY

    def _inline_limit(self, model_id: str, size: int, alone: bool) -> float | None:
        """The time limit of a run on the event loop, or None: run it on a worker."""
        if model_id in self._never_inline:
            return None
        if size <= INLINE_MAX_BODY and self._run_time.get(model_id, 1.0) < INLINE_RUN_S:
            return INLINE_MAX_SECONDS
        typical = self._typical.get(model_id)
        if alone and typical is not None and typical <= INLINE_ALONE_S:
            return max(INLINE_MAX_SECONDS, INLINE_ALONE_CAP * typical)
        return None

    def _inline(
        self,
        model: LoadedModel,
        body: bytearray,
        header_len: int | None,
        alone: bool,
        seen: oip.HeaderCache | None,
    ) -> Reply | None:
        """The reply of a run on the event loop, or None: it belongs on a worker (not inline
        now, or it passed its inline limit: then its model never runs inline again)."""
        model_id = model.info.model_id
        limit = self._inline_limit(model_id, len(body), alone)
        if limit is None:
            return None
        try:
            return self._work(model, body, header_len, max_seconds=limit, seen=seen)
        except LimitExceeded:
            self._never_inline.add(model_id)
            return None

    async def _run(
        self,
        model: LoadedModel,
        body: bytearray,
        header_len: int | None,
        receive: Receive,
        alone: bool,
        seen: oip.HeaderCache | None,
    ) -> Reply:
        reply = self._inline(model, body, header_len, alone, seen)
        if reply is not None:
            return reply
        return await self.state.run_cancellable(
            lambda on_start: self._work(model, body, header_len, on_start, seen=seen),
            receive,
        )


@dataclass(slots=True)
class Ticket:
    """An inference request the protocol answers itself (``InferEndpoint.admit``)."""

    model: LoadedModel
    header_len: int | None
    connections: Sized  # the listener's open connections (a live set)
    start: float
    run: tuple[float, bool] | None = None  # the run's seconds and success, for ``done``


def error_reply(exc: Exception) -> Reply:
    """A refusal's status and ``{"error": message}``; anything else is a 500 that tells the
    client nothing and logs only the exception's type (its text could quote the inputs)."""
    if isinstance(exc, ServerError):
        headers = [(b"content-type", b"application/json")]
        if exc.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        return exc.status, headers, json.dumps({"error": exc.message}).encode()
    log.error("internal error during inference: %s", type(exc).__name__)
    return 500, [(b"content-type", b"application/json")], b'{"error":"internal server error"}'


def _int(value: bytes, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} is not a number") from None
