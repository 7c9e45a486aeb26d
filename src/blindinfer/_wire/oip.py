"""Open Inference Protocol v2 (KServe / Triton) inference messages, JSON and binary extension.

Binary tensor data extension (Triton "binary_tensor_data"): the body is the JSON header followed
by the raw tensor bytes; the ``Inference-Header-Content-Length`` HTTP header gives the JSON
length, and each binary tensor's ``parameters.binary_data_size`` its byte count, in order.
Shared by the server and the SDK; no transport code here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from blindinfer._wire.tensors import (
    ALL_DATATYPES,
    BYTES,
    DATATYPES,
    MAX_BYTES_ELEMENTS,
    MAX_DIMS,
    bytes_array,
    bytes_elements,
    datatype_of,
    element_count,
    from_wire_bytes,
    to_wire_bytes,
)
from blindinfer.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    binary_outputs: set[str] | bool  # True = every output binary
    request_id: str | None
    receipt: bool = False  # request parameter "receipt": sign a receipt (blindinfer._receipts)


# JSON nesting allowed in a request: a tensor's nested ``data`` (at most MAX_DIMS deep) plus the
# request's own levels ({"inputs": [{"data": ...}]}) and some slack.
MAX_JSON_DEPTH = MAX_DIMS + 8
_LABEL_MAX = 64  # characters of a client-chosen name quoted back in an error message


class _Refused(ValueError):
    """Raised from inside json.loads for text that Python accepts but JSON does not."""


def _label(name: str) -> str:
    """A client-chosen name as quoted in an error message (bounded, whatever the client sent)."""
    return repr(name) if len(name) <= _LABEL_MAX else repr(name[:_LABEL_MAX]) + "..."


# --- the JSON part ------------------------------------------------------------------------------


# bytes.translate deletes every byte but these (one C pass); _STEP maps what is left to +1 / -1.
_DELETE = bytes(c for c in range(256) if c not in b'[]{}"')
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects in JSON text, brackets inside strings excluded.

    Linear, with no per-byte Python work: escape sequences that could hide a quote are dropped
    (bytes.replace), every byte but brackets and quotes is deleted (bytes.translate), and numpy
    runs the rest. Exact for any text json.loads accepts, and for the prefix of any text it
    parses before failing: UTF-8 multi-byte sequences never contain these bytes."""
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    s = np.frombuffer(raw.translate(None, _DELETE), dtype=np.uint8)
    if not len(s):
        return 0
    steps = _STEP[s]
    quotes = s == ord('"')
    if quotes.any():  # from an opening quote up to its closing one: inside a string
        inside = np.bitwise_xor.accumulate(quotes.view(np.uint8))
        steps[inside.view(bool)] = 0
    return int(np.cumsum(steps, dtype=np.int32).max())


def _check_nesting(raw: bytes) -> None:
    # Two C-speed counts first: a typical request has a handful of brackets and skips the scan.
    opens = raw.count(b"[") + raw.count(b"{")
    if opens > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:
        raise InvalidInput(
            f"the request JSON is nested more than {MAX_JSON_DEPTH} levels deep (a tensor has at "
            f"most {MAX_DIMS} dimensions)"
        )


def _refuse_constant(literal: str) -> float:
    raise _Refused(f"{literal} is not a JSON value (JSON numbers are finite)")


