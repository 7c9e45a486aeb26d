"""OIP v2 message encoding: JSON and binary extension, both directions."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindinfer._wire import oip
from blindinfer._wire.tensors import DATATYPES, from_wire_bytes, to_wire_bytes
from blindinfer.errors import InvalidInput


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
    assert hlen is None and json.loads(bytes(chunks[0]))["outputs"][0]["data"] == [1.0] * 4


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
         "not valid INT8: the values must be integers, not strings"),
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


# --- bug classes found by fuzzing (tests/server/test_fuzz.py) -----------------------------------


def _body(*inputs: dict[str, object], **top: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **top}).encode()


def _features(**fields: object) -> dict[str, object]:
    return {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], **fields}


def _refused(body: bytes, fragment: str, header_length: int | None = None) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        oip.parse_infer_request(body, header_length)


def test_zero_size_tensors_parse_and_encode() -> None:
    req = oip.parse_infer_request(_body(_features(shape=[0, 4], data=[])), None)
    assert req.inputs["features"].shape == (0, 4) and req.inputs["features"].dtype == np.float32
    nested = oip.parse_infer_request(_body(_features(shape=[2, 0], data=[[], []])), None)
    assert nested.inputs["features"].shape == (2, 0)
    request, request_len = oip.encode_infer_request({"features": np.zeros((0, 4), np.float32)})
    back = oip.parse_infer_request(b"".join(bytes(c) for c in request), request_len)
    assert back.inputs["features"].shape == (0, 4)
    empty = {"y": np.zeros((0, 3), np.float32), "b": np.zeros((0,), bool)}
    for binary in (True, False):  # the binary reply cast a 0-size memoryview: TypeError, 500
        chunks, hlen = oip.encode_infer_response("m", empty, binary)
        parsed = oip.parse_infer_response(b"".join(bytes(c) for c in chunks), hlen)
        assert {k: v.shape for k, v in parsed.items()} == {"y": (0, 3), "b": (0,)}
    assert bytes(to_wire_bytes(np.zeros((0, 3), np.float32))) == b""


@pytest.mark.parametrize(
    "deep",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json.loads: was a 500
        b"[" * 100_000,  # never closed
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"[" * 73 + b"1" + b"]" * 73,
    ],
    ids=["arrays", "unclosed", "objects", "just-over"],
)
def test_deep_nesting_is_refused_before_parsing(deep: bytes) -> None:
    body = b'{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":' + deep + b"}]}"
    _refused(body, "nested more than 72 levels")
    _refused(b'{"inputs":[],"outputs":' + deep + b"}", "nested more than 72 levels")


def test_nesting_limit_counts_real_brackets_only() -> None:
    data = [[[[[[1.0, 2.0, 3.0, 4.0]]]]]]  # 6 levels: fine
    tricky = '[[[[{{{\\"\\\\' * 200  # brackets, escaped quotes and backslashes inside strings
    body = _body(_features(shape=[1, 1, 1, 1, 1, 4], data=data), id=tricky)
    assert oip.parse_infer_request(body, None).request_id == tricky
    assert oip.json_depth(body) == 9


@settings(max_examples=300, deadline=None)
@given(doc=st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(alphabet='[]{}"\\x', max_size=4), inner, max_size=3),
    max_leaves=30,
))  # fmt: skip
def test_json_depth_is_exact(doc: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False)):
        assert oip.json_depth(text.encode()) == depth(doc)


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([2**40, 2**40], "shape is too large"),  # the product overflowed int64 silently
        ([2**64], "shape is too large"),
        ([2**62, 4], "shape is too large"),  # 2**64 bytes of FP32
        ([0, 2**70], "shape is too large"),  # numpy refuses it even with a 0: was a 500
        ([1] * 65, "65 dimensions; at most 64"),  # numpy's limit: was a 500
        ([-1, 4], "non-negative integers"),
        ([True, 4], "non-negative integers"),
        ([1.0, 4], "non-negative integers"),
        (["1", 4], "non-negative integers"),
        ("1,4", "non-negative integers"),
    ],
)
def test_bad_shapes_are_refused(shape: object, fragment: str) -> None:
    _refused(_body(_features(shape=shape, data=[1])), fragment)
    header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": 0}}]}).encode()  # fmt: skip
    _refused(header, fragment, len(header))


def test_64_dimensions_are_fine() -> None:
    req = oip.parse_infer_request(_body(_features(shape=[1] * 64, data=[1.5])), None)
    assert req.inputs["features"].ndim == 64


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"data": [[1, 2], [3, 4]]}, r"nested as \[2, 2\], not as the shape \[1, 4\]"),
        ({"data": [[1, 2], [3]], "shape": [2]}, "not unevenly nested arrays"),
        ({"data": ["1", "2", "3", "4"]}, "must be JSON numbers, not strings"),
        ({"data": [1, None, 3, 4]}, "not nulls"),
        ({"data": [True, 1, 1, 1]}, "not booleans"),
        ({"data": [{"a": 1}] * 4}, "not objects"),
        ({"data": {"a": 1}}, "'data' must be a JSON array, not object"),
        ({"data": "1,2,3,4"}, "'data' must be a JSON array, not string"),
        ({"data": [1, 2]}, r"2 values given for shape \[1, 4\] \(4 needed\)"),
        ({"data": [1e39, 1, 1, 1]}, "out of the range of FP32"),
        ({"data": [10**39, 1, 1, 1]}, "out of the range of FP32"),
        ({"data": [70000, 1, 1, 1], "datatype": "FP16"}, "out of the range of FP16"),
        ({"data": [10**400, 1, 1, 1], "datatype": "FP64"}, "out of the range of FP64"),
        ({"data": [1000, 1, 1, 1], "datatype": "INT8"}, r"out of its range \(-128 to 127\)"),
        ({"data": [-1, 1, 1, 1], "datatype": "UINT8"}, r"out of its range \(0 to 255\)"),
        ({"data": [2**64, 1, 1, 1], "datatype": "UINT64"}, "out of its range"),
        ({"data": [2**63, 1, 1, 1], "datatype": "INT64"}, "out of its range"),
        ({"data": [1.5, 1, 1, 1], "datatype": "INT32"}, "must be integers, not non-integer"),
        ({"data": [1, 0, 1, 0], "datatype": "BOOL"}, "must be JSON true or false, not integers"),
        ({"datatype": 7}, "unsupported datatype of JSON type number"),
        ({"datatype": ["FP32"]}, "unsupported datatype of JSON type array"),
        ({"parameters": [1]}, "'parameters' must be a JSON object"),
        ({"parameters": {"binary_data_size": 16}}, "both 'data' and binary_data_size"),
    ],
)
def test_bad_json_tensors_are_refused(fields: dict[str, object], fragment: str) -> None:
    _refused(_body(_features(**fields)), fragment)


def test_json_values_convert_exactly() -> None:
    def parse(datatype: str, data: list[object]) -> list[object]:
        body = _body({"name": "x", "shape": [len(data)], "datatype": datatype, "data": data})
        out: list[object] = oip.parse_infer_request(body, None).inputs["x"].tolist()
        return out

    assert parse("UINT64", [1, 2**63 + 1, 2**64 - 1]) == [1, 2**63 + 1, 2**64 - 1]
    assert parse("INT64", [-(2**63), 2**63 - 1]) == [-(2**63), 2**63 - 1]
    assert parse("FP16", [65504, -1.5]) == [65504.0, -1.5]
    assert parse("BOOL", [True, False]) == [True, False]
    assert parse("FP32", []) == []
    scalar = _body({"name": "x", "shape": [], "datatype": "FP32", "data": 2.5})
    assert oip.parse_infer_request(scalar, None).inputs["x"].shape == ()


def test_strings_mixed_with_numbers_never_build_a_string_array() -> None:
    """np.asarray on these asked for 14.9 GiB (count x longest string x 4 bytes): a 500 or an
    out-of-memory kill for a 620 kB request."""
    body = _body({"name": "x", "shape": [200_001], "datatype": "FP32",
                  "data": ["A" * 20_000] + [1] * 200_000})  # fmt: skip
    _refused(body, "not strings")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[NaN]}]}', "NaN is not"),
        (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[-Infinity]}]}',
         "-Infinity is not"),
        (b'{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[' + b"9" * 5000 + b"]}]}",
         "a number in it is too long"),  # int()'s digit limit: a ValueError, was a 500
        (b'{"inputs":[{"name":"x\xff"}]}', "not valid UTF-8"),
        (b'\xef\xbb\xbf{"inputs":[]}', "not valid JSON"),
        ('{"inputs":[]}'.encode("utf-16"), "not valid UTF-8"),
    ],
)  # fmt: skip
def test_invalid_json_text_is_refused(text: bytes, fragment: str) -> None:
    _refused(text, fragment)


@pytest.mark.parametrize(
    ("top", "fragment"),
    [
        ({"id": 5}, "'id' must be a string"),
        ({"id": ["a"]}, "'id' must be a string"),
        ({"parameters": [1]}, "the request: 'parameters' must be a JSON object"),
        ({"parameters": {"binary_data_output": "yes"}}, "'binary_data_output' must be true or"),
        ({"outputs": "probabilities"}, "'outputs' must be a list"),
        ({"outputs": [{"name": 1}]}, "'outputs' must be a list"),
        ({"outputs": [{"name": "y"}, {"name": "y"}]}, "output 'y' is requested twice"),
        ({"outputs": [{"name": "y", "parameters": [1]}]}, "output 'y': 'parameters' must be"),
        ({"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "'binary_data' must be"),
    ],
)
def test_odd_request_fields_are_refused(top: dict[str, object], fragment: str) -> None:
    _refused(_body(_features(), **top), fragment)


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        (True, "non-negative integer"),
        (-1, "non-negative integer"),
        (16.0, "non-negative integer"),
        ("16", "non-negative integer"),
        (17, "runs past the end of the body"),
        (2**70, "runs past the end of the body"),
        (12, "12 bytes of data do not make a FP32 tensor"),
    ],
)
def test_bad_binary_data_sizes_are_refused(size: object, fragment: str) -> None:
    params = {"binary_data_size": size}
    header = _body({"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": params})
    body = header + bytes(16)
    _refused(body, fragment, len(header))


def test_header_length_must_match_the_json_part() -> None:
    chunks, hlen = oip.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    body = b"".join(bytes(c) for c in chunks)
    for wrong in (0, -1, len(body) + 1, 10**30):
        _refused(body, "must be between 1 and the body's length", wrong)
    for wrong in (hlen - 1, hlen + 1, len(body)):
        _refused(body, "not valid JSON|not valid UTF-8", wrong)
    _refused(body, "not valid JSON|not valid UTF-8", None)  # binary data read as JSON


def test_error_messages_quote_long_names_bounded() -> None:
    name = "n" * 100_000
    with pytest.raises(InvalidInput) as info:
        oip.parse_infer_request(_body({"name": name, "shape": [1], "datatype": "X"}), None)
    assert len(str(info.value)) < 300


def test_element_count() -> None:
    from blindinfer._wire.tensors import element_count

    assert element_count((2, 3, 4)) == 24
    assert element_count(()) == 1
    assert element_count((0, 2**40), 4) == 0
    with pytest.raises(ValueError, match="too large"):
        element_count((2**31, 2**31), 4)
    with pytest.raises(ValueError, match="negative"):
        element_count((2, -1))
    with pytest.raises(ValueError, match="65 dimensions"):
        element_count((1,) * 65)
