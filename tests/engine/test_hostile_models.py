"""The hostile-model corpus (tests/fixtures/hostile, one file per route): every file refused,
with a message that never depends on the file the model names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from blindinfer._engine.validate import check_inlined_size, parse_model
from blindinfer.errors import InvalidModel

HOSTILE = Path(__file__).resolve().parent.parent / "fixtures" / "hostile"
FIXTURES = HOSTILE.parent
FILES = sorted(HOSTILE.glob("*.onnx"))
SECRET = b"ROOTSECRET-0123456789"


def test_corpus_is_there() -> None:
    assert len(FILES) >= 14


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_refused_and_message_does_not_depend_on_the_file(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidModel) as absent:
        parse_model(data)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    with pytest.raises(InvalidModel) as present:
        parse_model(data)
    assert absent.value.message == present.value.message
    assert absent.value.status == 422
    for word in ("secret.bin", "/etc", "..", "exist", "length"):
        assert word not in absent.value.message


def test_without_the_check_onnxruntime_reads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the check matters: loaded from bytes, onnxruntime resolves the function's external
    tensor against the working directory and returns the file's bytes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    data = (HOSTILE / "ext_function_constant.onnx").read_bytes()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        leaked = session.run(None, {})[0].tobytes()
    except Exception as exc:  # a later onnxruntime may refuse by itself; record which
        pytest.skip(f"this onnxruntime refuses it on its own: {str(exc)[:120]}")
    assert leaked == SECRET[:4]


@pytest.mark.parametrize("name", ["mlp.onnx", "all_dtypes.onnx"])
def test_real_models_still_pass(name: str) -> None:
    parse_model((FIXTURES / name).read_bytes())


def _chain(levels: int) -> onnx.ModelProto:
    """Like the bomb, but small: F(k) calls F(k-1) twice, 2^levels nodes inlined."""
    opset = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    fns = [
        helper.make_function(
            "local", "F0", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])], opset
        )
    ]
    for k in range(1, levels + 1):
        calls = [
            helper.make_node(f"F{k - 1}", ["x"], ["t"], domain="local"),
            helper.make_node(f"F{k - 1}", ["t"], ["y"], domain="local"),
        ]
        fns.append(helper.make_function("local", f"F{k}", ["x"], ["y"], calls, opset))
    graph = helper.make_graph(
        [helper.make_node(f"F{levels}", ["x"], ["y"], domain="local")],
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=opset, functions=fns)
    model.ir_version = 8
    return model


def test_small_local_functions_pass_and_run() -> None:
    model = _chain(4)
    assert check_inlined_size(model) == 16
    data = model.SerializeToString()
    parse_model(data, max_inlined_nodes=16)
    with pytest.raises(InvalidModel, match="more than 15 nodes"):
        parse_model(data, max_inlined_nodes=15)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.array([1.5, -2.0], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)