# Built once: json.loads with any keyword builds a new decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def load_json(raw: bytes) -> Any:
    """Parse a request's JSON: strict UTF-8 JSON (RFC 8259), nesting bounded before parsing."""
    _check_nesting(raw)
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput("the request JSON is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except _Refused as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except ValueError:  # int() refuses numbers of thousands of digits
        raise InvalidInput("request body is not valid JSON: a number in it is too long") from None
    except RecursionError:  # unreachable after _check_nesting; kept as a second line
        raise InvalidInput("the request JSON is nested too deeply") from None


# --- tensors ------------------------------------------------------------------------------------


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise InvalidInput(f"input {_label(name)}: 'shape' must be a list of non-negative integers")
    if len(raw) > MAX_DIMS:
        raise InvalidInput(
            f"input {_label(name)}: the shape has {len(raw)} dimensions; at most {MAX_DIMS} are "
            "supported"
        )
    return tuple(raw)


def _datatype(raw: Any, name: str) -> str:
    datatype = raw.upper() if isinstance(raw, str) else None
    if datatype not in ALL_DATATYPES:
        shown = _label(raw) if isinstance(raw, str) else f"of JSON type {_json_type(raw)}"
        raise InvalidInput(
            f"input {_label(name)}: unsupported datatype {shown}; supported: "
            f"{', '.join(ALL_DATATYPES)}"
        )
    return datatype


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


# The Python types json.loads gives each JSON value, as a client would name them.
_JSON_NAMES: Final[dict[type, str]] = {
    bool: "booleans",
    int: "integers",
    float: "non-integer numbers",
    str: "strings",
    type(None): "nulls",
    list: "unevenly nested arrays",
    dict: "objects",
}
_ALLOWED: Final[dict[str, tuple[frozenset[type], str]]] = {
    "b": (frozenset({bool}), "JSON true or false"),
    "i": (frozenset({int}), "integers"),
    "u": (frozenset({int}), "integers"),
    "f": (frozenset({int, float}), "JSON numbers"),
}
_FLOAT_MAX: Final = {n: float(np.finfo(dt).max) for n, dt in DATATYPES.items() if dt.kind == "f"}
_SMALL = 64  # below this many values, Python's min/max beat two numpy reductions


def _layout(data: Any, where: str) -> np.ndarray:
    """The JSON values laid out by numpy as an object array (no conversion, one C pass).

    Never ``np.asarray(data)``: for a mix of numbers and strings numpy builds a string array of
    count x longest-string characters, terabytes for a request of a few megabytes."""
    if not isinstance(data, list | int | float):  # bool is an int
        raise InvalidInput(f"{where}: 'data' must be a JSON array, not {_json_type(data)}")
    try:
        return np.asarray(data, dtype=object)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{where}: 'data' must be a flat list of values or lists nested like the shape"
        ) from None


def _convert(values: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """The values as ``datatype``, refusing values of the wrong JSON type or out of range.

    One C-speed pass reads the type of every value (JSON has no other way to say 1.5 is not an
    integer, or "1" not a number); numpy's casts then check integer ranges exactly."""
    dt = DATATYPES[datatype]
    if values.size == 0:
        return np.empty(values.shape, dtype=dt)
    allowed, expected = _ALLOWED[dt.kind]
    kinds = set(map(type, values.flat))
    if not kinds <= allowed:
        wrong = ", ".join(sorted(_JSON_NAMES.get(k, k.__name__) for k in kinds - allowed))
        raise InvalidInput(f"{where}: the values must be {expected}, not {wrong}")
    try:
        if dt.kind != "f":
            return values.astype(dt)
        wide = values.astype(np.float64)
    except OverflowError:  # an integer out of the range of dt, or of FP64
        raise _out_of_range(datatype, where) from None
    # Compared before the cast (an overflowing cast warns); a JSON number is infinite only when
    # it overflowed FP64 as it was read (1e400).
    if _extreme(wide) > _FLOAT_MAX[datatype]:
        raise _out_of_range(datatype, where)
    return wide.astype(dt, copy=False)


def _extreme(values: np.ndarray) -> float:
    """Largest magnitude in a float64 array with no NaN (JSON has none)."""
    if values.size <= _SMALL:
        flat = values.ravel().tolist()
        return float(max(-min(flat), max(flat)))
    return max(-float(values.min()), float(values.max()))


def _out_of_range(datatype: str, where: str) -> InvalidInput:
    dt = DATATYPES[datatype]
    if dt.kind == "f":
        return InvalidInput(f"{where}: a value is out of the range of {datatype}")
    info = np.iinfo(dt)
    return InvalidInput(f"{where}: a value is out of its range ({info.min} to {info.max})")


def _json_bytes(where: str, shape: tuple[int, ...], count: int, values: np.ndarray) -> np.ndarray:
    """BYTES in JSON: each element a string, sent as its UTF-8 bytes."""
    if values.size != count:
        raise InvalidInput(
            f"{where}: {values.size} values given for shape {list(shape)} ({count} needed)"
        )
    if not all(isinstance(v, str) for v in values.flat):
        raise InvalidInput(f"{where}: BYTES values in JSON must be strings")
    try:
        return bytes_array([str(v) for v in values.flat], shape)
    except UnicodeEncodeError:  # a lone surrogate (\ud800) is valid JSON, not UTF-8
        raise InvalidInput(f"{where}: a BYTES string is not valid Unicode text") from None


def _json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    where = f"input {_label(name)}"
    if data is None:
        raise InvalidInput(f"{where}: no 'data' and no binary_data_size")
    if datatype == BYTES:
        try:
            count = element_count(shape)
        except ValueError as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        if count > MAX_BYTES_ELEMENTS:
            raise InvalidInput(
                f"{where}: a BYTES tensor may have at most {MAX_BYTES_ELEMENTS} elements, the "
                f"shape has {count}"
            )
        data = [data] if isinstance(data, str) else data
        return _json_bytes(where, shape, count, _layout(data, where))
    try:
        count = element_count(shape, DATATYPES[datatype].itemsize)
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    values = _layout(data, where)
    if values.shape != shape and (values.ndim > 1 or values.size != count):
        if values.ndim <= 1:
            raise InvalidInput(
                f"{where}: {values.size} values given for shape {list(shape)} ({count} needed)"
            )
        raise InvalidInput(
            f"{where}: 'data' is nested as {list(values.shape)}, not as the shape {list(shape)}; "
            "send a flat list or lists nested like the shape"
        )
    return _convert(values, datatype, f"{where}: data is not valid {datatype}").reshape(shape)


def _binary_tensor(
    view: memoryview, offset: int, size: Any, name: str, datatype: str, shape: tuple[int, ...]
) -> np.ndarray:
    where = f"input {_label(name)}"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
    if offset + size > len(view):
        raise InvalidInput(
            f"{where}: binary_data_size runs past the end of the body ({len(view) - offset} "
            "bytes of binary data left)"
        )
    try:
        return from_wire_bytes(view[offset : offset + size], datatype, shape)
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def _parameters(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object")
    return raw


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameter {key!r} must be true or false")
    return value


# --- the request --------------------------------------------------------------------------------


def _split(body: bytes | bytearray, header_length: int | None) -> int:
    if header_length is None:
        return len(body)
    if not 0 < header_length <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} must be between 1 and the body's length ({len(body)} bytes)"
        )
    return header_length


