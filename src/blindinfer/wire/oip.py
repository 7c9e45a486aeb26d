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
from typing import Any

import numpy as np

from blindinfer.errors import InvalidInput
from blindinfer.wire.tensors import DATATYPES, datatype_of, from_wire_bytes, to_wire_bytes

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    binary_outputs: set[str] | bool  # True = every output binary
    request_id: str | None


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(raw)


def _json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if data is None:
        raise InvalidInput(f"input {name!r}: no 'data' and no binary_data_size")
    try:
        array = np.asarray(data, dtype=DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: data is not valid {datatype}: {exc}") from None
    count = int(np.prod(shape)) if shape else 1
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: {array.size} values given for shape {list(shape)} ({count} needed)"
        )
    return array.reshape(shape)


def parse_infer_request(body: bytes | bytearray, header_length: int | None) -> InferRequest:
    """Parse a JSON or binary-extension request body into named numpy arrays (zero-copy)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    split = header_length if header_length is not None else len(body)
    try:
        header = json.loads(memoryview(body)[:split].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("request must be a JSON object with an 'inputs' list")
    view = memoryview(body)
    offset = split
    inputs: dict[str, np.ndarray] = {}
    for item in header["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each input must be an object with a 'name'")
        name = item["name"]
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = str(item.get("datatype", "")).upper()
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"input {name!r}: unsupported datatype {item.get('datatype')!r}; "
                f"supported: {', '.join(DATATYPES)}"
            )
        shape = _shape(item.get("shape"), name)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size!r} runs past the end of the body"
                )
            try:
                inputs[name] = from_wire_bytes(view[offset : offset + size], datatype, shape)
            except ValueError as exc:
                raise InvalidInput(f"input {name!r}: {exc}") from None
            offset += size
        else:
            inputs[name] = _json_tensor(name, datatype, shape, item.get("data"))
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes of binary data follow the last tensor")
    outputs, binary = _requested_outputs(header)
    rid = header.get("id")
    return InferRequest(inputs, outputs, binary, rid if isinstance(rid, str) else None)


def _requested_outputs(header: Mapping[str, Any]) -> tuple[list[str] | None, set[str] | bool]:
    params = header.get("parameters") or {}
    all_binary = bool(isinstance(params, dict) and params.get("binary_data_output"))
    raw = header.get("outputs")
    if raw is None:
        return None, all_binary
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in raw]
    binary = {
        o["name"]
        for o in raw
        if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data")
    }
    return names, True if all_binary else binary


def encode_infer_response(
    model_name: str,
    outputs: Mapping[str, np.ndarray],
    binary: set[str] | bool,
    request_id: str | None = None,
) -> tuple[list[bytes | memoryview], int | None]:
    """Body chunks and the JSON header length (None when the response is plain JSON)."""
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
            desc["data"] = array.reshape(-1).tolist()
        descs.append(desc)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": descs}
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return [header], None
    return [header, *blobs], len(header)


def encode_infer_request(
    inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
) -> tuple[list[bytes | memoryview], int]:
    """Binary-extension request (every tensor binary, every output requested binary)."""
    descs = []
    blobs: list[bytes | memoryview] = []
    for name, array in inputs.items():
        blob = to_wire_bytes(array)
        descs.append(
            {
                "name": name,
                "datatype": datatype_of(array),
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    doc: dict[str, Any] = {"inputs": descs, "parameters": {"binary_data_output": True}}
    if outputs:
        doc["outputs"] = [{"name": n} for n in outputs]
    header = json.dumps(doc, separators=(",", ":")).encode()
    return [header, *blobs], len(header)


def parse_infer_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Outputs by name from a JSON or binary response (zero-copy for binary tensors)."""
    split = header_length if header_length is not None else len(body)
    doc = json.loads(memoryview(body)[:split].tobytes())
    view = memoryview(body)
    offset = split
    out: dict[str, np.ndarray] = {}
    for item in doc["outputs"]:
        datatype, shape = item["datatype"], tuple(item["shape"])
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[item["name"]] = from_wire_bytes(view[offset : offset + size], datatype, shape)
            offset += size
        else:
            out[item["name"]] = np.asarray(item["data"], dtype=DATATYPES[datatype]).reshape(shape)
    return out
