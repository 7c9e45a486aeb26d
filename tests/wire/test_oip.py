"""OIP v2 message encoding: JSON and binary extension, both directions."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindinfer.errors import InvalidInput
from blindinfer.wire import oip
from blindinfer.wire.tensors import DATATYPES, from_wire_bytes, to_wire_bytes


def test_binary_request_round_trip_is_zero_copy() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    chunks, hlen = oip.encode_infer_request({"x": x, "ids": ids}, ["y"])
    body = b"".join(chunks)
    req = oip.parse_infer_request(body, hlen)
    np.testing.assert_array_equal(req.inputs["x"], x)
    np.testing.assert_array_equal(req.inputs["ids"], ids)
    assert req.outputs == ["y"] and req.binary_outputs is True
    assert req.inputs["x"].base is not None  # a view over the body, not a copy


def test_response_binary_and_json() -> None:
    outs = {"a": np.ones((2, 2), np.float16), "b": np.array([True, False])}
    chunks, hlen = oip.encode_infer_response("m", outs, True, "id-1")
    parsed = oip.parse_infer_response(b"".join(chunks), hlen)
    for k, v in outs.items():
        np.testing.assert_array_equal(parsed[k], v)
    chunks, hlen = oip.encode_infer_response("m", outs, {"a"})
    assert hlen is not None
    doc = json.loads(b"".join(chunks)[:hlen])
    assert doc["outputs"][1]["data"] == [True, False]
    chunks, hlen = oip.encode_infer_response("m", outs, False)
    assert hlen is None and json.loads(chunks[0])["outputs"][0]["data"] == [1.0] * 4


@pytest.mark.parametrize("name", list(DATATYPES))
def test_every_datatype_on_the_wire(name: str) -> None:
    arr = np.arange(6).reshape(2, 3).astype(DATATYPES[name])
    back = from_wire_bytes(bytes(to_wire_bytes(arr)), name, (2, 3))
    np.testing.assert_array_equal(back, arr)


def test_big_endian_input_is_sent_little_endian() -> None:
    arr = np.arange(4, dtype=">i4")
    assert bytes(to_wire_bytes(arr)) == np.arange(4, dtype="<i4").tobytes()


@pytest.mark.parametrize(
    ("header", "extra", "fragment"),
    [
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                      "parameters": {"binary_data_size": 8}}]}, b"\0" * 9, "follow the last"),
        ({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32",
                      "parameters": {"binary_data_size": 8}}]}, b"\0" * 8, "12 bytes expected"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}, b"",
         "non-negative"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                     {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, b"",
         "given twice"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": ["a"]}]}, b"",
         "not valid INT8: the values must be JSON numbers"),
        ({"inputs": [{"shape": [1]}]}, b"", "'name'"),
    ],
)  # fmt: skip
def test_malformed(header: dict[str, object], extra: bytes, fragment: str) -> None:
    h = json.dumps(header).encode()
    with pytest.raises(InvalidInput, match=fragment):
        oip.parse_infer_request(h + extra, len(h))


# --- robustness: arbitrary bytes never crash the parser ----------------------------------------


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=512), header_length=st.one_of(st.none(), st.integers(-5, 600)))
def test_arbitrary_bytes_only_ever_raise_invalid_input(
    body: bytes, header_length: int | None
) -> None:
    with contextlib.suppress(InvalidInput):
        oip.parse_infer_request(body, header_length)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    inputs=st.lists(
        st.fixed_dictionaries(
            {"name": st.text(max_size=4)},
            optional={
                "datatype": st.sampled_from([*DATATYPES, "BYTES", 7]),
                "shape": json_values,
                "data": json_values,
                "parameters": json_values,
            },
        ),
        max_size=3,
    ),
    extra=st.binary(max_size=64),
)
def test_arbitrary_json_requests_only_ever_raise_invalid_input(
    inputs: list[dict[str, object]], extra: bytes
) -> None:
    header = json.dumps({"inputs": inputs}).encode()
    with contextlib.suppress(InvalidInput):
        oip.parse_infer_request(header + extra, len(header))