class HeaderCache:
    """What repeated JSON headers said, kept for one connection (server) or one SDK connection
    (client): a client sends the same header over and over (same model, same shapes) and a
    server answers with the same one, so each is parsed or written once.

    Kept per connection on purpose: a hit is faster than a miss, so a cache shared by every
    client would tell one client whether another had just sent (or been answered with) a header
    of exactly these names and shapes. Entries are pure functions of their keys (the header's
    exact bytes, or what a header describes); what depends on the body is checked on every
    call. Bounded: at most ``size`` entries of keys up to ``max_header`` bytes, cleared when
    full."""

    __slots__ = ("_entries", "max_header", "size")

    def __init__(self, size: int = 8, max_header: int = 1024) -> None:
        self.size = size
        self.max_header = max_header
        self._entries: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self._entries.get(key)

    def put(self, key: Any, value: Any) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = value

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class _Plan:
    """What a request header that describes only binary tensors (no data, no id) says."""

    inputs: _Described
    outputs: tuple[str, ...] | None
    binary_outputs: frozenset[str] | bool
    receipt: bool
    binary_size: int  # the bytes that follow the header


def parse_infer_request(
    body: bytes | bytearray, header_length: int | None, cache: HeaderCache | None = None
) -> InferRequest:
    """Parse a JSON or binary-extension request body into named numpy arrays (zero-copy).
    ``cache``: this connection's (a header seen before is not parsed again)."""
    split = _split(body, header_length)
    view = memoryview(body)
    raw = view[:split].tobytes() if cache is not None and split <= cache.max_header else None
    plan: _Plan | None = cache.get(("request", raw)) if cache is not None and raw else None
    if plan is not None and split + plan.binary_size == len(body):
        offset = split
        inputs: dict[str, np.ndarray] = {}
        for name, datatype, shape, size in plan.inputs:
            inputs[name] = _binary_tensor(view, offset, size, name, datatype, shape)
            offset += size
        binary = plan.binary_outputs
        return InferRequest(
            inputs,
            list(plan.outputs) if plan.outputs is not None else None,
            set(binary) if isinstance(binary, frozenset) else binary,
            None,
            plan.receipt,
        )
    request, plan = _parse_infer_request(view, split, raw)
    if cache is not None and raw and plan is not None:
        cache.put(("request", raw), plan)
    return request


