"""Replicas behind HAProxy that share one store: each its own TLS key, evidence signer and data
dir; one sealing key, released by a key broker (the KBS double) only to replicas whose evidence
passes its policy. A model uploaded through the balancer is served by every replica; a delete
reaches them all."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer._client.connection import attest
from blindinfer._tee import create_backend
from blindinfer._tee.simulation import SimulationBackend
from blindinfer.attestation import Policy
from tests._server import OWNER_TOKEN, start_server
from tests.keys.kbs_double import KbsDouble
from tests.scale.test_haproxy import HAPROXY, MODEL, Replica, _policy, _stats, haproxy

pytestmark = [
    pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning"),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/system-deps.sh)"),
]
KEY = bytes(range(50, 82))
RESOURCE = "default/blindinfer/sealing-key"
FEEDS = {"x": np.ones((1, 8), np.float32), "scale": np.array([1.0], np.float32)}


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[list[Replica], KbsDouble]]:
    probe = create_backend("simulation", tmp_path / "probe")
    assert isinstance(probe, SimulationBackend)
    # The broker pins the code (measurement), not the per-replica signer keys.
    broker_policy = Policy.from_mapping({"simulation": {"measurement": probe.measurement.hex()}})
    store = tmp_path / "store"
    replicas: list[Replica] = []
    with KbsDouble(broker_policy, {RESOURCE: KEY}) as kbs:
        try:
            for i in range(3):
                server = start_server(
                    tmp_path / f"r{i}" / "data",
                    "--key-broker", kbs.url, "--store-dir", str(store),
                    "--store-poll-seconds", "0.3",
                )  # fmt: skip
                claims, cert = attest(server.url, simulation_mode=True)
                replicas.append(
                    Replica(
                        server,
                        str(claims.fields["signer"]),
                        claims.measurements["measurement"],
                        hashlib.sha256(cert).hexdigest(),
                    )
                )
            yield replicas, kbs
        finally:
            for r in replicas:
                r.server.stop()


def _served_everywhere(replicas: list[Replica], present: bool, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    pending = list(replicas)
    while pending and time.monotonic() < deadline:
        for r in list(pending):
            with blindinfer.connect(r.server.url, simulation_mode=True) as c:
                names = {m.name for m in c.list_models()}
            if ("mlp" in names) == present:
                pending.remove(r)
        time.sleep(0.2)
    assert not pending, f"{len(pending)} replica(s) did not follow the shared store"


def test_upload_through_the_balancer_is_served_by_every_replica(
    shared: tuple[list[Replica], KbsDouble], tmp_path: Path
) -> None:
    replicas, kbs = shared
    assert len(kbs.released) == 3 and len({r.signer for r in replicas}) == 3
    with haproxy(tmp_path, replicas) as url:
        policy = _policy(replicas)
        with blindinfer.connect(url, policy, simulation_mode=True, token=OWNER_TOKEN) as conn:
            conn.upload_model(MODEL, name="mlp")
            _served_everywhere(replicas, present=True)
            # Concurrent calls open several pooled connections, which the balancer spreads.
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda _: conn.run_model("mlp", FEEDS), range(120)))
            assert all(np.array_equal(o["y"], outs[0]["y"]) for o in outs)
            assert len(conn.verified_certificates) == 3
        # Every replica served some of them, from the one store.
        assert all(_stats(r)["success"] > 0 for r in replicas)
        with blindinfer.connect(url, policy, simulation_mode=True, token=OWNER_TOKEN) as conn:
            conn.delete_model("mlp")
        _served_everywhere(replicas, present=False)
    assert len(list((tmp_path / "store" / "models").glob("*.sealed"))) == 0
