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
from google.protobuf.message import DecodeError, Message

from blindinfer._engine.skeleton import Split, split
from blindinfer._wire.models import TensorSpec
from blindinfer._wire.tensors import ONNX_TO_DATATYPE
from blindinfer.errors import InvalidModel, first_line


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# Inlined node count past which a model is refused before onnxruntime sees it: a 2.4 KB model
# whose local functions call each other twice per level expands to 2^30 nodes and hung the
# onnxruntime load (the onnx checker passed it in 10 ms). Large real models have ~10^4-10^5.
MAX_INLINED_NODES = 1_000_000
# Protobuf messages visited by the external-data walk; a model with more is refused.
MAX_MESSAGES = 50_000_000


def _messages(root: Message) -> Iterator[Message]:
    """Every message in the tree under ``root``, by a generic walk over the set fields.

    Generic on purpose: a list of known places (graph, subgraphs, attributes) missed
    ``model.functions`` once; this visits whatever the schema has, now or in later versions."""
    stack = [root]
    while stack:
        msg = stack.pop()
        yield msg
        for fd, value in msg.ListFields():
            if fd.type != fd.TYPE_MESSAGE:
                continue
            if isinstance(value, Message):
                stack.append(value)
            else:  # a repeated field of messages
                stack.extend(value)


def check_no_external_data(model: onnx.ModelProto) -> None:
    """Refuse any TensorProto anywhere that names external data. The message never depends on
    the location it names (whether that file exists is never looked at)."""
    for count, msg in enumerate(_messages(model)):
        if count > MAX_MESSAGES:
            raise InvalidModel("the model has too many protobuf messages to check")
        if isinstance(msg, onnx.TensorProto) and (
            msg.data_location == onnx.TensorProto.EXTERNAL or len(msg.external_data) > 0
        ):
            raise InvalidModel(
                f"the model references external data (tensor {msg.name[:80]!r}); blindinfer "
                "only accepts self-contained models: re-save it with "
                "onnx.save_model(model, path, save_as_external_data=False)"
            )


class _Inliner:
    """Counts nodes once every call to a model-local function is expanded (memoised; a
    function that calls itself, directly or not, is refused)."""

    def __init__(self, model: onnx.ModelProto, limit: int) -> None:
        self.functions = {
            (f.domain, f.name, getattr(f, "overload", "")): f for f in model.functions
        }
        self.limit = limit
        self.sizes: dict[tuple[str, str, str], int] = {}
        self.active: set[tuple[str, str, str]] = set()

    def _key(self, node: onnx.NodeProto) -> tuple[str, str, str] | None:
        key = (node.domain, node.op_type, getattr(node, "overload", ""))
        return key if key in self.functions else None

    def count(self, nodes: Iterator[onnx.NodeProto]) -> int:
        total = 0
        for node in nodes:
            key = self._key(node)
            total += 1 if key is None else self.function_size(key)
            for attr in node.attribute:
                subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
                for sub in subgraphs:
                    total += self.count(iter(sub.node))
            if total > self.limit:
                raise InvalidModel(
                    f"the model expands to more than {self.limit} nodes once its local functions "
                    f"are inlined (limit {self.limit})"
                )
        return total

    def function_size(self, key: tuple[str, str, str]) -> int:
        if key in self.sizes:
            return self.sizes[key]
        if key in self.active:
            raise InvalidModel(f"the model's local function {key[1][:80]!r} calls itself")
        self.active.add(key)
        size = self.count(iter(self.functions[key].node))
        self.active.discard(key)
        self.sizes[key] = size
        return size


def check_inlined_size(model: onnx.ModelProto, limit: int = MAX_INLINED_NODES) -> int:
    """The node count after inlining local functions; InvalidModel past ``limit``."""
    return _Inliner(model, limit).count(iter(model.graph.node))


def parse_model(data: bytes, *, max_inlined_nodes: int = MAX_INLINED_NODES) -> Split:
    """Parse and structurally check ONNX bytes; refuse any reference to external data and any
    model that expands past ``max_inlined_nodes``.

    Memory and time matter for big models: the structural checks run on the model's skeleton
    (``skeleton.py``: the protobuf without tensor payloads), so no weight is copied into Python,
    and the checker on its checkable form (weights handed to onnxruntime shown as empty tensors).
    Returns the split model: onnxruntime must load ``Split.loadable`` (what was checked), never
    the uploaded bytes."""
    if not data:
        raise InvalidModel("the model is empty: upload the raw bytes of an .onnx file")
    parts = split(data)
    try:
        model = onnx.load_model_from_string(parts.skeleton)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModel(
            f"the upload is not a valid ONNX model (protobuf parse failed: {exc})"
        ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModel("the upload is not a valid ONNX model (it has no graph nodes)")
    check_no_external_data(model)
    check_inlined_size(model, max_inlined_nodes)
    del model
    try:
        onnx.checker.check_model(parts.checkable)
    except onnx.checker.ValidationError as exc:
        raise InvalidModel(f"the ONNX model failed validation: {first_line(exc)}") from exc
    return parts


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
