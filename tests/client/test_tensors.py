"""What run_model accepts, converted client-side against the model's signature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blindinfer._client.tensors import to_named_arrays
from blindinfer.errors import InvalidInput

ONE = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
TWO = [
    {"name": "ids", "datatype": "INT64", "shape": [1, 3]},
    {"name": "mask", "datatype": "BOOL", "shape": [1, 3]},
]


def test_numpy_array_and_torch_tensor() -> None:
    arr = np.ones((2, 4), np.float32)
    assert to_named_arrays(arr, ONE)["x"] is arr
    t = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    np.testing.assert_array_equal(to_named_arrays(t, ONE)["x"], t.numpy())
    both = to_named_arrays([torch.tensor([[1, 2, 3]]), torch.tensor([[True, False, True]])], TWO)
    assert both["ids"].dtype == np.int64 and both["mask"].dtype == np.bool_


def test_python_lists_take_the_model_dtype_unless_given() -> None:
    assert to_named_arrays([[1, 2, 3, 4]], ONE)["x"].dtype == np.float32
    flat = to_named_arrays([1, 2, 3, 4, 5, 6, 7, 8], ONE, dtype="FP64", shape=[2, 4])["x"]
    assert flat.dtype == np.float64 and flat.shape == (2, 4)
    per_input = to_named_arrays(
        [[1, 2, 3], [1, 0, 1]], TWO, dtype=["INT64", "BOOL"], shape=[[1, 3], [1, 3]]
    )
    assert per_input["mask"].tolist() == [[True, False, True]]


def test_dict_in_any_order() -> None:
    out = to_named_arrays({"mask": [[True, True, False]], "ids": [[7, 8, 9]]}, TWO)
    assert out["ids"].dtype == np.int64 and out["mask"].dtype == np.bool_


def test_errors_name_the_problem() -> None:
    with pytest.raises(InvalidInput, match="takes 2 inputs"):
        to_named_arrays(np.ones((1, 3)), TWO)
    with pytest.raises(InvalidInput, match="3 inputs given"):
        to_named_arrays([np.ones(1)] * 3, TWO)
    with pytest.raises(InvalidInput, match="cannot reshape"):
        to_named_arrays([1, 2, 3], ONE, shape=[2, 4])
    with pytest.raises(InvalidInput, match="unknown dtype"):
        to_named_arrays([1.0], ONE, dtype="FP128")
