"""OpenAI-compatible endpoints for the two tasks people already call that way, on the native
attested port: ``POST /v1/embeddings`` and ``POST /v1/audio/transcriptions``.

They are thin adapters over the registry: the same model lookup, run-access check, time limit,
cancellation and metrics as ``/v2/models/{ref}/infer``, and the same pipelines (a model is
usable here when its pipeline kind is the task's). Request bodies are read into memory with the
server's size limits and parsed there: a client's audio is never spooled to disk, which
Starlette's own form parser would do (outside the TEE, on an SGX/SNP host's disk).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response

from blindinfer._engine.registry import LoadedModel
from blindinfer._server.requests import check_run_access, read_body
from blindinfer._server.state import ServerState
from blindinfer._wire.oip import load_json
from blindinfer._wire.tensors import bytes_array
from blindinfer.errors import InvalidInput, ServerError

EMBEDDING_KIND = "text-embedding"
TRANSCRIPTION_KIND = "speech-to-text"
MAX_FORM_PARTS = 16
MAX_FIELD_BYTES = 4096  # a form field other than the file (model, language, ...)
_RESPONSE_FORMATS = ("json", "text", "verbose_json")


def _json(doc: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")).encode(), status, media_type="application/json"
    )


def _model_for(state: ServerState, request: Request, name: Any, kind: str) -> LoadedModel:
    if not isinstance(name, str) or not name:
        raise InvalidInput("'model' is required: the name of a served model")
    model = state.registry.resolve(name)
    check_run_access(state, request.headers.get("authorization"), model.info.restricted)
    if model.info.pipeline != kind:
        raise InvalidInput(
            f"model {model.info.name!r} is not a {kind} pipeline; this endpoint serves those only"
        )
    return model


async def _run(
    state: ServerState, request: Request, model: LoadedModel, inputs: dict[str, np.ndarray],
    output: str,
) -> np.ndarray:  # fmt: skip
    registry = state.registry
    start = time.perf_counter()

    def work(on_start: Callable[[Any], None]) -> dict[str, np.ndarray]:
        return registry.run(model, inputs, [output], on_start)

    try:
        out = await state.run_cancellable(work, request.receive)
    except ServerError:
        state.metrics.record_run(model.info.model_id, time.perf_counter() - start, ok=False)
        raise
    state.metrics.record_run(model.info.model_id, time.perf_counter() - start, ok=True)
    return out[output]


def error_response(exc: ServerError) -> Response:
    """OpenAI's error object, so OpenAI clients show the message (openai-python puts only
    ``error.message`` into the exception text)."""
    kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
             429: "rate_limit_error"}  # fmt: skip
    kind = kinds.get(exc.status, "server_error" if exc.status >= 500 else "invalid_request_error")
    doc = {"error": {"message": exc.message, "type": kind, "param": None, "code": None}}
    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
    return Response(
        json.dumps(doc, separators=(",", ":")).encode(),
        exc.status,
        headers=headers,
        media_type="application/json",
    )


# --- embeddings ---------------------------------------------------------------------------------


def _texts(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        return raw
    if isinstance(raw, list) and raw and all(isinstance(t, int | list) for t in raw):
        raise InvalidInput("'input' as token ids is not supported: send the text itself")
    raise InvalidInput("'input' must be a non-empty string or a non-empty list of strings")


async def embeddings(state: ServerState, request: Request) -> Response:
    body = await read_body(request, state.settings.max_json_request_size, "embeddings request")
    doc = load_json(bytes(body))
    if not isinstance(doc, dict):
        raise InvalidInput("the request must be a JSON object")
    model = _model_for(state, request, doc.get("model"), EMBEDDING_KIND)
    texts = _texts(doc.get("input"))
    fmt = doc.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise InvalidInput("'encoding_format' must be 'float' or 'base64'")
    dims = doc.get("dimensions")
    vectors = await _run(state, request, model, {"input": bytes_array(texts)}, "embedding")
    if dims is not None and dims != vectors.shape[1]:
        raise InvalidInput(
            f"model {model.info.name!r} makes {vectors.shape[1]}-dimensional embeddings; "
            "'dimensions' cannot change that"
        )
    data = []
    for i, row in enumerate(np.asarray(vectors, dtype="<f4")):
        value: Any = base64.b64encode(row.tobytes()).decode() if fmt == "base64" else row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    # Token counts are not reported by the pipeline: 0, documented (docs/pipelines).
    usage = {"prompt_tokens": 0, "total_tokens": 0}
    return _json({"object": "list", "data": data, "model": model.info.name, "usage": usage})


# --- transcriptions -----------------------------------------------------------------------------


class _Form:
    """multipart/form-data parsed in memory (python-multipart's streaming parser), bounded:
    at most MAX_FORM_PARTS parts, fields other than ``file`` at most MAX_FIELD_BYTES."""

    def __init__(self) -> None:
        self.fields: dict[str, bytes] = {}
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._name: str | None = None
        self._data: list[bytes] = []
        self._size = 0
        self.parts = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._append("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._append("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
        }

    def _append(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise InvalidInput(f"the form has more than {MAX_FORM_PARTS} parts")
        self._headers, self._data, self._size, self._name = {}, [], 0, None

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        if name is None:
            raise InvalidInput("a form part has no name (Content-Disposition)")
        self._name = name.decode("utf-8", "replace")
        if self._name in self.fields:
            raise InvalidInput(f"form field {self._name[:64]!r} is given twice")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._name != "file" and self._size > MAX_FIELD_BYTES:
            raise InvalidInput(
                f"form field {str(self._name)[:64]!r} is over {MAX_FIELD_BYTES} bytes"
            )
        self._data.append(bytes(data[start:end]))

    def _end(self) -> None:
        assert self._name is not None
        self.fields[self._name] = b"".join(self._data)
        self._data = []


def parse_form(content_type: str | None, body: bytes | bytearray) -> dict[str, bytes]:
    """The parts of a multipart/form-data body by name; InvalidInput naming the problem."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise InvalidInput("the request must be multipart/form-data with a boundary")
    form = _Form()
    parser = MultipartParser(params[b"boundary"], form.callbacks())  # type: ignore[arg-type]
    try:
        parser.write(bytes(body))
        parser.finalize()
    except ServerError:
        raise
    except Exception as exc:  # python-multipart's own error classes
        raise InvalidInput(f"the multipart form is malformed: {type(exc).__name__}") from None
    return form.fields


def _field(fields: dict[str, bytes], name: str, default: str | None = None) -> str | None:
    raw = fields.get(name)
    if raw is None:
        return default
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"form field {name!r} is not UTF-8 text") from None


async def transcriptions(state: ServerState, request: Request) -> Response:
    body = await read_body(request, state.settings.max_request_size, "transcription request")
    fields = parse_form(request.headers.get("content-type"), body)
    del body
    model = _model_for(state, request, _field(fields, "model"), TRANSCRIPTION_KIND)
    audio = fields.get("file")
    if not audio:
        raise InvalidInput("form field 'file' (the audio) is required and must not be empty")
    fmt = _field(fields, "response_format", "json")
    if fmt not in _RESPONSE_FORMATS:
        raise InvalidInput(f"'response_format' must be one of {', '.join(_RESPONSE_FORMATS)}")
    language = _field(fields, "language")
    if language not in (None, "", "en"):
        raise InvalidInput(f"model {model.info.name!r} transcribes English only ('language': en)")
    out = await _run(state, request, model, {"input": bytes_array([audio])}, "text")
    text = bytes(out.reshape(-1)[0]).decode("utf-8", "replace")
    if fmt == "text":
        return Response(text.encode(), 200, media_type="text/plain; charset=utf-8")
    doc: dict[str, Any] = {"text": text}
    if fmt == "verbose_json":
        doc.update({"task": "transcribe", "language": "english"})
    return _json(doc)
