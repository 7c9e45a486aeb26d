"""Turn what users pass to ``run_model`` into named numpy arrays, checked against the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from blindinfer._wire.tensors import BYTES, DATATYPES, bytes_array, numpy_dtype
from blindinfer.errors import InvalidInput


def _dtype(value: Any) -> np.dtype:
    if isinstance(value, str) and value.upper() in DATATYPES:
        return numpy_dtype(value)
    try:
        dt: np.dtype = np.dtype(value)
    except TypeError:
        raise InvalidInput(f"unknown dtype {value!r}") from None
    return dt


def _is_bytes_like(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview | str)


def _bytes_tensor(value: Any) -> np.ndarray:
    """A BYTES tensor from bytes/str, a list of them, or an object array (files, text)."""
    if isinstance(value, np.ndarray):
        return value
    items = [value] if _is_bytes_like(value) else list(value)
    if not all(_is_bytes_like(v) for v in items):
        raise InvalidInput("a BYTES input takes bytes or str, or a list of them")
    return bytes_array([v if isinstance(v, str) else bytes(v) for v in items])


def _as_array(value: Any, spec: Mapping[str, Any] | None, dtype: Any, shape: Any) -> np.ndarray:
    wants_bytes = (dtype is not None and str(dtype).upper() == BYTES) or (
        dtype is None and spec is not None and str(spec.get("datatype", "")).upper() == BYTES
    )
    if wants_bytes or _is_bytes_like(value):
        array = _bytes_tensor(value)
        if shape is not None:
            array = array.reshape(tuple(shape))
        return array
    if hasattr(value, "detach") and hasattr(
        value, "cpu"
    ):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        array = value if dtype is None else value.astype(_dtype(dtype), copy=False)
    else:
        # Plain Python data: the declared dtype, else the model's own input type.
        want = (
            _dtype(dtype)
            if dtype is not None
            else (numpy_dtype(spec["datatype"]) if spec is not None else None)
        )
        try:
            array = np.asarray(value, dtype=want)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"cannot make a tensor from the given data: {exc}") from None
    if shape is not None:
        try:
            array = array.reshape(tuple(shape))
        except ValueError as exc:
            raise InvalidInput(f"cannot reshape input to {list(shape)}: {exc}") from None
    return array


def _per_input(option: Any, index: int, name: str, positional: bool) -> Any:
    """Pick one input's dtype/shape from a per-input dict or list, or the shared value."""
    if isinstance(option, Mapping):
        return option.get(name)
    if positional and isinstance(option, list | tuple):
        return option[index] if index < len(option) else None
    return option


def _is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "cpu"))


def _positional(inputs: Any, n_inputs: int) -> bool:
    """Whether a list means one value per model input (rather than one input's data)."""
    if not isinstance(inputs, list | tuple) or not inputs:
        return False
    if all(_is_tensor(v) for v in inputs):
        return True
    return (
        n_inputs > 1
        and len(inputs) == n_inputs
        and all(isinstance(v, list | tuple) or _is_tensor(v) for v in inputs)
    )


def to_named_arrays(
    inputs: Any,
    input_specs: Sequence[Mapping[str, Any]],
    dtype: Any = None,
    shape: Any = None,
) -> dict[str, np.ndarray]:
    """Accepts: one array/tensor; a list of arrays/tensors (model input order); a dict
    name -> array/list; a flat or nested list (one input) with optional ``dtype``/``shape``;
    a list of flat lists (one per input) with per-input ``dtype``/``shape`` lists."""
    if dtype is None and shape is None:
        # The common call: numpy arrays as they are (what _as_array returns for them too).
        if type(inputs) is np.ndarray and len(input_specs) == 1:
            return {str(input_specs[0]["name"]): inputs}
        if type(inputs) is dict and all(type(v) is np.ndarray for v in inputs.values()):
            return {str(k): v for k, v in inputs.items()}
    names = [str(s["name"]) for s in input_specs]
    specs = {str(s["name"]): s for s in input_specs}
    if isinstance(inputs, Mapping):
        return {
            str(k): _as_array(
                v,
                specs.get(str(k)),
                _per_input(dtype, 0, str(k), False),
                _per_input(shape, 0, str(k), False),
            )
            for k, v in inputs.items()
        }
    if _positional(inputs, len(names)):
        if len(inputs) != len(names):
            raise InvalidInput(
                f"{len(inputs)} inputs given but the model takes {len(names)}: {names}"
            )
        multi_shape = (
            isinstance(shape, list | tuple) and bool(shape) and not isinstance(shape[0], int)
        )
        return {
            n: _as_array(
                v, specs[n], _per_input(dtype, i, n, True), _per_input(shape, i, n, multi_shape)
            )
            for i, (n, v) in enumerate(zip(names, inputs, strict=True))
        }
    if len(names) != 1:
        raise InvalidInput(
            f"the model takes {len(names)} inputs {names}: pass a dict name -> tensor, or a list "
            "in that order"
        )
    return {names[0]: _as_array(inputs, specs[names[0]], dtype, shape)}
