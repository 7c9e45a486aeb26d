"""The three BlindAI 0.6 listeners and their handlers, on the shared model registry (see the
package docstring for the protocol)."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Sequence

import cbor2
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blindinfer import __version__
from blindinfer._engine.registry import LoadedModel, ModelRegistry, check_name
from blindinfer._server._internals import http_protocol_class
from blindinfer._server.app import quiet
from blindinfer._server.compat.codec import (
    CBOR_NULL,
    SMALL_ITEM_LIMIT,
    InputTensor,
    UploadDecoder,
    decode_delete,
    decode_run,
    encode_error,
    encode_run_reply,
    encode_upload_reply,
)
from blindinfer._server.compat.collateral import blindai_collateral
from blindinfer._server.compat.sniff import sniffing_protocol
from blindinfer._server.protocol import guarded
from blindinfer._server.requests import read_body
from blindinfer._server.state import Listener, ServerState
from blindinfer._wire.models import ModelInfo
from blindinfer._wire.tensors import from_wire_bytes
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import (
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
)

log = logging.getLogger("blindinfer.compat")

CBOR_CONTENT_TYPE = "application/cbor"


# --- request handling ---------------------------------------------------------------------------


def server_header(state: ServerState) -> str:
    """The 0.6.3 client refuses a server whose Server header contains "mock" unless it runs in
    simulation mode: our simulated TEE says exactly that."""
    if state.backend.insecure:
        return f"blindinfer-mock/{__version__} (simulation TEE, no hardware protection)"
    return f"blindinfer/{__version__} ({state.backend.name})"


def _bind_inputs(model: LoadedModel, tensors: Sequence[InputTensor]) -> dict[str, np.ndarray]:
    """Named tensors go to their input, in any order; unnamed ones fill the rest in order."""
    order = [t.name for t in model.info.inputs]
    if len(tensors) != len(order):
        raise InvalidInput(
            f"model {model.info.name!r} takes {len(order)} input(s) {order}, got {len(tensors)}"
        )
    named = [t.node_name for t in tensors if t.node_name is not None]
    if len(set(named)) != len(named):
        raise InvalidInput(f"an input name appears twice: {named}")
    unknown = [n for n in named if n not in model.inputs]
    if unknown:
        raise InvalidInput(f"model {model.info.name!r} has no input(s) {unknown}; it takes {order}")
    free = iter(n for n in order if n not in named)
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        name = t.node_name if t.node_name is not None else next(free)
        try:
            out[name] = from_wire_bytes(t.data, t.datatype, t.shape)
        except ValueError as exc:
            raise InvalidInput(f"input {name!r}: {exc}") from None
    return out


def _add_model(registry: ModelRegistry, data: bytes, name: str | None) -> ModelInfo:
    """BlindAI names are labels, not keys: use the name when it is valid and free, else none."""
    if name:
        try:
            check_name(name)
        except InvalidInput:
            name = None
    if name and any(i.name == name for i in registry.list()):
        name = None
    try:
        return registry.add(data, name=name)
    except Conflict:
        if name is None:
            raise
        return registry.add(data, name=None)  # the name was taken meanwhile


def _token_needed() -> Unauthorized:
    return Unauthorized(
        "this model needs a token to run (restricted model or run_token set), which the BlindAI "
        "0.6 client cannot send; use the blindinfer SDK",
        403,
    )


class _Handlers:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.server = server_header(state)

    def cbor(self, content: bytes, status: int = 200) -> Response:
        return Response(
            content, status, headers={"server": self.server}, media_type=CBOR_CONTENT_TYPE
        )

    # -- unattested ----------------------------------------------------------------------------

    async def certificate(self, request: Request) -> Response:
        return self.cbor(cbor2.dumps(self.state.tls.certificate_der))

    async def _sgx_evidence(self) -> Evidence:
        kind = self.state.backend.kind
        if kind != "sgx":
            raise ServerError(
                f"this server runs on {self.state.backend.name} (evidence kind {kind}); the "
                "BlindAI 0.6 client can only verify Intel SGX quotes: use the blindinfer SDK",
                501,
            )
        return await self.state.evidence_async()

    async def quote(self, request: Request) -> Response:
        evidence = await self._sgx_evidence()
        return self.cbor(cbor2.dumps(evidence.evidence))

    async def collateral(self, request: Request) -> Response:
        evidence = await self._sgx_evidence()
        return self.cbor(cbor2.dumps(blindai_collateral(evidence)))

    # -- attested ------------------------------------------------------------------------------

    async def run(self, request: Request) -> Response:
        state = self.state
        # Access first, before a body byte is read: the BlindAI client cannot send a token.
        if state.settings.run_token is not None:
            raise _token_needed()
        body = await read_body(request, state.settings.max_request_size, "RunModel request")
        req = decode_run(body)
        del body
        model = state.registry.resolve(req.ref)
        if model.info.restricted:
            raise _token_needed()
        inputs = _bind_inputs(model, req.inputs)
        outputs = await state.run_cancellable(
            lambda on_start: state.registry.run(model, inputs, None, on_start), request.receive
        )
        return self.cbor(encode_run_reply(list(outputs.items())))

    # -- management ----------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        state = self.state
        decoder = UploadDecoder(state.settings.max_model_size)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > decoder.max_body:
            raise PayloadTooLarge(
                f"the upload body is {declared} bytes, more than a model of the server limit of "
                f"{decoder.max_model_size} bytes (setting max_model_size) can take"
            )
        async for chunk in request.stream():
            decoder.feed(chunk)
        upload = decoder.finish()
        del decoder
        info = await state.run_blocking(_add_model, state.registry, upload.model, upload.model_name)
        log.info("model %s uploaded via BlindAI port (%d bytes)", info.model_id, info.size)
        return self.cbor(encode_upload_reply(info.sha256, info.model_id))

    async def delete(self, request: Request) -> Response:
        body = await read_body(request, SMALL_ITEM_LIMIT, "DeleteModel request")
        info = await self.state.run_blocking(self.state.registry.delete, decode_delete(body))
        log.info("model %s deleted via BlindAI port", info.model_id)
        return self.cbor(CBOR_NULL)

    # -- errors --------------------------------------------------------------------------------

    async def on_server_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServerError)
        return self.cbor(encode_error(exc.message), exc.status)

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = f"{exc.detail}: {request.method} {request.url.path}"
        return self.cbor(encode_error(text), exc.status_code)

    async def on_unexpected(self, request: Request, exc: Exception) -> Response:
        # Logged (type only) by ``quiet`` once Starlette re-raises it.
        return self.cbor(encode_error("internal server error"), 500)

    def app(self, routes: list[Route]) -> Starlette:
        return Starlette(
            routes=routes,
            exception_handlers={
                ServerError: self.on_server_error,
                HTTPException: self.on_http_error,
                Exception: self.on_unexpected,
            },
        )


def build_compat_apps(state: ServerState) -> tuple[Starlette, Starlette, Starlette]:
    """The unattested, attested and management ASGI apps."""
    h = _Handlers(state)
    unattested = h.app(
        [
            Route("/", h.certificate, methods=["GET"]),
            Route("/quote", h.quote, methods=["GET"]),
            Route("/collateral", h.collateral, methods=["GET"]),
        ]
    )
    # The client opens each HTTPS connection with ``GET /``: any answer will do.
    attested = h.app(
        [Route("/", h.certificate, methods=["GET"]), Route("/run", h.run, methods=["POST"])]
    )
    management = h.app(
        [
            Route("/", h.certificate, methods=["GET"]),
            Route("/upload", h.upload, methods=["POST"]),
            Route("/delete", h.delete, methods=["POST"]),
        ]
    )
    return unattested, attested, management


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_compat_listeners(state: ServerState) -> list[Listener]:
    """The three BlindAI 0.6 listeners: unattested (HTTP and HTTPS), attested and management."""
    s = state.settings
    unattested_port, attested_port, management_port = s.blindai_ports
    unattested, attested, management = (quiet(app, "BlindAI") for app in build_compat_apps(state))
    if not _is_loopback(s.blindai_management_host):
        log.warning(
            "the BlindAI management port %s:%d has no authentication (as in BlindAI 0.6): anyone "
            "who reaches it can upload and delete models; put your own access control in front",
            s.blindai_management_host,
            management_port,
        )
    from blindinfer._server.runner import connection_limits

    # The BlindAI routes read their bodies through receive(): no direct inference bodies.
    limits = dataclasses.replace(connection_limits(s), direct_body_max=0)
    http = guarded(http_protocol_class(), limits)
    sniffing = sniffing_protocol(http, state.tls.server_context(), limits.timeout)
    tls = state.tls.server_context
    return [
        Listener("blindai-unattested", unattested, s.blindai_host, unattested_port, None, sniffing),
        Listener("blindai-attested", attested, s.blindai_host, attested_port, tls(), http),
        Listener(
            "blindai-management",
            management,
            s.blindai_management_host,
            management_port,
            tls(),
            http,
        ),
    ]
