"""The wire-level split of a model (``_engine/skeleton.py``): the skeleton is exactly what
protobuf sees minus tensor payloads, the loadable form runs exactly like the upload, and
malformed bytes are refused rather than read differently from protobuf."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf.message import DecodeError, Message
from onnx import TensorProto, helper, numpy_helper

from blindinfer._engine.registry import _ortvalue
from blindinfer._engine.skeleton import IN_MEMORY, MAX_DEPTH, MIN_IN_MEMORY, Split, split
from blindinfer._engine.validate import check_no_external_data, parse_model
from blindinfer._server.buffers import WritableBytes
from blindinfer.errors import InvalidModel

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PAYLOADS = ("float_data", "int32_data", "string_data", "int64_data", "raw_data")
PAYLOADS += ("double_data", "uint64_data")


def _strip(msg: Message) -> None:
    """Clear every TensorProto's payload fields, anywhere in the tree (the reference skeleton)."""
    if isinstance(msg, TensorProto):
        for name in PAYLOADS:
            msg.ClearField(name)
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        for child in [value] if isinstance(value, Message) else value:
            _strip(child)


def _normal(data: bytes, strip: bool) -> bytes:
    model = onnx.ModelProto()
    model.ParseFromString(data)
    if strip:
        _strip(model)
    model.DiscardUnknownFields()
    return model.SerializeToString(deterministic=True)


