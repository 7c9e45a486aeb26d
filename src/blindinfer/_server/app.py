"""The native API: Open Inference Protocol v2 REST surface, attestation and model management.

Routes (one HTTPS port, TLS terminated inside the TEE):
- GET  /v2/health/live, /v2/health/ready, /v2                      OIP server health / metadata
- GET  /v2/models/{ref}, /v2/models/{ref}/ready                     OIP model metadata / ready
- POST /v2/models/{ref}/infer                   OIP inference, JSON or binary tensor extension
- GET  /blindinfer/v1/attestation[?nonce=HEX]   evidence binding this TLS certificate
- GET  /blindinfer/v1/models                    list models (no bytes, ever)
- POST /blindinfer/v1/models?name=&replace=&restricted=   streaming raw ONNX upload (owner)
- DELETE /blindinfer/v1/models/{ref}            delete (owner)
- POST /v1/embeddings, /v1/audio/transcriptions  OpenAI-compatible (``openai_compat.py``)

``ref`` is a model id, name or sha256. Errors are ``{"error": message}`` with a 4xx status that
names the problem; nothing about inputs or outputs is ever logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from blindinfer import __version__
from blindinfer._engine.registry import LoadedModel, Upload
from blindinfer._server import openai_compat
from blindinfer._server.buffers import WritableBytes, fill_in_place_supported
from blindinfer._server.infer import InferEndpoint, check_version, infer_ref
from blindinfer._server.requests import content_length, require_owner
from blindinfer._server.state import ServerState
from blindinfer._wire.attestation import AttestationDocument
from blindinfer.errors import InvalidInput, PayloadTooLarge, ServerError

log = logging.getLogger("blindinfer.server")

NONCE_MAX = 64


async def _post_only(request: Request) -> Response:
    return _json({"error": "inference takes POST"}, 405)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")).encode(), status, media_type="application/json"
    )


def quiet(app: ASGIApp, name: str) -> ASGIApp:
    """Starlette answers an unexpected exception with our 500 handler and then re-raises it, so
    that uvicorn logs the full traceback with the exception's text, which could quote inputs.
    This wrapper swallows it after the response is sent and logs the type only."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except Exception as exc:
            log.error("internal error on the %s API: %s", name, type(exc).__name__)

    return wrapper


# Pieces of the body handed to the sealing worker at once: cryptography's AES-GCM update holds
# the GIL, so each piece costs GIL hand-offs (up to the 5 ms switch interval): few, big ones.
FEED_BATCH = 8 << 20


def _take(body: list[WritableBytes | bytearray]) -> bytes:
    """The model's bytes; a bytearray (no Content-Length, or not CPython) costs one copy, and
    the receive buffer is released as soon as it is made."""
    buf = body.pop()
    return buf.take() if isinstance(buf, WritableBytes) else bytes(buf)


