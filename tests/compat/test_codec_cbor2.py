"""The small CBOR items of the BlindAI 0.6 messages are decoded by cbor2: its limits (depth,
indefinite lengths, duplicate keys, tags) set as the hand-written decoder had them, bounded on
hostile input, and its decoders reused safely across bodies."""

from __future__ import annotations

import re
import tracemalloc

import cbor2
import numpy as np
import pytest

from blindinfer._server.compat import UploadDecoder, decode_delete, decode_run
from blindinfer._server.compat.codec import MAX_SMALL_DEPTH, SMALL_ITEM_LIMIT
from blindinfer.errors import InvalidInput

FILLER = b"".join(b"\x19" + i.to_bytes(2, "big") for i in range(400))  # distinct uints


def run_body(**fields: object) -> bytes:
    doc: dict[str, object] = {
        "model_id": "some-id",
        "model_hash": "",
        "inputs": [
            {
                "info": {"fact": [2], "datum_type": 0, "node_name": "x"},
                "bytes_data": np.arange(2, dtype=np.float32).tobytes(),
            }
        ],
    }
    doc.update(fields)
    return bytes(cbor2.dumps(doc))


def upload(body: bytes, chunk: int = 4096) -> object:
    dec = UploadDecoder(10**6)
    for i in range(0, len(body), chunk):
        dec.feed(body[i : i + chunk])
    return dec.finish()


def nested(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_limit_is_the_same_for_run_delete_and_upload() -> None:
    # the message map is level 1: a value may hold MAX_SMALL_DEPTH - 1 more levels
    ok = run_body(client_info=nested(MAX_SMALL_DEPTH - 1))
    assert decode_run(ok).ref == "some-id"
    too_deep = run_body(client_info=nested(MAX_SMALL_DEPTH))
    with pytest.raises(InvalidInput, match="nested more than 8 levels"):
        decode_run(too_deep)
    with pytest.raises(InvalidInput, match="nested more than 8 levels"):
        decode_delete(too_deep)
    # inside a tensor's info (level 4 and below)
    deep_info = {"fact": [2], "datum_type": 0, "x": nested(MAX_SMALL_DEPTH - 3)}
    with pytest.raises(InvalidInput, match="nested more than 8 levels"):
        decode_run(run_body(inputs=[{"info": deep_info, "bytes_data": b""}]))
    # UploadModel fields are decoded on their own, at level 0 (as before)
    body = cbor2.dumps({"client_info": nested(MAX_SMALL_DEPTH), "model": []})
    assert upload(body).model == b""  # type: ignore[attr-defined]
    body = cbor2.dumps({"client_info": nested(MAX_SMALL_DEPTH + 1), "model": []})
    with pytest.raises(InvalidInput, match="nested more than 8 levels"):
        upload(body)


@pytest.mark.parametrize("chunk", [1, 2, 7])
def test_upload_items_cut_anywhere_decode_once_complete(chunk: int) -> None:
    info = {"uid": "é" * 40, "n": [1, -2, 3.5, None, True, b"\x00\xff"], "deep": {"a": {"b": 1}}}
    body = cbor2.dumps({"client_info": info, "model_name": "m", "model": [1, 2], "length": 2})
    got = upload(body, chunk)
    assert got.model == b"\x01\x02" and got.model_name == "m"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "value",
    [
        b"\x5f\x41x\xff",  # indefinite byte string
        b"\x7f\x61x\xff",  # indefinite text
        b"\x9f\x01\xff",  # indefinite array
        b"\xbf\x61a\x01\xff",  # indefinite map
        b"\x81\x9f\xff",  # nested
    ],
)
def test_indefinite_lengths_are_refused_in_every_small_item(value: bytes) -> None:
    with pytest.raises(InvalidInput, match="indefinite-length"):
        upload(b"\xa2\x6bclient_info" + value + b"\x65model\x80")
    with pytest.raises(InvalidInput, match="indefinite-length"):
        decode_run(b"\xa1\x6bclient_info" + value)