def _rich_model() -> onnx.ModelProto:
    """Tensors in every kind of place: initializers (big and small), a Constant attribute, an If
    with a subgraph initializer, a local function, a sparse initializer, training_info."""
    rng = np.random.default_rng(1)
    big = numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32), "big")
    small = numpy_helper.from_array(np.arange(4, dtype=np.int64), "small")
    sub_w = numpy_helper.from_array(np.full((512,), 2.0, np.float32), "sub_w")
    then = helper.make_graph(
        [helper.make_node("Mul", ["h", "sub_w"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
        [sub_w],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    const = helper.make_tensor("c", TensorProto.FLOAT, [512], np.ones(512, np.float32).tolist())
    nodes = [
        helper.make_node("Constant", [], ["cst"], value=const),
        helper.make_node("MatMul", ["x", "big"], ["m"]),
        helper.make_node("Add", ["m", "cst"], ["h0"]),
        helper.make_node("AddOne", ["h0"], ["h"], domain="local"),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp"),
        numpy_helper.from_array(np.array([1, 3], np.int64), "sp_idx"),
        [8],
    )
    graph = helper.make_graph(
        nodes,
        "rich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
        [big, small, zero],
        sparse_initializer=[sparse],
    )
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    function = helper.make_function(
        "local",
        "AddOne",
        ["a"],
        ["b"],
        [
            helper.make_node("Constant", [], ["k"], value=one),
            helper.make_node("Add", ["a", "k"], ["b"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    info = model.training_info.add()
    info.initialization.CopyFrom(helper.make_graph([], "init", [], [], [small]))
    return model


RICH = _rich_model().SerializeToString()
CORPUS = {
    "rich": RICH,
    **{p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.onnx")) if p.stem != "not_onnx"},
    **{f"hostile-{p.stem}": p.read_bytes() for p in sorted((FIXTURES / "hostile").glob("*.onnx"))},
}


def _restored(parts: Split, data: bytes, form: str) -> bytes:
    """The loadable or checkable form with the handed-over weights put back as raw_data: must
    be the uploaded model itself."""
    model = onnx.load_model_from_string(parts.loadable if form == "loadable" else parts.checkable)
    handed = {e.name: e for e in parts.externals}
    for tensor in model.graph.initializer:
        ext = handed.get(tensor.name)
        if ext is None:
            continue
        if form == "loadable":
            assert tensor.data_location == TensorProto.EXTERNAL
            assert {e.key: e.value for e in tensor.external_data}["location"] == IN_MEMORY
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
        else:
            assert list(tensor.dims) == [0] and not tensor.HasField("raw_data")
            tensor.ClearField("dims")
            tensor.dims.extend(ext.shape)
        tensor.raw_data = data[ext.offset : ext.offset + ext.length]
    model.DiscardUnknownFields()
    return model.SerializeToString(deterministic=True)


def _assert_faithful(data: bytes, parts: Split) -> None:
    assert _normal(parts.skeleton, strip=False) == _normal(data, strip=True)
    for form in ("loadable", "checkable"):
        assert _restored(parts, data, form) == _normal(data, strip=False), form


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_form_is_the_uploaded_model(name: str) -> None:
    """The skeleton is the model minus payloads; the loadable and checkable forms are the model
    once the handed-over weights are put back."""
    data = CORPUS[name]
    _assert_faithful(data, split(data))


def test_the_checker_passes_the_checkable_form_and_checks_what_stays_inline() -> None:
    parts = split(RICH)
    assert parts.externals and parts.checkable != parts.loadable
    onnx.checker.check_model(parts.checkable)
    small = split(CORPUS["mlp"])
    assert small.checkable is small.loadable  # nothing handed over: one form


def test_external_data_stays_visible_in_the_skeleton() -> None:
    """Every hostile file's external reference survives into the skeleton the checks read."""
    for path in sorted((FIXTURES / "hostile").glob("ext_*.onnx")):
        skel = onnx.load_model_from_string(split(path.read_bytes()).skeleton)
        with pytest.raises(InvalidModel, match="external data"):
            check_no_external_data(skel)


def _outputs(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _load_split(data: bytes) -> ort.InferenceSession:
    parts = split(data)
    opts = ort.SessionOptions()
    opts.add_external_initializers(
        [e.name for e in parts.externals], [_ortvalue(e, data) for e in parts.externals]
    )
    return ort.InferenceSession(parts.loadable, opts, providers=["CPUExecutionProvider"])


def test_loadable_runs_like_the_upload() -> None:
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    parts = split(RICH)
    assert [e.name for e in parts.externals] == ["big"]  # small, subgraph, sparse stay inline
    assert IN_MEMORY.encode() in parts.loadable and len(parts.loadable) < len(RICH) // 10
    got = _load_split(RICH).run(None, {"x": x})
    want = _outputs(RICH, {"x": x})
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32]
DTYPES += [np.uint32, np.int64, np.uint64, np.bool_]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_numpy_element_type_loads_from_the_upload(dtype: type) -> None:
    """Each initializer type that can be handed over as a view; offsets in the upload are odd
    (a 3-byte doc string first), so views are unaligned and onnxruntime must copy them."""
    count = MIN_IN_MEMORY  # >= MIN_IN_MEMORY bytes for every type
    values = (np.random.default_rng(3).integers(0, 100, count) % 2 == 0).astype(dtype)
    if np.dtype(dtype).kind == "f":
        values = np.random.default_rng(3).standard_normal(count).astype(dtype)
    weight = numpy_helper.from_array(values, "w")
    weight.doc_string = "odd"
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", onnx_type, [count])],
        [weight],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    parts = split(data)
    assert len(parts.externals) == 1 and parts.externals[0].dtype == np.dtype(dtype)
    (out,) = _load_split(data).run(None, {})
    assert np.array_equal(out, values)


BITS_TYPES = [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ]
BITS_TYPES += [TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ]


@pytest.mark.parametrize("onnx_type", BITS_TYPES, ids=TensorProto.DataType.Name)
def test_types_numpy_lacks_load_from_the_upload_as_their_bits(onnx_type: int) -> None:
    """bfloat16 and the float8 types are handed over as unsigned integers of their width,
    tagged with their ONNX type; they run as the inline model does, from their own copy."""
    width = np.uint16 if onnx_type == TensorProto.BFLOAT16 else np.uint8
    count = MIN_IN_MEMORY
    bits = np.random.default_rng(5).integers(0, 0x70, count).astype(width)  # finite values
    weight = helper.make_tensor("w", onnx_type, [count], bits.tobytes(), raw=True)
    weight.doc_string = "odd"  # an unaligned offset in the upload
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [count])],
        [weight],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()
    (external,) = split(data).externals
    assert (external.onnx_type, external.dtype) == (onnx_type, np.dtype(width))
    (want,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {})
    upload = WritableBytes(len(data))
    upload.view[:] = data
    session = _load_split(upload.data)
    upload.view[:] = b"\x00" * len(data)
    (got,) = session.run(None, {})
    assert np.array_equal(got, want, equal_nan=True)


def test_onnxruntime_copies_the_weights_so_the_upload_can_be_freed() -> None:
    """The documented contract the server relies on (the upload is dropped once loaded): the
    session keeps its own copy; scribbling over the upload afterwards changes nothing."""
    w = np.random.default_rng(4).standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])],
        [numpy_helper.from_array(w, "w")],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    upload = WritableBytes(len(data))
    upload.view[:] = data
    session = _load_split(upload.data)
    upload.view[:] = b"\xff" * len(data)  # NaN everywhere the weights were
    (out,) = session.run(None, {"x": np.zeros((256, 256), np.float32)})
    assert np.array_equal(out, w)


def _initializer_model(weight: TensorProto) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_only_plain_big_payloads_are_handed_over() -> None:
    big = np.ones(MIN_IN_MEMORY // 4, np.float32)
    plain = numpy_helper.from_array(big, "w")
    assert len(split(_initializer_model(plain)).externals) == 1
    small = numpy_helper.from_array(big[:100], "w")
    assert split(_initializer_model(small)).externals == ()
    wrong_size = numpy_helper.from_array(big, "w")
    wrong_size.dims[0] += 1  # the checker and onnxruntime must see (and refuse) it as it is
    assert split(_initializer_model(wrong_size)).externals == ()
    with pytest.raises(InvalidModel, match="too small for the declared shape"):
        parse_model(_initializer_model(wrong_size))
    packed = numpy_helper.from_array(big.view(np.uint8), "w")
    packed.data_type = TensorProto.INT4  # two elements a byte: stays inline
    packed.dims[0] *= 2
    assert split(_initializer_model(packed)).externals == ()
    doubled = onnx.load_model_from_string(_initializer_model(plain))
    # raw_data given twice in one tensor (protobuf keeps the last): left as uploaded
    tensor = doubled.graph.initializer[0].SerializeToString() + bytes([9 << 3 | 2, 4]) + b"abcd"
    doubled.graph.ClearField("initializer")
    doubled.graph.initializer.add().ParseFromString(tensor)
    assert split(doubled.SerializeToString()).externals == ()


def test_non_minimal_varints_are_read_like_protobuf() -> None:
    """A length written in more bytes than needed is still that length (protobuf accepts it)."""
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    graph = model.graph.SerializeToString()
    length = len(graph)
    padded = bytes([(length & 0x7F) | 0x80, (length >> 7) | 0x80, 0x00])  # 3-byte varint
    data = bytes([7 << 3 | 2]) + padded + graph + bytes([1 << 3, 8])  # graph, ir_version 8
    assert _normal(split(data).skeleton, False) == _normal(data, True)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (bytes([7 << 3 | 2, 50]) + b"\x00" * 10, "past the end"),
        (bytes([7 << 3 | 2]) + b"\xff" * 11, "varint"),
        (bytes([1 << 3 | 3]) + bytes([1 << 3 | 4]), "groups"),
        (bytes([1 << 3 | 6, 0]), "wire type 6"),
        (bytes([0, 0]), "field number 0"),
        (bytes([1 << 3 | 1, 1, 2]), "past the end"),
    ],
)
def test_malformed_bytes_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(InvalidModel, match=match):
        split(data)


def _wrap(number: int, inner: bytes) -> bytes:
    """A length-delimited field, by hand (upb itself refuses to build messages this deep)."""
    length = bytearray()
    n = len(inner)
    while n > 0x7F:
        length.append(n & 0x7F | 0x80)
        n >>= 7
    length.append(n)
    return bytes([number << 3 | 2]) + bytes(length) + inner


def test_nesting_past_protobufs_limit_is_refused() -> None:
    def nested(levels: int) -> bytes:
        graph = b""
        for _ in range(levels):  # graph > node(1) > attribute(5) > g(6) > graph: 3 per level
            graph = _wrap(1, _wrap(5, _wrap(6, graph)))
        return _wrap(7, graph)  # ModelProto.graph

    split(nested(MAX_DEPTH // 3 - 1))
    with pytest.raises(InvalidModel, match="deeper"):
        split(nested(MAX_DEPTH // 3 + 1))


def test_mutated_models_never_split_differently_from_protobuf() -> None:
    """Seeded random corruptions of the rich model: whenever both protobuf and the walk accept
    the bytes, the skeleton is what protobuf read, minus payloads, and the loadable and
    checkable forms hold the same model once their handed-over weights are put back."""
    rng = random.Random(5)
    agreed = 0
    for _ in range(400):
        data = bytearray(RICH)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[pos] = rng.randrange(256)
            else:
                del data[pos]
        try:
            reference = _normal(bytes(data), strip=True)
        except DecodeError:
            continue
        try:
            parts = split(bytes(data))
        except InvalidModel:
            continue
        assert _normal(parts.skeleton, strip=False) == reference
        _assert_faithful(bytes(data), parts)
        agreed += 1
    assert agreed > 100
