"""What a repeated JSON header said is reused within one connection, with the same result.

Both sides keep a ``HeaderCache`` per connection (server: a request header by its exact bytes
and a response header by its output shapes; SDK: the reverse). Every test compares the cached
answer with a fresh parse and checks that what depends on the body is checked on every call."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from blindinfer._wire import oip
from blindinfer.errors import InvalidInput


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
    cache = oip.HeaderCache()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, hlen = _body({"x": x, "m": np.ones((1, 5), np.int64)}, outputs=["y"])
    first = oip.parse_infer_request(body, hlen, cache)
    assert len(cache) == 1
    second = oip.parse_infer_request(bytearray(body), hlen, cache)
    _same(first, second)
    _same(first, oip.parse_infer_request(body, hlen))  # and as parsed without any cache
    # Each request gets its own views and containers, over its own body.
    assert second.inputs["x"].base is not first.inputs["x"].base
    assert second.outputs is not first.outputs


def test_caches_are_never_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[int] = []
    real = oip._parse_infer_request

    def counting(*args: Any) -> Any:
        parses.append(1)
        return real(*args)

    monkeypatch.setattr(oip, "_parse_infer_request", counting)
    body, hlen = _body({"x": np.zeros((2, 2), np.float32)})
    mine, theirs = oip.HeaderCache(), oip.HeaderCache()
    oip.parse_infer_request(body, hlen)  # without a cache: parsed, kept nowhere
    oip.parse_infer_request(body, hlen, theirs)  # parsed, kept in theirs
    oip.parse_infer_request(body, hlen, theirs)  # found in theirs
    assert len(parses) == 2
    oip.parse_infer_request(body, hlen, mine)  # another connection: parsed again
    assert len(parses) == 3


def test_other_data_under_a_cached_header_is_read_from_its_own_body() -> None:
    cache = oip.HeaderCache()
    body, hlen = _body({"x": np.zeros((2, 2), np.float32)})
    oip.parse_infer_request(body, hlen, cache)
    other = body[:hlen] + np.full((2, 2), 7, np.float32).tobytes()
    np.testing.assert_array_equal(oip.parse_infer_request(other, hlen, cache).inputs["x"], 7)


@pytest.mark.parametrize("delta", [-1, 1, 4])
def test_a_cached_header_with_a_body_of_another_length_is_refused_as_before(delta: int) -> None:
    cache = oip.HeaderCache()
    body, hlen = _body({"x": np.zeros((2, 2), np.float32)})
    bad = body + b"\0" * delta if delta > 0 else body[:delta]
    with pytest.raises(InvalidInput) as uncached:
        oip.parse_infer_request(bad, hlen)
    oip.parse_infer_request(body, hlen, cache)  # now the header is cached
    with pytest.raises(InvalidInput) as cached:
        oip.parse_infer_request(bad, hlen, cache)
    assert str(cached.value) == str(uncached.value)


def test_headers_that_differ_per_request_are_not_kept() -> None:
    cache = oip.HeaderCache()
    x = np.zeros((1, 2), np.float32)
    with_id = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
               "parameters": {"binary_data_size": 8}}], "id": "r1"}  # fmt: skip
    header = json.dumps(with_id).encode()
    assert oip.parse_infer_request(header + x.tobytes(), len(header), cache).request_id == "r1"
    as_json = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                          "data": [1, 2]}]}).encode()  # fmt: skip
    oip.parse_infer_request(as_json, None, cache)
    assert len(cache) == 0


def test_the_cache_is_bounded() -> None:
    cache = oip.HeaderCache(size=8)
    for n in range(50):
        body, hlen = _body({f"x{n}": np.zeros((1,), np.float32)})
        oip.parse_infer_request(body, hlen, cache)
        assert len(cache) <= 8


def test_a_big_header_is_parsed_every_time() -> None:
    cache = oip.HeaderCache(max_header=1024)
    inputs = {f"input_{i:04d}": np.zeros((1,), np.uint8) for i in range(40)}
    body, hlen = _body(inputs)
    assert hlen > 1024
    assert len(oip.parse_infer_request(body, hlen, cache).inputs) == 40
    assert len(cache) == 0


def test_binary_output_sets_are_fresh_per_request() -> None:
    cache = oip.HeaderCache()
    doc = {"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    header = json.dumps(doc).encode()
    first = oip.parse_infer_request(header, len(header), cache)
    assert first.binary_outputs == {"y"}
    assert isinstance(first.binary_outputs, set)
    first.binary_outputs.add("z")
    assert oip.parse_infer_request(header, len(header), cache).binary_outputs == {"y"}


# --- the response side ---------------------------------------------------------------------------


def test_a_cached_response_header_is_the_one_written_anew() -> None:
    cache = oip.HeaderCache()
    outs = {"y": np.ones((2, 3), np.float32), "ids": np.arange(4, dtype=np.int64)}
    fresh, _ = oip.encode_infer_response("m", outs, True)
    for _ in range(2):
        chunks, hlen = oip.encode_infer_response("m", outs, True, cache=cache)
        assert bytes(chunks[0]) == bytes(fresh[0]) and hlen == len(chunks[0])
    assert len(cache) == 1
    chunks, _ = oip.encode_infer_response(
        "m", {"y": np.ones((5, 3), np.float32)}, True, cache=cache
    )
    assert json.loads(bytes(chunks[0]))["outputs"][0]["shape"] == [5, 3]


def test_responses_with_an_id_parameters_or_json_outputs_are_written_in_full() -> None:
    cache = oip.HeaderCache()
    outs = {"y": np.ones((1, 2), np.float32)}
    chunks, hlen = oip.encode_infer_response("m", outs, True, "req-9", {"receipt": "abc"}, cache)
    doc = json.loads(bytes(chunks[0])[:hlen])
    assert doc["id"] == "req-9" and doc["parameters"] == {"receipt": "abc"}
    chunks, hlen = oip.encode_infer_response("m", outs, set(), cache=cache)
    assert hlen is None and json.loads(bytes(chunks[0]))["outputs"][0]["data"] == [1.0, 1.0]
    assert len(cache) == 0


def test_the_client_reads_a_repeated_response_header_once() -> None:
    cache = oip.HeaderCache()
    outs = {"y": np.arange(6, dtype=np.float32).reshape(2, 3)}
    chunks, hlen = oip.encode_infer_response("m", outs, True)
    body = b"".join(bytes(c) for c in chunks)
    first = oip.parse_infer_response(body, hlen, cache)
    assert len(cache) == 1
    other = body[:hlen] + (np.arange(6, dtype=np.float32) * 2).tobytes()
    second = oip.parse_infer_response(other, hlen, cache)
    np.testing.assert_array_equal(first["y"], outs["y"])
    np.testing.assert_array_equal(second["y"], outs["y"] * 2)
    with pytest.raises(ValueError):  # a tensor cut short is refused on a cached header too
        oip.parse_infer_response(body[:-1], hlen, cache)


def test_the_client_does_not_keep_headers_with_parameters_or_an_id() -> None:
    cache = oip.HeaderCache()
    outs = {"y": np.ones((1, 2), np.float32)}
    chunks, hlen = oip.encode_infer_response("m", outs, True, None, {"receipt": "r"})
    body = b"".join(bytes(c) for c in chunks)
    _, params = oip.parse_infer_response_parameters(body, hlen, cache)
    assert params == {"receipt": "r"}
    chunks, hlen = oip.encode_infer_response("m", outs, True, "id-1")
    oip.parse_infer_response(b"".join(bytes(c) for c in chunks), hlen, cache)
    assert len(cache) == 0


def test_request_headers_are_written_once_per_shape() -> None:
    cache = oip.HeaderCache()
    x = np.zeros((2, 3), np.float32)
    first, _ = oip.encode_infer_request({"x": x}, None, {"receipt": True}, cache)
    again, _ = oip.encode_infer_request({"x": x + 1}, None, {"receipt": True}, cache)
    assert again[0] is first[0] and len(cache) == 1
    uncached, _ = oip.encode_infer_request({"x": x}, None, {"receipt": True})
    assert bytes(uncached[0]) == bytes(first[0])
    other, _ = oip.encode_infer_request({"x": np.zeros((4, 3), np.float32)}, cache=cache)
    assert json.loads(bytes(other[0]))["inputs"][0]["shape"] == [4, 3]
    # A parameter that cannot be a key is written every time, never kept.
    listed, _ = oip.encode_infer_request({"x": x}, None, {"tags": ["a"]}, cache)
    assert json.loads(bytes(listed[0]))["parameters"]["tags"] == ["a"]
    assert len(cache) == 2
