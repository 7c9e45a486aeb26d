"""Scale-out behind a real L4 balancer: replica servers (each its own data dir, so its own TLS key
and simulation signer) behind HAProxy in TCP mode (roundrobin, TCP passthrough) on loopback.

Shown here: every replica a client reaches is attested on its own connection (three distinct
verified certificates), outputs equal onnxruntime in process, a rogue replica (a signer the
policy does not list) receives no request beyond attestation and the SDK routes around it, and
a replica killed under a 32-client load loses no request.

Not shown (needs the shared model store another change builds): a model uploaded through one
replica running on the others; here the same model is uploaded to each replica directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import blindinfer
from blindinfer._client.connection import Connection, attest
from blindinfer.errors import BlindInferError
from tests._server import OWNER_TOKEN, ServerProcess, free_port, start_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIXTURES / "mlp.onnx"
# Debian installs it in /usr/sbin, which a non-root PATH may lack.
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")

# About 15 s on 2 cores (under the 30 s past which a test is marked slow).
pytestmark = [
    pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning"),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/system-deps.sh)"),
]


@dataclass
class Replica:
    server: ServerProcess
    signer: str
    measurement: str
    cert_sha256: str


def _replica(root: Path, name: str) -> Replica:
    server = start_server(root / name / "data")
    claims, cert = attest(server.url, simulation_mode=True)
    with blindinfer.connect(server.url, simulation_mode=True, token=OWNER_TOKEN) as c:
        c.upload_model(MODEL, name="mlp")
    return Replica(
        server,
        str(claims.fields["signer"]),
        claims.measurements["measurement"],
        hashlib.sha256(cert).hexdigest(),
    )


def _policy(replicas: list[Replica]) -> dict[str, Any]:
    return {
        "simulation": {
            "measurement": sorted({r.measurement for r in replicas}),
            "signer": [r.signer for r in replicas],
        }
    }


@contextmanager
def haproxy(tmp: Path, backends: list[Replica]) -> Iterator[str]:
    assert HAPROXY is not None
    port = free_port()
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{r.server.port} check inter 200ms fall 1 rise 2"
        for i, r in enumerate(backends)
    )
    cfg = tmp / f"haproxy-{port}.cfg"
    cfg.write_text(
        f"""global
    maxconn 2000

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch

frontend blindinfer
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
"""
    )
    log = (tmp / f"haproxy-{port}.log").open("wb")
    proc = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp / f"haproxy-{port}.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not start listening"
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _stats(replica: Replica) -> dict[str, int]:
    """Inference counters of the replica's mlp model, asked of the replica directly."""

    with blindinfer.connect(replica.server.url, simulation_mode=True) as c:
        doc = json.loads(c._request("GET", "/v2/models/mlp/stats").body)
    (stats,) = doc["model_stats"]
    return {
        "success": int(stats["inference_stats"]["success"]["count"]),
        "fail": int(stats["inference_stats"]["fail"]["count"]),
    }


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    root = tmp_path_factory.mktemp("replicas")
    started: list[Replica] = []
    try:
        for i in range(3):
            started.append(_replica(root, f"r{i}"))
        assert len({r.cert_sha256 for r in started}) == 3  # each its own TLS key
        assert len({r.signer for r in started}) == 3  # ...and its own evidence signer
        yield started
    finally:
        for r in started:
            r.server.stop()


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """A replica running the same code with a signer the client's policy does not list."""
    r = _replica(tmp_path_factory.mktemp("rogue"), "rogue")
    try:
        yield r
    finally:
        r.server.stop()


