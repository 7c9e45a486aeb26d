"""Where a run happens: on the event loop when the request is all the server is doing, on a
worker otherwise, and never held on the loop past a bound (``infer.py``, INLINE_ALONE_*)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blindinfer
from blindinfer._tee.simulation import create as create_simulation
from tests._inproc import InProcessServer, inprocess_server
from tests.server.test_limits import tls_socket

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
COUNT = 2000  # the loop model's iterations: a few milliseconds, far from a "tiny" model


Served = tuple[InProcessServer, blindinfer.Connection, list[str]]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """An in-process server serving the loop model, one client connected, and the thread of
    every run its registry makes."""
    with inprocess_server(tmp_path / "data", create_simulation("simulation", tmp_path)) as srv:
        threads: list[str] = []
        registry = srv.state.registry
        run = registry.run

        def recording(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return run(*args, **kwargs)

        registry.run = recording  # type: ignore[method-assign]
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as conn:
            conn.upload_model(FIXTURES / "loop_bomb.onnx", name="loop")
            yield srv, conn, threads


def _call(conn: blindinfer.Connection, count: int) -> None:
    out = conn.run_model("loop", {"count": np.array(count, np.int64)})
    assert out["total"][0] == count


def test_a_lone_request_runs_on_the_loop_and_a_crowd_on_the_workers(served: Served) -> None:
    srv, conn, threads = served
    _call(conn, COUNT)  # nothing known about the model yet: a worker
    assert threads[-1].startswith("infer")
    for _ in range(3):
        _call(conn, COUNT)
    assert not any(t.startswith("infer") for t in threads[-3:]), threads
    with tls_socket(int(srv.url.rsplit(":", 1)[1])):  # a second client, idle
        time.sleep(0.2)
        _call(conn, COUNT)
        assert threads[-1].startswith("infer")
    time.sleep(0.2)  # the server sees it go
    _call(conn, COUNT)
    assert not threads[-1].startswith("infer")


def test_a_run_far_past_its_usual_time_leaves_the_loop_for_good(served: Served) -> None:
    _, conn, threads = served
    for _ in range(4):
        _call(conn, COUNT)
    assert not threads[-1].startswith("infer")
    start = time.perf_counter()
    # Far past the cap and the watchdog's tick (0.25 s): stopped on the loop, redone on a worker
    _call(conn, 1_000_000)
    assert not threads[-2].startswith("infer") and threads[-1].startswith("infer")
    assert time.perf_counter() - start < 30
    for _ in range(3):
        _call(conn, COUNT)
    assert all(t.startswith("infer") for t in threads[-3:]), threads
