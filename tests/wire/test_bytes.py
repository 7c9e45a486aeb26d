"""The BYTES datatype on the OIP wire: JSON strings and length-prefixed binary elements."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from blindinfer._wire import oip
from blindinfer._wire.tensors import (
    MAX_BYTES_ELEMENTS,
    bytes_array,
    datatype_of,
    from_wire_bytes,
    to_wire_bytes,
)
from blindinfer.errors import InvalidInput


def _request(header: dict, *blobs: bytes) -> tuple[bytes, int | None]:
    head = json.dumps(header).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def test_binary_round_trip_keeps_every_byte() -> None:
    items = [b"", b"\x00\xff" * 10, "héllo".encode(), bytes(range(256))]
    array = bytes_array(items, (2, 2))
    assert datatype_of(array) == "BYTES"
    wire = bytes(to_wire_bytes(array))
    assert wire[:4] == struct.pack("<I", 0)
    back = from_wire_bytes(wire, "BYTES", (2, 2))
    assert back.shape == (2, 2)
    assert list(back.reshape(-1)) == items


def test_request_binary_and_json_give_the_same_tensor() -> None:
    photo = b"\x89PNG\r\n\x1a\n" + bytes(100)
    blob = struct.pack("<I", len(photo)) + photo
    desc = {"name": "input", "datatype": "BYTES", "shape": [1]}
    body, hl = _request({"inputs": [{**desc, "parameters": {"binary_data_size": len(blob)}}]}, blob)
    binary = oip.parse_infer_request(body, hl).inputs["input"]
    assert binary[0] == photo
    body, hl = _request({"inputs": [{**desc, "shape": [2], "data": ["a sentence", "ünï"]}]})
    text = oip.parse_infer_request(body, hl).inputs["input"]
    assert list(text) == [b"a sentence", "ünï".encode()]


def test_sdk_request_encoding_round_trips() -> None:
    arrays = {"input": bytes_array([b"wav bytes", b"more"])}
    chunks, hl = oip.encode_infer_request(arrays)
    req = oip.parse_infer_request(b"".join(bytes(c) for c in chunks), hl)
    assert list(req.inputs["input"]) == [b"wav bytes", b"more"]


def test_response_json_and_binary() -> None:
    outputs = {"text": bytes_array(["a transcript"]), "scores": np.ones(2, np.float32)}
    chunks, hl = oip.encode_infer_response("m", outputs, set())
    doc = json.loads(b"".join(bytes(c) for c in chunks))
    assert doc["outputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [1],
                                 "data": ["a transcript"]}  # fmt: skip
    back = oip.parse_infer_response(b"".join(bytes(c) for c in chunks), hl)
    assert back["text"][0] == b"a transcript"
    chunks, hl = oip.encode_infer_response("m", outputs, True)
    back = oip.parse_infer_response(b"".join(bytes(c) for c in chunks), hl)
    assert back["text"][0] == b"a transcript" and back["scores"].tolist() == [1.0, 1.0]


def test_non_utf8_output_must_be_binary() -> None:
    with pytest.raises(InvalidInput, match="not UTF-8"):
        oip.encode_infer_response("m", {"raw": bytes_array([b"\xff\xfe"])}, set())


@pytest.mark.parametrize(
    ("wire", "shape", "message"),
    [
        (b"\x05\x00\x00\x00abc", (1,), "declares 5 bytes"),
        (b"\x01\x00", (1,), "cannot hold"),
        (struct.pack("<I", 1) + b"a" + b"junk", (1,), "follow the last element"),
        (struct.pack("<I", 1) + b"a", (2,), "cannot hold"),
        (b"", (MAX_BYTES_ELEMENTS + 1,), "at most"),
        (b"\x00" * 8, (10**12,), "at most"),
    ],
)
def test_malformed_binary_bytes_refused(wire: bytes, shape: tuple[int, ...], message: str) -> None:
    desc = {"name": "input", "datatype": "BYTES", "shape": list(shape),
            "parameters": {"binary_data_size": len(wire)}}  # fmt: skip
    body, hl = _request({"inputs": [desc]}, wire) if wire else _request({"inputs": [desc]}, b"")
    with pytest.raises(InvalidInput, match=message):
        oip.parse_infer_request(body, hl if wire else len(body))


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        ([1, 2], [2], "must be strings"),
        (["a"], [2], "1 values given"),
        (["a"] * 3, [MAX_BYTES_ELEMENTS + 1], "at most"),
        (["\ud800"], [1], "not valid Unicode"),
    ],
)
def test_malformed_json_bytes_refused(data: list, shape: list[int], message: str) -> None:
    body, hl = _request({"inputs": [{"name": "x", "datatype": "BYTES", "shape": shape,
                                     "data": data}]})  # fmt: skip
    with pytest.raises(InvalidInput, match=message):
        oip.parse_infer_request(body, hl)