async def _receive_model(
    request: Request, upload: Upload, limit: int
) -> list[WritableBytes | bytearray]:
    """Read the upload's body into one buffer (allocated from Content-Length: the owner's token
    was checked, and the length is within ``limit``), feeding every ``FEED_BATCH`` bytes to
    ``upload`` (hashed and sealed on its worker thread) as they arrive. With a Content-Length the
    buffer is the final ``bytes`` object, written in place (``buffers.py``). Refuses a body past
    ``limit`` or not matching its Content-Length."""
    declared = content_length(request.headers.get("content-length"))
    if declared is not None and declared < 0:
        raise InvalidInput("Content-Length is negative")
    target: WritableBytes | bytearray
    if declared and fill_in_place_supported():
        target = WritableBytes(declared)
        view: memoryview | None = target.view
    else:
        target = bytearray(declared or 0)
        view = memoryview(target) if declared is not None else None
    pos = fed = 0
    more = True
    while more:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            raise InvalidInput("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        end = pos + len(chunk)
        if view is not None:
            if declared is not None and end > declared:
                raise InvalidInput("the body is longer than its Content-Length")
            view[pos:end] = chunk
        else:
            assert isinstance(target, bytearray)
            if end > limit:
                raise PayloadTooLarge(f"the model is over the server limit of {limit} bytes")
            target += chunk
            if chunk:
                upload.feed(bytes(chunk))  # the buffer may move as it grows: feed a stable copy
        pos = end
        more = message.get("more_body", False)
        if view is not None and (pos - fed >= FEED_BATCH or not more):
            upload.feed(view[fed:pos])
            fed = pos
    if declared is not None and pos != declared:
        raise InvalidInput(f"the body ended after {pos} of {declared} bytes")
    return [target]


def build_app(state: ServerState, infer: InferEndpoint | None = None) -> ASGIApp:
    """The native API: the inference hot path as a raw endpoint, the rest on Starlette.
    ``infer``: the endpoint, when the protocol shares it as its lane (``protocol.Lane``)."""
    rest = quiet(_build_starlette(state), "native")
    infer = infer or InferEndpoint(state)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = infer_ref(scope)
            if target is not None:
                await infer(scope, receive, send, *target)
                return
        await rest(scope, receive, send)

    return state.metrics.instrument(app, "native")


def _build_starlette(state: ServerState) -> Starlette:
    registry = state.registry
    settings = state.settings

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        return _json({"ready": True})

    async def server_metadata(request: Request) -> Response:
        return _json(
            {
                "name": "blindinfer",
                "version": __version__,
                "extensions": ["binary_tensor_data", "attestation", "model_management"],
                "tee": state.backend.name,
                "insecure": state.backend.insecure,
            }
        )

    def resolve(request: Request) -> LoadedModel:
        ref = request.path_params["ref"]
        check_version(ref, request.path_params.get("version"))
        return registry.resolve(ref)

    async def model_metadata(request: Request) -> Response:
        model = resolve(request)
        info = model.info
        return _json(
            {
                "name": info.name,
                "versions": ["1"],
                "platform": (
                    f"blindinfer_pipeline:{info.pipeline}" if info.pipeline else "onnxruntime_onnx"
                ),
                "inputs": [t.to_json() for t in info.inputs],
                "outputs": [t.to_json() for t in info.outputs],
                "model_id": info.model_id,
                "sha256": info.sha256,
                "size": info.size,
                "restricted": info.restricted,
            }
        )

    async def model_stats(request: Request) -> Response:
        """OIP/KServe statistics extension: counts and cumulative nanoseconds per model."""
        if "ref" in request.path_params:
            models = [resolve(request)]
        else:
            models = [registry.resolve(i.model_id) for i in registry.list()]
        stats = [state.metrics.model_stats(m.info.model_id).to_json(m.info.name) for m in models]
        return _json({"model_stats": stats})

    async def model_ready(request: Request) -> Response:
        model = resolve(request)
        return _json({"name": model.info.name, "ready": True})

    async def attestation(request: Request) -> Response:
        nonce_hex = request.query_params.get("nonce")
        nonce = None
        if nonce_hex is not None:
            try:
                nonce = bytes.fromhex(nonce_hex)
            except ValueError:
                raise InvalidInput("nonce must be hex") from None
            if not 8 <= len(nonce) <= NONCE_MAX:
                raise InvalidInput(f"nonce must be 8 to {NONCE_MAX} bytes")
        evidence = await state.evidence_async(nonce)
        doc = AttestationDocument(evidence, state.tls.certificate_der, state.backend.name)
        return _json(doc.to_json())

    async def list_models(request: Request) -> Response:
        return _json({"models": [i.to_json() for i in registry.list()]})

    async def upload(request: Request) -> Response:
        require_owner(state, request.headers.get("authorization"))
        declared = content_length(request.headers.get("content-length"))
        if declared is not None and declared > settings.max_model_size:
            raise PayloadTooLarge(
                f"the model is {declared} bytes, over the server limit of {settings.max_model_size}"
            )
        params = request.query_params
        name = params.get("name") or None
        flags = {
            k: params.get(k, "false").lower() in ("1", "true", "yes")
            for k in ("replace", "restricted")
        }
        upload = registry.begin_upload(
            name=name, replace=flags["replace"], restricted=flags["restricted"]
        )
        try:
            body = await _receive_model(request, upload, settings.max_model_size)
        except BaseException:
            await state.run_blocking(upload.abort)  # no temporary file left behind
            raise
        # The body was hashed and sealed as it arrived, into the bytes that onnx's checker and
        # onnxruntime take. Validated and loaded on a worker.
        info = await state.run_blocking(lambda: registry.finish_upload(upload, _take(body)))
        log.info("model %s uploaded (%d bytes, id %s)", info.name, info.size, info.model_id)
        return _json(info.to_json(), 201)

    async def delete(request: Request) -> Response:
        require_owner(state, request.headers.get("authorization"))
        info = await state.run_blocking(registry.delete, request.path_params["ref"])
        state.metrics.forget(info.model_id)
        log.info("model %s deleted (id %s)", info.name, info.model_id)
        return _json(info.to_json())

    async def embeddings(request: Request) -> Response:
        try:
            return await openai_compat.embeddings(state, request)
        except ServerError as exc:
            return openai_compat.error_response(exc)

    async def transcriptions(request: Request) -> Response:
        try:
            return await openai_compat.transcriptions(state, request)
        except ServerError as exc:
            return openai_compat.error_response(exc)

    async def on_server_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServerError)
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        return Response(
            json.dumps({"error": exc.message}).encode(),
            exc.status,
            headers=headers,
            media_type="application/json",
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json(
            {"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Logged (type only) by ``quiet`` once Starlette re-raises it.
        return _json({"error": "internal server error"}, 500)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/stats", model_stats),
        Route("/v2/models/{ref}", model_metadata),
        Route("/v2/models/{ref}/stats", model_stats),
        Route("/v2/models/{ref}/versions/{version}/stats", model_stats),
        Route("/v2/models/{ref}/ready", model_ready),
        Route("/v2/models/{ref}/versions/{version}", model_metadata),
        Route("/v2/models/{ref}/versions/{version}/ready", model_ready),
        Route("/blindinfer/v1/attestation", attestation),
        Route("/blindinfer/v1/models", list_models, methods=["GET"]),
        Route("/blindinfer/v1/models", upload, methods=["POST"]),
        Route("/blindinfer/v1/models/{ref}", delete, methods=["DELETE"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    ]
    # POST .../infer is served by InferEndpoint; this route only answers other methods.
    routes.append(Route("/v2/models/{ref}/infer", _post_only, methods=["GET", "PUT", "DELETE"]))
    return Starlette(
        routes=routes,
        exception_handlers={
            ServerError: on_server_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
