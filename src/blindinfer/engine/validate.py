"""Model validation at upload: parse, refuse external data, record the signature.

A model is untrusted input from the owner's side of the API. It must parse as ONNX, must not
reference external data files (onnxruntime would open a path named inside the model: never
let a model make the server read a file), and must load in onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from blindinfer.errors import InvalidModel
from blindinfer.wire.tensors import ONNX_TO_DATATYPE


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``shape`` uses -1 for dynamic dimensions (OIP v2 convention);
    ``dim_names`` keeps symbolic names ("batch") where the model gives them."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def parse_model(data: bytes) -> None:
    """Parse and structurally check ONNX bytes; refuse any reference to external data.

    Memory matters for big models: the Python ModelProto is dropped before the checker runs, and
    the checker gets the bytes (given a ModelProto it would serialize a third copy)."""
    if not data:
        raise InvalidModel("the model is empty: upload the raw bytes of an .onnx file")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModel(
            f"the upload is not a valid ONNX model (protobuf parse failed: {exc})"
        ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModel("the upload is not a valid ONNX model (it has no graph nodes)")
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise InvalidModel(
                f"the model references external data (tensor {tensor.name!r}); blindinfer only "
                "accepts self-contained models: re-save it with "
                "onnx.save_model(model, path, save_as_external_data=False)"
            )
    del model
    try:
        onnx.checker.check_model(data)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise InvalidModel(f"the ONNX model failed validation: {first}") from exc


def _spec(arg: Any) -> TensorSpec:
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise InvalidModel(
            f"model tensor {arg.name!r} has unsupported type {arg.type}; supported element "
            f"types: {', '.join(sorted(ONNX_TO_DATATYPE))}"
        )
    shape: list[int] = []
    names: list[str | None] = []
    for dim in arg.shape or []:
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
            names.append(None)
        else:
            shape.append(-1)
            names.append(dim if isinstance(dim, str) else None)
    return TensorSpec(arg.name, datatype, tuple(shape), tuple(names))


def signature_of(session: Any) -> Signature:
    """The inputs and outputs of an onnxruntime InferenceSession."""
    return Signature(
        inputs=tuple(_spec(a) for a in session.get_inputs()),
        outputs=tuple(_spec(a) for a in session.get_outputs()),
    )
