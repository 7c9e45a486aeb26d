"""Each connection has its own cache of JSON headers: a hit is faster than a miss, so a cache
shared by every client would tell one client whether another had just sent a header of exactly
these names and shapes (a timing oracle on another client's input shapes).

The real server runs in this process, so the test can see which cache each parse used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blindinfer
from blindinfer._tee.simulation import create as simulation_backend
from blindinfer._wire import oip
from tests._inproc import InProcessServer, inprocess_server

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with inprocess_server(tmp_path, simulation_backend("simulation", tmp_path)) as srv:
        yield srv


def test_connections_never_share_a_header_cache(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int]] = []  # (cache id, entries before, entries after)
    real = oip.parse_infer_request

    def spy(body: Any, header_length: Any, cache: oip.HeaderCache | None = None) -> Any:
        assert cache is not None  # the native listener always gives the connection's own
        before = len(cache)
        out = real(body, header_length, cache)
        seen.append((id(cache), before, len(cache)))
        return out

    monkeypatch.setattr(oip, "parse_infer_request", spy)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with (
        blindinfer.connect(server.url, simulation_mode=True) as a,
        blindinfer.connect(server.url, simulation_mode=True) as b,
    ):
        first = a.run_model("demo", x)["probabilities"]
        again = a.run_model("demo", x)["probabilities"]
        other = b.run_model("demo", x)["probabilities"]  # byte-identical header, new connection
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other)
    (a1, a_before, a_after), (a2, a2_before, a2_after), (b1, b_before, b_after) = seen
    # a's header was kept on the first request (the reply's header too) and found on the second
    assert a1 == a2 and (a_before, a_after) == (0, 1) and a2_before == a2_after == 2
    assert b1 != a1 and (b_before, b_after) == (0, 1)  # b's first request was a miss
