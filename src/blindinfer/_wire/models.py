"""Model metadata on the wire: one definition, written by the server, read by the SDK.

The native API's model documents (`GET /blindinfer/v1/models`, upload and delete replies, OIP
model metadata) all describe a model with these fields; a model's bytes never appear here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blindinfer.errors import ServerError


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``shape`` uses -1 for dynamic dimensions (OIP v2 convention);
    ``dim_names`` keeps symbolic names ("batch") where the model gives them (server side only)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TensorSpec:
        return cls(str(doc["name"]), str(doc["datatype"]), tuple(int(d) for d in doc["shape"]))


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about a model (never its bytes)."""

    model_id: str
    name: str
    sha256: str
    size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    created: str = ""
    restricted: bool = False
    pipeline: str | None = None  # the built-in pipeline kind of a bundle; None for ONNX

    def to_json(self) -> dict[str, Any]:
        doc = self._fields()
        if self.pipeline is not None:
            doc["pipeline"] = self.pipeline
        return doc

    def _fields(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "created": self.created,
            "restricted": self.restricted,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelInfo:
        """Parse a server's model document; a malformed one is the server's error."""
        try:
            return cls(
                model_id=str(doc["model_id"]),
                name=str(doc["name"]),
                sha256=str(doc["sha256"]),
                size=int(doc["size"]),
                inputs=tuple(TensorSpec.from_json(t) for t in doc["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in doc["outputs"]),
                created=str(doc.get("created", "")),
                restricted=bool(doc.get("restricted", False)),
                pipeline=str(doc["pipeline"]) if doc.get("pipeline") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError(f"malformed model document from the server: {exc!r}") from None
