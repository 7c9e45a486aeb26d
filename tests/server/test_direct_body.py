"""Inference bodies written straight into place by the protocol: same answers, same limits."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer._server.protocol import DirectBody, _direct_candidate
from tests._server import ServerProcess, running_server
from tests.server.test_limits import read_until_closed, tls_socket

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ("--idle-timeout", "2", "--max-request-size", "8MiB")
    with running_server(tmp_path_factory.mktemp("direct"), *args) as srv:
        yield srv


def _binary_request(model: str, x: np.ndarray, declared: int | None = None) -> tuple[bytes, bytes]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
        }
    ).encode()
    body = header + x.tobytes()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nhost: x\r\n"
        f"content-type: application/octet-stream\r\n"
        f"inference-header-content-length: {len(header)}\r\n"
        f"content-length: {declared if declared is not None else len(body)}\r\n\r\n"
    ).encode()
    return head, body


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _read_reply(sock: ssl.SSLSocket, data: bytes) -> tuple[np.ndarray, bytes]:
    """The next 200 reply's output (after ``data`` already read) and the bytes past it."""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head_end = data.index(b"\r\n\r\n") + 4
    length = int(data.split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(data) < head_end + length:
        data += sock.recv(1 << 20)
    assert _status(data) == 200
    out = json.loads(data[head_end : head_end + length])["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"]), data[head_end + length :]


def test_big_batch_matches_the_sdk_and_in_process(server: ServerProcess) -> None:
    x = np.random.default_rng(3).standard_normal((20000, 4)).astype(np.float32)  # 320 KB
    with blindinfer.connect(server.url, simulation_mode=True) as conn:
        expected = conn.run_model("demo", x)["probabilities"]
    head, body = _binary_request("demo", x)
    with tls_socket(server.port) as sock:
        for _ in range(2):  # twice on one connection: keep-alive after a direct body
            sock.sendall(head)
            for i in range(0, len(body), 7000):  # many small pieces
                sock.sendall(body[i : i + 7000])
            got, _ = _read_reply(sock, b"")
            np.testing.assert_array_equal(got, expected)


def test_short_body_then_close_is_survived(server: ServerProcess) -> None:
    head, body = _binary_request("demo", np.zeros((1000, 4), np.float32))
    with tls_socket(server.port) as sock:
        sock.sendall(head + body[: len(body) // 2])
    with blindinfer.connect(server.url, simulation_mode=True) as conn:
        assert conn.run_model("demo", np.zeros((1, 4), np.float32))


def test_stalled_body_gets_408_but_a_steady_trickle_is_not_cut(server: ServerProcess) -> None:
    head, body = _binary_request("demo", np.zeros((1000, 4), np.float32))
    with tls_socket(server.port) as sock:
        sock.sendall(head + body[:100])
        assert _status(read_until_closed(sock)) == 408
    # 3 s in total (over the 2 s idle timeout), but never 2 s between pieces: served.
    with tls_socket(server.port) as sock:
        sock.sendall(head)
        pieces = [body[i : i + len(body) // 6 + 1] for i in range(0, len(body), len(body) // 6 + 1)]
        for piece in pieces:
            time.sleep(0.5)
            sock.sendall(piece)
        reply = sock.recv(65536)
        assert _status(reply) == 200


def test_unknown_model_answers_early_and_the_connection_survives(server: ServerProcess) -> None:
    head, body = _binary_request("no-such-model", np.zeros((50000, 4), np.float32))
    ok_head, ok_body = _binary_request("demo", np.zeros((1, 4), np.float32))
    with tls_socket(server.port) as sock:
        sock.sendall(head + body + ok_head + ok_body)
        replies = b""
        deadline = time.monotonic() + 10
        while replies.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            replies += sock.recv(65536)
    first, second = replies.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"404") and second.startswith(b"200")


def test_declared_over_the_limit_is_not_buffered(server: ServerProcess) -> None:
    head, _ = _binary_request("demo", np.zeros((1, 4), np.float32), declared=64 << 20)
    with tls_socket(server.port) as sock:
        sock.sendall(head)
        assert _status(sock.recv(65536)) == 413


def test_candidates() -> None:
    def scope(method: str, path: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
        return {"method": method, "path": path, "headers": list(headers)}

    cl = (b"content-length", b"10")
    assert _direct_candidate(scope("POST", "/v2/models/m/infer", cl), 100) is not None
    assert _direct_candidate(scope("POST", "/v2/models/m/infer", cl), 0) is None  # off
    assert _direct_candidate(scope("POST", "/v2/models/m/infer", cl), 5) is None  # too big
    assert _direct_candidate(scope("GET", "/v2/models/m/infer", cl), 100) is None
    assert _direct_candidate(scope("POST", "/v2/models/m", cl), 100) is None
    assert _direct_candidate(scope("POST", "/v2/models/m/infer", cl, cl), 100) is None
    assert (
        _direct_candidate(scope("POST", "/v2/models/m/infer", (b"content-length", b"-1")), 9)
        is None
    )
    chunked = (b"transfer-encoding", b"chunked")
    assert _direct_candidate(scope("POST", "/v2/models/m/infer", chunked), 100) is None
    big = DirectBody(64 << 20)
    assert len(big.buf) == 1 << 20  # memory follows the bytes, not the declared length
    big.write(b"a" * 10)
    assert big.body() == bytearray(b"a" * 10)


def test_the_direct_path_is_the_one_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blindinfer._server import protocol
    from blindinfer._tee.simulation import create as create_simulation
    from tests._inproc import inprocess_server

    written: list[int] = []
    original = protocol.DirectBody.write

    def counting(self: DirectBody, chunk: bytes) -> None:
        written.append(len(chunk))
        original(self, chunk)

    monkeypatch.setattr(protocol.DirectBody, "write", counting)
    x = np.random.default_rng(5).standard_normal((5000, 4)).astype(np.float32)
    backend = create_simulation("simulation", tmp_path)
    with (
        inprocess_server(tmp_path / "d", backend) as srv,
        blindinfer.connect(srv.url, simulation_mode=True) as conn,
    ):
        out = conn.run_model("demo", x)["probabilities"]
    assert out.shape == (5000, 3) and sum(written) >= x.nbytes


def test_pipelined_big_bodies_each_end_where_declared(server: ServerProcess) -> None:
    """Direct bodies stop exactly at their declared length: requests written back to back in
    one go (the next head in the same TLS record as the last body bytes) are each answered, in
    order, with their own outputs."""
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (30000, 1, 25000, 2)]
    with blindinfer.connect(server.url, simulation_mode=True) as conn:
        expected = [conn.run_model("demo", x)["probabilities"] for x in xs]
    stream = b"".join(b"".join(_binary_request("demo", x)) for x in xs)
    with tls_socket(server.port) as sock:
        sock.sendall(stream)
        data = b""
        for want in expected:
            got, data = _read_reply(sock, data)
            np.testing.assert_array_equal(got, want)
