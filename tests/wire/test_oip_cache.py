"""What parsing a repeated header found is reused, and the result is the same as parsing it anew.

Both sides cache by the header's exact bytes (server: a request's header; client: a response's
header) or by what the header says (the encoders). Every test compares the cached answer with a
fresh parse and checks what still depends on the body is checked on every call."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from blindinfer._wire import oip
from blindinfer.errors import InvalidInput


@pytest.fixture(autouse=True)
def _empty_caches() -> Iterator[None]:
    oip._plans.clear()
    oip._response_plans.clear()
    yield
    oip._plans.clear()
    oip._response_plans.clear()


def _body(inputs: dict[str, np.ndarray], **kw: object) -> tuple[bytes, int]:
    chunks, hlen = oip.encode_infer_request(inputs, **kw)  # type: ignore[arg-type]
    return b"".join(bytes(c) for c in chunks), hlen


def _same(a: oip.InferRequest, b: oip.InferRequest) -> None:
    assert a.inputs.keys() == b.inputs.keys()
    for name in a.inputs:
        assert a.inputs[name].dtype == b.inputs[name].dtype
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name])
    assert (a.outputs, a.binary_outputs, a.request_id, a.receipt) == (
        b.outputs,
        b.binary_outputs,
        b.request_id,
        b.receipt,
    )


def test_a_repeated_request_header_is_parsed_once_with_the_same_result() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, hlen = _body({"x": x, "m": np.ones((1, 5), np.int64)}, outputs=["y"])
    first = oip.parse_infer_request(body, hlen)
    assert len(oip._plans) == 1
    second = oip.parse_infer_request(bytearray(body), hlen)
    _same(first, second)
    # Each request gets its own views and containers, over its own body.
    assert second.inputs["x"].base is not first.inputs["x"].base
    assert second.outputs is not first.outputs


def test_other_data_under_a_cached_header_is_read_from_its_own_body() -> None:
    body, hlen = _body({"x": np.zeros((2, 2), np.float32)})
    oip.parse_infer_request(body, hlen)
    other = body[:hlen] + np.full((2, 2), 7, np.float32).tobytes()
    np.testing.assert_array_equal(oip.parse_infer_request(other, hlen).inputs["x"], 7)


@pytest.mark.parametrize("delta", [-1, 1, 4])
def test_a_cached_header_with_a_body_of_another_length_is_refused_as_before(delta: int) -> None:
    body, hlen = _body({"x": np.zeros((2, 2), np.float32)})
    oip._plans.clear()
    bad = body + b"\0" * delta if delta > 0 else body[:delta]
    with pytest.raises(InvalidInput) as uncached:
        oip.parse_infer_request(bad, hlen)
    oip.parse_infer_request(body, hlen)  # now the header is cached
    with pytest.raises(InvalidInput) as cached:
        oip.parse_infer_request(bad, hlen)
    assert str(cached.value) == str(uncached.value)


def test_headers_that_differ_per_request_are_not_kept() -> None:
    x = np.zeros((1, 2), np.float32)
    with_id = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
               "parameters": {"binary_data_size": 8}}], "id": "r1"}  # fmt: skip
    header = json.dumps(with_id).encode()
    assert oip.parse_infer_request(header + x.tobytes(), len(header)).request_id == "r1"
    as_json = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                          "data": [1, 2]}]}).encode()  # fmt: skip
    oip.parse_infer_request(as_json, None)
    assert oip._plans == {}


def test_the_plan_cache_is_bounded() -> None:
    for n in range(oip._PLAN_CACHE_SIZE + 10):
        body, hlen = _body({f"x{n}": np.zeros((1,), np.float32)})
        oip.parse_infer_request(body, hlen)
        assert len(oip._plans) <= oip._PLAN_CACHE_SIZE


def test_a_big_header_is_parsed_every_time() -> None:
    inputs = {f"input_{i:04d}": np.zeros((1,), np.uint8) for i in range(200)}
    body, hlen = _body(inputs)
    assert hlen > oip._PLAN_MAX_HEADER
    assert len(oip.parse_infer_request(body, hlen).inputs) == 200
    assert oip._plans == {}


def test_binary_output_sets_are_fresh_per_request() -> None:
    doc = {"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    header = json.dumps(doc).encode()
    first = oip.parse_infer_request(header, len(header))
    assert first.binary_outputs == {"y"}
    assert isinstance(first.binary_outputs, set)
    first.binary_outputs.add("z")
    assert oip.parse_infer_request(header, len(header)).binary_outputs == {"y"}


# --- the response side ---------------------------------------------------------------------------


def _uncached_response_header(name: str, outputs: dict[str, np.ndarray]) -> bytes:
    descs = [
        {
            "name": k,
            "datatype": oip.datatype_of(v),
            "shape": list(v.shape),
            "parameters": {"binary_data_size": v.nbytes},
        }
        for k, v in outputs.items()
    ]
    doc = {"model_name": name, "model_version": "1", "outputs": descs}
    return json.dumps(doc, separators=(",", ":")).encode()


def test_a_cached_response_header_is_the_one_written_anew() -> None:
    outs = {"y": np.ones((2, 3), np.float32), "ids": np.arange(4, dtype=np.int64)}
    for _ in range(2):
        chunks, hlen = oip.encode_infer_response("m", outs, True)
        assert bytes(chunks[0]) == _uncached_response_header("m", outs)
        assert hlen == len(chunks[0])
    chunks, _ = oip.encode_infer_response("m", {"y": np.ones((5, 3), np.float32)}, True)
    assert json.loads(bytes(chunks[0]))["outputs"][0]["shape"] == [5, 3]


def test_responses_with_an_id_parameters_or_json_outputs_are_written_in_full() -> None:
    outs = {"y": np.ones((1, 2), np.float32)}
    chunks, hlen = oip.encode_infer_response("m", outs, True, "req-9", {"receipt": "abc"})
    doc = json.loads(bytes(chunks[0])[:hlen])
    assert doc["id"] == "req-9" and doc["parameters"] == {"receipt": "abc"}
    chunks, hlen = oip.encode_infer_response("m", outs, set())
    assert hlen is None and json.loads(bytes(chunks[0]))["outputs"][0]["data"] == [1.0, 1.0]


def test_the_client_reads_a_repeated_response_header_once() -> None:
    outs = {"y": np.arange(6, dtype=np.float32).reshape(2, 3)}
    chunks, hlen = oip.encode_infer_response("m", outs, True)
    body = b"".join(bytes(c) for c in chunks)
    first = oip.parse_infer_response(body, hlen)
    assert len(oip._response_plans) == 1
    other = body[:hlen] + (np.arange(6, dtype=np.float32) * 2).tobytes()
    second = oip.parse_infer_response(other, hlen)
    np.testing.assert_array_equal(first["y"], outs["y"])
    np.testing.assert_array_equal(second["y"], outs["y"] * 2)
    with pytest.raises(ValueError):  # a tensor cut short is refused on a cached header too
        oip.parse_infer_response(body[:-1], hlen)


def test_the_client_does_not_keep_headers_with_parameters_or_an_id() -> None:
    outs = {"y": np.ones((1, 2), np.float32)}
    chunks, hlen = oip.encode_infer_response("m", outs, True, None, {"receipt": "r"})
    _, params = oip.parse_infer_response_parameters(b"".join(bytes(c) for c in chunks), hlen)
    assert params == {"receipt": "r"}
    chunks, hlen = oip.encode_infer_response("m", outs, True, "id-1")
    oip.parse_infer_response(b"".join(bytes(c) for c in chunks), hlen)
    assert oip._response_plans == {}
