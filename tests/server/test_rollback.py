"""The operator rolls the store back: real server processes restarted on a doctored data dir."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer._client.connection import Connection, connect
from blindinfer._storage.manifest import MANIFEST_FILE
from tests._server import ServerProcess, start_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp.onnx"
ALL = FIXTURES / "all_dtypes.onnx"


@contextmanager
def owner(srv: ServerProcess) -> Iterator[Connection]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conn = connect(srv.url, simulation_mode=True, token=srv.owner_token)
    with conn:
        yield conn


@contextmanager
def server(data: Path, *args: str) -> Iterator[ServerProcess]:
    srv = start_server(data, *args)
    try:
        yield srv
    finally:
        srv.stop()


def sealed(data: Path, model_id: str) -> Path:
    return data / "models" / f"{model_id}.sealed"


def test_restored_files_resurrect_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with server(data) as srv, owner(srv) as c:
        gone = c.upload_model(MLP, name="gone")
        v1 = c.upload_model(MLP, name="m")
        gone_file = sealed(data, gone.model_id).read_bytes()
        v1_file = sealed(data, v1.model_id).read_bytes()
        c.delete_model("gone")
        v2 = c.upload_model(ALL, name="m", replace=True)
    assert not sealed(data, gone.model_id).exists()
    sealed(data, gone.model_id).write_bytes(gone_file)  # the operator's backup copies
    sealed(data, v1.model_id).write_bytes(v1_file)
    with server(data) as srv, owner(srv) as c:
        names = {i.name: i.model_id for i in c.list_models()}
        assert "gone" not in names and names["m"] == v2.model_id
        with pytest.raises(blindinfer.ModelNotFound):
            c.model_metadata(gone.model_id)
        with pytest.raises(blindinfer.ModelNotFound):
            c.model_metadata(v1.model_id)
        assert c.model_metadata("m")["model_id"] == v2.model_id
        log = srv.log()
    assert "not listed in the store manifest were ignored" in log
    assert gone.model_id in log and v1.model_id in log
    assert sealed(data, gone.model_id).exists()  # reported, not deleted


def test_an_old_manifest_is_refused_when_anchored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    anchor = tmp_path / "anchor"
    args = ("--store-anchor-file", str(anchor))
    with server(data, *args) as srv, owner(srv) as c:
        c.upload_model(MLP, name="keep")
        gone = c.upload_model(MLP, name="gone")
        old_manifest = (data / MANIFEST_FILE).read_bytes()
        old_model = sealed(data, gone.model_id).read_bytes()
        c.delete_model("gone")
    # the whole old state: manifest and model file
    (data / MANIFEST_FILE).write_bytes(old_manifest)
    sealed(data, gone.model_id).write_bytes(old_model)
    with pytest.raises(RuntimeError, match="rolled back"):
        start_server(data, *args, timeout=30)
    # the same restore without an anchor is not detectable: the documented limit
    with server(data) as srv, owner(srv) as c:
        assert {i.name for i in c.list_models()} >= {"keep", "gone"}


def test_a_deleted_manifest_is_refused_when_anchored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    anchor = tmp_path / "anchor"
    with server(data, "--store-anchor-file", str(anchor)) as srv, owner(srv) as c:
        c.upload_model(MLP, name="keep")
    (data / MANIFEST_FILE).unlink()
    with pytest.raises(RuntimeError, match="rolled back"):
        start_server(data, "--store-anchor-file", str(anchor), timeout=30)


def test_a_forged_manifest_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with server(data) as srv, owner(srv) as c:
        info = c.upload_model(MLP, name="keep")
        feeds = {"x": np.ones((1, 8), np.float32), "scale": np.array([1.0], np.float32)}
        c.run_model(info.model_id, feeds)
    blob = bytearray((data / MANIFEST_FILE).read_bytes())
    blob[20] ^= 1
    (data / MANIFEST_FILE).write_bytes(bytes(blob))
    with pytest.raises(RuntimeError, match="cannot be unsealed"):
        start_server(data, timeout=30)
