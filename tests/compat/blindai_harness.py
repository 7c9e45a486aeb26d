"""Drive the unmodified ``blindai==0.6.3`` client; runs INSIDE its own virtual environment.

Usage: ``python blindai_harness.py < steps.json`` (or the JSON as argv[1]). Prints one JSON
document ``{"results": [...]}``, one entry per step, on stdout.

The client's top-level import (``blindai/__init__.py`` -> ``api`` -> ``audio`` and ``utils``,
``_dcap_attestation``) pulls torch, whisper, transformers, ffmpeg-python and
sgx_dcap_quote_verify, none of which the core path (connect / upload_model / run_model /
delete_model) calls. They are registered below as empty stand-in modules BEFORE blindai is
imported; any use of one raises. The client's own code is never patched.

Steps (all keys but "op" optional where they have a default):
  {"op": "connect", "addr": "127.0.0.1", "ports": [u, a, m], "simulation_mode": true,
   "hazmat_http": true}
  {"op": "upload", "path": "model.onnx", "model_name": null, "save_as": "m"}
  {"op": "run", "model": "m", "by": "id" | "hash", "model_id": "...", "model_hash": "...",
   "style": "numpy" | "numpy_dict" | "flat", "tensors": [{"name": null, "dtype": "float32",
   "shape": [1, 4], "data": [...]}]}
  {"op": "delete", "model": "m" or "model_id": "..."}
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

HEAVY_MODULES = (
    "torch",
    "torchaudio",
    "whisper",
    "ffmpeg",
    "transformers",
    "sgx_dcap_quote_verify",
)


class _Unavailable:
    """Placeholder for a name imported from a stand-in module; unusable on purpose."""

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{self._qualname} is a stand-in: not installed in this harness")

    def __getattr__(self, name: str) -> _Unavailable:
        return _Unavailable(f"{self._qualname}.{name}")


def _stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "empty stand-in registered by blindai_harness.py")

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{name}.{attr}")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


for _name in HEAVY_MODULES:
    sys.modules.setdefault(_name, _stand_in(_name))

import numpy as np  # noqa: E402
import requests  # noqa: E402
from blindai import core  # noqa: E402

STATE: dict[str, Any] = {"conn": None, "models": {}}


def _connect(step: dict[str, Any]) -> dict[str, Any]:
    u, a, m = step.get("ports", [9923, 9924, 9925])
    conn = core.connect(
        step.get("addr", "127.0.0.1"),
        unattested_server_port=u,
        attested_server_port=a,
        model_management_port=m,
        simulation_mode=step.get("simulation_mode", True),
        hazmat_http_on_unattested_port=step.get("hazmat_http", True),
    )
    STATE["conn"] = conn
    return {"connected": True}


def _upload(step: dict[str, Any]) -> dict[str, Any]:
    resp = STATE["conn"].upload_model(step["path"], model_name=step.get("model_name"))
    assert isinstance(resp.hash, bytes), type(resp.hash)
    result = {"model_id": resp.model_id, "hash": resp.hash.hex()}
    if step.get("save_as"):
        STATE["models"][step["save_as"]] = result
    return result


def _tensor_args(step: dict[str, Any]) -> dict[str, Any]:
    specs = step["tensors"]
    style = step.get("style", "numpy")
    arrays = [np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"]) for t in specs]
    if style == "numpy":
        tensors: Any = arrays[0] if len(arrays) == 1 else arrays
        return {"input_tensors": tensors}
    if style == "numpy_dict":
        return {"input_tensors": {t["name"]: arr for t, arr in zip(specs, arrays, strict=True)}}
    if style == "flat":
        return {
            "input_tensors": [arr.flatten().tolist() for arr in arrays],
            "dtypes": [core.ModelDatumType[t["datum"]] for t in specs],
            "shapes": [list(t["shape"]) for t in specs],
        }
    raise ValueError(f"unknown style {style!r}")


def _run(step: dict[str, Any]) -> dict[str, Any]:
    known = STATE["models"].get(step.get("model", ""), {})
    ref: dict[str, str] = {}
    if step.get("by", "id") == "id":
        ref["model_id"] = step.get("model_id", known.get("model_id", ""))
    else:
        ref["model_hash"] = step.get("model_hash", known.get("hash", ""))
    resp = STATE["conn"].run_model(**ref, **_tensor_args(step))
    outputs = []
    for tensor in resp.output:
        arr = tensor.as_numpy()
        outputs.append(
            {
                "name": tensor.info.node_name,
                "datum": tensor.info.datum_type.name,
                "dtype": str(arr.dtype),
                "shape": list(arr.shape),
                "data": arr.flatten().tolist(),
            }
        )
    return {"outputs": outputs}


def _delete(step: dict[str, Any]) -> dict[str, Any]:
    model_id = step.get("model_id") or STATE["models"][step["model"]]["model_id"]
    STATE["conn"].delete_model(model_id)
    return {"deleted": model_id}


OPS = {"connect": _connect, "upload": _upload, "run": _run, "delete": _delete}


def _error(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ok": False,
        "error": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc)[:2000],
    }
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        out["status"] = exc.response.status_code
        try:
            import cbor2

            out["body"] = cbor2.loads(exc.response.content)
        except Exception:
            out["body"] = exc.response.content[:500].decode("latin-1")
    return out


def main() -> None:
    raw = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    results = []
    for step in json.loads(raw):
        try:
            results.append({"ok": True, **OPS[step["op"]](step)})
        except Exception as exc:  # reported to the pytest side, which decides
            results.append(_error(exc))
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
