"""Replicas: two real server processes on one store (same directory, same sealing key)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer._client.connection import Connection, connect
from tests._server import ServerProcess, eventually, start_server

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp.onnx"
FEEDS = {"x": np.ones((2, 8), np.float32), "scale": np.array([2.0], np.float32)}


@contextmanager
def owner(srv: ServerProcess) -> Iterator[Connection]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conn = connect(srv.url, simulation_mode=True, token=srv.owner_token)
    with conn:
        yield conn


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    data = tmp_path / "data"
    a = start_server(data)
    try:
        b = start_server(data)  # the same data dir: the simulation sealing key is shared
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def test_upload_via_one_replica_runs_on_the_other(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    with owner(a) as ca, owner(b) as cb:
        info = ca.upload_model(MLP, name="shared")
        want = ca.run_model("shared", FEEDS)

        def served_by_b() -> bool:
            return any(i.model_id == info.model_id for i in cb.list_models())

        assert eventually(served_by_b) < 5.0
        np.testing.assert_array_equal(cb.run_model("shared", FEEDS)["y"], want["y"])
        cb.delete_model("shared")

        def gone_from_a() -> bool:
            return all(i.name != "shared" for i in ca.list_models())

        eventually(gone_from_a)
        with pytest.raises(blindinfer.ModelNotFound):
            ca.run_model("shared", FEEDS)
        # a replace through B: A serves the new version under the name
        ca.upload_model(MLP, name="r")
        eventually(lambda: any(i.name == "r" for i in cb.list_models()))
        new = cb.upload_model(MLP, name="r", replace=True)
        eventually(lambda: ca.model_metadata("r")["model_id"] == new.model_id)


def test_two_replicas_cannot_both_win_a_name(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    results: list[object] = []

    def upload(srv: ServerProcess) -> None:
        with owner(srv) as c:
            try:
                results.append(c.upload_model(MLP, name="race"))
            except blindinfer.ServerError as exc:
                results.append(exc)

    threads = [threading.Thread(target=upload, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, blindinfer.ServerError)]
    assert len(won) == 1 and len(lost) == 1 and lost[0].status == 409
    with owner(a) as ca:
        eventually(lambda: [i.name for i in ca.list_models()].count("race") == 1)
    stored = list((a.data_dir / "models").glob("*.sealed"))
    assert len(stored) == 1  # the loser left no file behind