def _parse_infer_request(
    view: memoryview, split: int, raw: bytes | None
) -> tuple[InferRequest, _Plan | None]:
    """The request, and what its header says when that can be kept (binary tensors only, no
    request id: nothing that differs per request)."""
    header = load_json(raw if raw is not None else view[:split].tobytes())
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("request must be a JSON object with an 'inputs' list")
    offset = split
    inputs: dict[str, np.ndarray] = {}
    plan_inputs: list[tuple[str, str, tuple[int, ...], int]] = []
    binary_only = True
    for item in header["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each input must be an object with a 'name' string")
        name = item["name"]
        if name in inputs:
            raise InvalidInput(f"input {_label(name)} is given twice")
        datatype = _datatype(item.get("datatype"), name)
        shape = _shape(item.get("shape"), name)
        size = _parameters(item.get("parameters"), f"input {_label(name)}").get("binary_data_size")
        if size is None:
            inputs[name] = _json_tensor(name, datatype, shape, item.get("data"))
            binary_only = False
            continue
        if item.get("data") is not None:
            raise InvalidInput(f"input {_label(name)} has both 'data' and binary_data_size")
        inputs[name] = _binary_tensor(view, offset, size, name, datatype, shape)
        plan_inputs.append((name, datatype, shape, size))
        offset += size
    if offset != len(view):
        raise InvalidInput(f"{len(view) - offset} bytes of binary data follow the last tensor")
    outputs, binary = _requested_outputs(header)
    receipt = _flag(_parameters(header.get("parameters"), "the request"), "receipt", "the request")
    request_id = _request_id(header.get("id"))
    plan = None
    if request_id is None and binary_only:
        plan = _Plan(
            tuple(plan_inputs),
            tuple(outputs) if outputs is not None else None,
            frozenset(binary) if isinstance(binary, set) else binary,
            receipt,
            offset - split,
        )
    return InferRequest(inputs, outputs, binary, request_id, receipt), plan


def _request_id(raw: Any) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise InvalidInput("'id' must be a string")
    return raw


def _requested_outputs(header: Mapping[str, Any]) -> tuple[list[str] | None, set[str] | bool]:
    where = "the request"
    all_binary = _flag(_parameters(header.get("parameters"), where), "binary_data_output", where)
    raw = header.get("outputs")
    if raw is None:
        return None, all_binary
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise InvalidInput("'outputs' must be a list of objects with a 'name' string")
    names: list[str] = []
    seen: set[str] = set()
    binary: set[str] = set()
    for o in raw:
        name = o["name"]
        if name in seen:
            raise InvalidInput(f"output {_label(name)} is requested twice")
        names.append(name)
        seen.add(name)
        where = f"output {_label(name)}"
        if _flag(_parameters(o.get("parameters"), where), "binary_data", where):
            binary.add(name)
    return names, True if all_binary else binary


def encode_infer_response(
    model_name: str,
    outputs: Mapping[str, np.ndarray],
    binary: set[str] | bool,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    cache: HeaderCache | None = None,
) -> tuple[list[bytes | memoryview], int | None]:
    """Body chunks and the JSON header length (None when the response is plain JSON).
    ``parameters``: the response's own OIP parameters (e.g. its receipt); ``cache``: this
    connection's (a header written before for these outputs is not written again)."""
    if outputs and request_id is None and not parameters and _all_binary(outputs, binary):
        raw = [to_wire_bytes(array) for array in outputs.values()]
        key = ("response", model_name, _described(outputs, raw))
        header = cache.get(key) if cache is not None else None
        if header is None:
            header = _response_header(model_name, key[2])
            if cache is not None:
                cache.put(key, header)
        return [header, *raw], len(header)
    descs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, array in outputs.items():
        desc: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary is True or (isinstance(binary, set) and name in binary):
            blob = to_wire_bytes(array)
            desc["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            desc["data"] = _json_data(name, array)
        descs.append(desc)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": descs}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return [header], None
    return [header, *blobs], len(header)


_Described = tuple[tuple[str, str, tuple[int, ...], int], ...]  # name, datatype, shape, size


def _all_binary(outputs: Mapping[str, np.ndarray], binary: set[str] | bool) -> bool:
    """Whether every output goes out as binary data of a fixed-size type."""
    return all(
        array.dtype != object and (binary is True or (isinstance(binary, set) and name in binary))
        for name, array in outputs.items()
    )


def _described(arrays: Mapping[str, np.ndarray], blobs: Sequence[bytes | memoryview]) -> _Described:
    return tuple(
        (name, datatype_of(array), array.shape, len(blob))
        for (name, array), blob in zip(arrays.items(), blobs, strict=True)
    )


def _binary_descs(described: _Described) -> list[dict[str, Any]]:
    """OIP tensor descriptions of tensors that travel as binary data."""
    return [
        {
            "name": name,
            "datatype": datatype,
            "shape": list(shape),
            "parameters": {"binary_data_size": size},
        }
        for name, datatype, shape, size in described
    ]


def _response_header(model_name: str, described: _Described) -> bytes:
    """The JSON header of an all-binary response: the same for every run of a model whose
    output shapes do not change."""
    descs = _binary_descs(described)
    doc = {"model_name": model_name, "model_version": "1", "outputs": descs}
    return json.dumps(doc, separators=(",", ":")).encode()


def _json_data(name: str, array: np.ndarray) -> list[Any]:
    if array.dtype != object:
        return list(array.reshape(-1).tolist())
    try:
        return [item.decode("utf-8") for item in bytes_elements(array)]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output {_label(name)} holds bytes that are not UTF-8 text: request it as binary "
            "data (parameters.binary_data)"
        ) from None