def _inputs(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` distinct requests for the mlp fixture (inputs x [batch, 8] and scale [1])."""
    rng = np.random.default_rng(seed)
    return [
        {
            "x": rng.standard_normal((2, 8)).astype(np.float32),
            "scale": rng.uniform(0.5, 2, (1,)).astype(np.float32),
        }
        for _ in range(n)
    ]


def _same(got: dict[str, np.ndarray], want: list[np.ndarray]) -> bool:
    return bool(
        np.allclose(got["y"], want[0], rtol=1e-6, atol=1e-7)
        and np.array_equal(got["label"], want[1])
    )


def _run_spread(
    conn: Connection,
    session: ort.InferenceSession,
    total: int,
    threads: int,
    seed: int,
) -> int:
    """``total`` requests from ``threads`` threads sharing ``conn`` (so its pool holds several
    connections, each routed by the balancer); every output checked against onnxruntime."""
    xs = _inputs(total, seed)
    want = [session.run(["y", "label"], x) for x in xs]
    errors: list[BaseException] = []
    done = [0] * threads

    def work(t: int) -> None:
        for i in range(t, total, threads):
            try:
                assert _same(conn.run_model("mlp", xs[i]), want[i]), i
                done[t] += 1
            except BaseException as exc:  # collected and reported below
                errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(120)
    assert not errors, errors[:3]
    return sum(done)


def test_requests_spread_over_attested_replicas(
    replicas: list[Replica], session: ort.InferenceSession, tmp_path: Path
) -> None:
    before = [_stats(r)["success"] for r in replicas]
    with (
        haproxy(tmp_path, replicas) as url,
        blindinfer.connect(url, _policy(replicas), simulation_mode=True) as conn,
    ):
        assert _run_spread(conn, session, 1000, 8, seed=1) == 1000
        # Each replica reached was attested on its own connection: three distinct certificates.
        assert conn.verified_certificates == {r.cert_sha256 for r in replicas}
        assert conn._transport.refused == 0
    served = [_stats(r)["success"] - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == 1000 and all(n > 0 for n in served), served


def test_single_replica_policy_refuses_the_others(
    replicas: list[Replica], session: ort.InferenceSession, tmp_path: Path
) -> None:
    """Negative control: a policy listing one replica's signer only; with retries off, the
    first connection the balancer sends elsewhere fails with PolicyError, no request sent."""
    before = [_stats(r)["success"] for r in replicas[1:]]
    with haproxy(tmp_path, replicas) as url:
        refusals = 0
        for _ in range(6):
            try:
                blindinfer.connect(url, _policy(replicas[:1]), simulation_mode=True,
                                   attest_attempts=1).close()  # fmt: skip
            except blindinfer.PolicyError as exc:
                assert "signer" in str(exc)
                refusals += 1
        assert refusals >= 3  # roundrobin: two of every three connections
    assert [_stats(r)["success"] for r in replicas[1:]] == before


def test_rogue_replica_gets_no_input(
    replicas: list[Replica], rogue: Replica, session: ort.InferenceSession, tmp_path: Path
) -> None:
    rogue_before = _stats(rogue)
    with haproxy(tmp_path, [*replicas, rogue]) as url:
        # Many clients, each with new connections: the balancer sends some of them to the rogue.
        refused = 0
        for k in range(4):
            with blindinfer.connect(url, _policy(replicas), simulation_mode=True) as conn:
                assert _run_spread(conn, session, 100, 4, seed=10 + k) == 100
                assert rogue.cert_sha256 not in conn.verified_certificates
                assert conn.verified_certificates <= {r.cert_sha256 for r in replicas}
                refused += conn._transport.refused
        # ...and connect() itself retries past it (its own refusals are not counted above).
        assert refused >= 1
        # Without retries the rogue's refusal is raised: a PolicyError naming the signer.
        errors = []
        for _ in range(8):
            try:
                blindinfer.connect(url, _policy(replicas), simulation_mode=True,
                                   attest_attempts=1).close()  # fmt: skip
            except blindinfer.PolicyError as exc:
                errors.append(exc)
        assert errors and all("signer" in str(e) for e in errors)
    # The rogue holds the same model: any request that reached it would have run there.
    assert _stats(rogue) == rogue_before == {"success": 0, "fail": 0}


def test_killed_replica_loses_no_request(
    replicas: list[Replica], session: ort.InferenceSession, tmp_path: Path
) -> None:
    victim = _replica(tmp_path, "victim")
    pool = [*replicas[:2], victim]
    clients, per_client = 32, 40
    total = clients * per_client
    xs = _inputs(total, 99)
    want = [session.run(["y", "label"], x) for x in xs]
    ok = [0] * clients
    raised: list[BaseException] = []
    wrong: list[int] = []
    seen: set[str] = set()
    lock = threading.Lock()
    progress = threading.Semaphore(0)
    try:
        with haproxy(tmp_path, pool) as url:

            def client(c: int) -> None:
                conn = blindinfer.connect(url, _policy(pool), simulation_mode=True)
                with conn:
                    for i in range(c, total, clients):
                        try:
                            got = conn.run_model("mlp", xs[i])
                        except BlindInferError as exc:
                            with lock:
                                raised.append(exc)
                        else:
                            if not _same(got, want[i]):
                                wrong.append(i)
                            ok[c] += 1
                        progress.release()
                    with lock:
                        seen.update(conn.verified_certificates)

            threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
            for t in threads:
                t.start()
            for _ in range(total // 3):  # a third of the load done: kill a replica mid-flight
                assert progress.acquire(timeout=60)
            os.kill(victim.server.process.pid, signal.SIGKILL)
            victim.server.process.wait(10)
            for t in threads:
                t.join(180)
            assert not any(t.is_alive() for t in threads)
    finally:
        victim.server.stop()
    answered = sum(ok) + len(raised)
    assert answered == total, f"{total - answered} requests lost"  # each succeeded or raised
    assert not wrong
    assert victim.cert_sha256 in seen  # the victim did serve part of the load before it died
    # The SDK retried the in-flight requests the kill cut off (idempotent runs) and HAProxy
    # redispatched new connections: nothing had to be raised.
    assert not raised, raised[:3]