@pytest.mark.parametrize(
    "tagged",
    [
        cbor2.CBORTag(35, "(a+)+$"),  # a regular expression cbor2 would compile
        cbor2.CBORTag(28, [cbor2.CBORTag(29, 0)]),  # a shared value: a cyclic list
        cbor2.CBORTag(256, ["abc", cbor2.CBORTag(25, 0)]),  # string references
        cbor2.CBORTag(30, [1, 0]),  # a fraction 1/0
        cbor2.CBORTag(2, b"\xff" * 100),  # a bignum
        cbor2.CBORTag(55799, {}),  # self-described CBOR
        cbor2.CBORTag(123456789, 1),  # unknown to cbor2
    ],
    ids=lambda t: str(t.tag),
)
def test_every_tag_is_refused_before_cbor2_interprets_it(
    tagged: cbor2.CBORTag, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_ = re.compile

    def no_compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
        assert pattern != "(a+)+$", "cbor2 compiled a client's regular expression"
        return compile_(pattern, flags)

    monkeypatch.setattr(re, "compile", no_compile)
    for doc in ({"client_info": {"x": [tagged]}}, {"client_info": tagged}):
        with pytest.raises(InvalidInput, match="tags are not supported"):
            decode_run(cbor2.dumps(doc))
        with pytest.raises(InvalidInput, match="tags are not supported"):
            upload(cbor2.dumps({**doc, "model": []}))
    with pytest.raises(InvalidInput, match="tags are not supported"):  # a tagged map key
        decode_run(b"\xa1\xc1\x00\x00")


@pytest.mark.parametrize(
    "head",
    [
        b"\x5b\x10\x00\x00\x00\x00\x00\x00\x00",  # byte string of 2**60 bytes
        b"\x7b\x10\x00\x00\x00\x00\x00\x00\x00",  # text of 2**60 bytes
        b"\x9b\x10\x00\x00\x00\x00\x00\x00\x00",  # array of 2**60 items
        b"\xbb\x10\x00\x00\x00\x00\x00\x00\x00",  # map of 2**60 entries
        b"\x5a\x7f\xff\xff\xff",  # byte string of 2 GiB
    ],
)
def test_cbor2_allocates_with_the_bytes_not_the_declared_length(head: bytes) -> None:
    tracemalloc.start()
    with pytest.raises(InvalidInput, match="truncated"):
        decode_run(b"\xa1\x6bclient_info" + head + FILLER)
    dec = UploadDecoder(10**6)
    dec.feed(b"\xa2\x6bclient_info" + head + FILLER)
    with pytest.raises(InvalidInput, match="truncated"):
        dec.finish()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000


def test_an_upload_field_over_the_small_item_limit_is_refused_even_in_one_chunk() -> None:
    big = cbor2.dumps({"client_info": "a" * SMALL_ITEM_LIMIT, "model": []})
    with pytest.raises(InvalidInput, match="over 65536 bytes or malformed"):
        upload(big, chunk=len(big))
    fits = cbor2.dumps({"client_info": "a" * (SMALL_ITEM_LIMIT - 8), "model": []})
    assert upload(fits, chunk=len(fits)).model == b""  # type: ignore[attr-defined]


def test_simple_values_undefined_and_key_types() -> None:
    assert decode_run(run_body(model_hash=cbor2.undefined)).ref == "some-id"  # read as null
    for value in (cbor2.CBORSimpleValue(99), cbor2.CBORSimpleValue(0)):
        with pytest.raises(InvalidInput, match="unsupported CBOR simple value"):
            decode_run(run_body(client_info=[value]))
    for key in (b"\xf9\x3c\x00", b"\x41x", b"\x80", b"\xa0", b"\xf6"):  # float, bytes, [], {}, null
        with pytest.raises(InvalidInput, match="keys must be text or integers"):
            decode_run(b"\xa1\x6bclient_info\xa1" + key + b"\x00")
        with pytest.raises(InvalidInput, match="keys must be text or integers"):
            decode_run(b"\xa1" + key + b"\x00")


def test_duplicate_keys_name_only_blindai_fields() -> None:
    with pytest.raises(InvalidInput, match="the CBOR map key 'node_name' appears twice"):
        decode_run(b"\xa1\x64info\xa2\x69node_name\x00\x69node_name\x01")
    secret = "secret-client-text"
    body = b"\xa1\x6bclient_info\xa2" + (cbor2.dumps(secret) + b"\x00") * 2
    with pytest.raises(InvalidInput, match="a CBOR map key appears twice") as info:
        decode_run(body)
    assert secret not in str(info.value)
    with pytest.raises(InvalidInput, match="a CBOR map key appears twice") as info:
        decode_run((b"\xa2" + cbor2.dumps(secret) + b"\x00") + cbor2.dumps(secret) + b"\x00")
    assert secret not in str(info.value)


def test_decoders_are_reused_safely_after_every_kind_of_failure() -> None:
    good = run_body()
    failures = [
        b"\xa1\x6bclient_info\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # EOF mid-item
        b"\xa1\x6bclient_info\xc1\x00",  # a tag (a hook raises)
        b"\xa1\x6bclient_info\x62\xff\xfe",  # bad UTF-8
        b"\xa1\x6bclient_info\x1c",  # reserved
        run_body(client_info=nested(20)),
    ]
    for bad in failures:
        with pytest.raises(InvalidInput):
            decode_run(bad)
        req = decode_run(good)
        assert req.ref == "some-id" and np.frombuffer(req.inputs[0].data, "<f4").tolist() == [0, 1]


def test_run_tensors_of_many_inputs_are_views_and_other_byte_strings_copies() -> None:
    a, b = np.arange(5, dtype=np.int64), np.ones((2, 3), np.float64)
    inputs = [
        {"info": {"fact": [5], "datum_type": 3, "node_name": "a"}, "bytes_data": a.tobytes()},
        {"bytes_data": b.tobytes(), "info": {"fact": [2, 3], "datum_type": 1}},
    ]
    body = bytearray(run_body(inputs=inputs, client_info={"blob": b"\x01\x02"}))
    req = decode_run(body)
    for tensor, array in zip(req.inputs, (a, b), strict=True):
        assert isinstance(tensor.data, memoryview) and tensor.data.obj is body
        assert tensor.data.tobytes() == array.tobytes()
    with pytest.raises(InvalidInput, match="truncated"):
        decode_run(body[:-3])