def encode_infer_request(
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    cache: HeaderCache | None = None,
) -> tuple[list[bytes | memoryview], int]:
    """Binary-extension request (every tensor binary, every output requested binary), with
    extra request ``parameters`` (e.g. ``{"receipt": True}``); ``cache``: the SDK
    connection's (a header written before for these inputs is not written again)."""
    blobs = [to_wire_bytes(array) for array in inputs.values()]
    described = _described(inputs, blobs)
    wanted = tuple(outputs) if outputs else None
    params = tuple((parameters or {}).items())
    key = ("request", described, wanted, params)
    try:
        header = cache.get(key) if cache is not None else None
    except TypeError:  # a parameter value that cannot be a key (a list, a dict)
        cache = None
        header = None
    if header is None:
        header = _request_header(described, wanted, params)
        if cache is not None:
            cache.put(key, header)
    return [header, *blobs], len(header)


def _request_header(
    described: _Described, outputs: tuple[str, ...] | None, parameters: tuple[tuple[str, Any], ...]
) -> bytes:
    """A request's JSON header: the same for every call with the same names, types, shapes
    and parameters."""
    descs = _binary_descs(described)
    doc: dict[str, Any] = {
        "inputs": descs,
        "parameters": {**dict(parameters), "binary_data_output": True},
    }
    if outputs:
        doc["outputs"] = [{"name": n} for n in outputs]
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_infer_response(
    body: bytes | bytearray, header_length: int | None, cache: HeaderCache | None = None
) -> dict[str, np.ndarray]:
    """Outputs by name from a JSON or binary response (zero-copy for binary tensors)."""
    return parse_infer_response_parameters(body, header_length, cache)[0]


def parse_infer_response_parameters(
    body: bytes | bytearray, header_length: int | None, cache: HeaderCache | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Outputs by name and the response's own ``parameters`` (empty when it has none);
    ``cache``: the SDK connection's (a header read before is not parsed again)."""
    split = header_length if header_length is not None else len(body)
    view = memoryview(body)
    raw = view[:split].tobytes()
    keep = cache is not None and header_length is not None and len(raw) <= cache.max_header
    plan = cache.get(("response", raw)) if cache is not None and keep else None
    if plan is not None:
        return _materialize(plan, view, split), {}
    doc = json.loads(raw)
    if cache is not None and keep:
        plan = _response_plan(doc)
        if plan is not None:
            cache.put(("response", raw), plan)
            return _materialize(plan, view, split), {}
    offset = split
    out: dict[str, np.ndarray] = {}
    for item in doc["outputs"]:
        datatype, shape = item["datatype"], tuple(item["shape"])
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[item["name"]] = from_wire_bytes(view[offset : offset + size], datatype, shape)
            offset += size
        elif datatype == BYTES:
            out[item["name"]] = bytes_array([str(v) for v in item["data"]], shape)
        else:
            out[item["name"]] = np.asarray(item["data"], dtype=DATATYPES[datatype]).reshape(shape)
    params = doc.get("parameters")
    return out, dict(params) if isinstance(params, dict) else {}


def _response_plan(doc: Any) -> _Described | None:
    """What an all-binary response header without an id or parameters (a receipt differs per
    run) says, or None."""
    if not isinstance(doc, dict) or "parameters" in doc or "id" in doc:
        return None
    if not isinstance(doc.get("outputs"), list):
        return None
    plan = []
    for item in doc["outputs"]:
        params = item.get("parameters") if isinstance(item, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None or item.get("datatype") == BYTES:
            return None
        plan.append((item["name"], item["datatype"], tuple(item["shape"]), size))
    return tuple(plan)


def _materialize(plan: _Described, view: memoryview, offset: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, datatype, shape, size in plan:
        out[name] = from_wire_bytes(view[offset : offset + size], datatype, shape)
        offset += size
    return out
