"""The inference lane (``protocol.Lane``, ``InferEndpoint.admit``/``finish``): requests whose
run will be inline are answered by the protocol itself, with no ASGI task. The lane must be
invisible on the wire: the same bytes as the ASGI path, replies in request order when
requests are pipelined, ``connection: close`` honoured, and every request counted.

The real server runs in this process, so the tests can switch the lane off and see which path
answered."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blindinfer
from blindinfer._engine.demo import demo_reference
from blindinfer._polling import socket_poller
from blindinfer._server import protocol
from blindinfer._server.infer import InferEndpoint
from blindinfer._tee.simulation import create as simulation_backend
from blindinfer._wire import oip
from tests._inproc import InProcessServer, inprocess_server
from tests._server import eventually
from tests.server.test_limits import tls_socket

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")

X = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with inprocess_server(tmp_path, simulation_backend("simulation", tmp_path)) as srv:
        yield srv


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The status of every reply the lane wrote (the ASGI path's are not in it)."""
    statuses: list[int] = []
    finish = InferEndpoint.finish

    def spy(self: InferEndpoint, *args: Any) -> Any:
        reply = finish(self, *args)
        if reply is not None:
            statuses.append(reply[0])
        return reply

    monkeypatch.setattr(InferEndpoint, "finish", spy)
    return statuses


def _port(srv: InProcessServer) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def _binary(x: np.ndarray, extra: str = "") -> bytes:
    chunks, header_len = oip.encode_infer_request({"features": x})
    body = b"".join(bytes(c) for c in chunks)
    return (
        f"POST /v2/models/demo/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n"
        f"inference-header-content-length: {header_len}\r\n{extra}\r\n"
    ).encode() + body


def _json(doc: Any) -> bytes:
    body = json.dumps(doc).encode()
    return (
        f"POST /v2/models/demo/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _replies(sock: ssl.SSLSocket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` replies (head, body), read by their Content-Length."""
    data, out = b"", []
    while len(out) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            if len(data) >= end + 4 + length:
                out.append((head, data[end + 4 : end + 4 + length]))
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} of {count} replies"
        data += chunk
    assert not data, "bytes past the last reply"
    return out


def _exchange(srv: InProcessServer, *requests: bytes) -> list[tuple[bytes, bytes]]:
    with tls_socket(_port(srv)) as sock:
        sock.sendall(b"".join(requests))
        return _replies(sock, len(requests))


def _warm(srv: InProcessServer) -> None:
    """One run on a worker (a model's first run: nothing known about it yet), after which the
    demo model's runs are inline, and so in the lane."""
    _exchange(srv, _binary(X))


REQUESTS = {
    "binary": _binary(X),
    "json": _json(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [3, 4],
                    "data": X.ravel().tolist(),
                }
            ]
        }
    ),
    "wrong shape": _binary(np.zeros((2, 5), np.float32)),
    "unknown input": _json(
        {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    ),
    "bad header": _binary(X).replace(b'"datatype":"FP32"', b'"datatype":"FP99"'),
}


def test_the_lane_answers_byte_for_byte_as_the_asgi_path(
    server: InProcessServer, answered: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _warm(server)
    lane = {name: _exchange(server, req)[0] for name, req in REQUESTS.items()}
    assert answered == [200, 200, 400, 400, 400], answered  # each went through the lane
    monkeypatch.setattr(InferEndpoint, "admit", lambda *args: None)  # the ASGI path only
    asgi = {name: _exchange(server, req)[0] for name, req in REQUESTS.items()}
    assert len(answered) == 5  # none more
    assert lane == asgi
    head, body = lane["binary"]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" not in head
    header_len = int(next(v for k, v in _fields(head) if k == b"inference-header-content-length"))
    out = oip.parse_infer_response(body, header_len)["probabilities"]
    np.testing.assert_allclose(out, demo_reference(X), rtol=1e-6)
    assert b"must have shape" in lane["wrong shape"][1]


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(k.lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]


def test_pipelined_requests_are_answered_in_order(
    server: InProcessServer, answered: list[int]
) -> None:
    """Requests sent in one write: the lane answers while nothing is in flight; a request
    parsed while the ASGI path serves another waits in uvicorn's queue, as before."""
    _warm(server)
    health = b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n"
    requests = [_binary(X), REQUESTS["wrong shape"], _binary(X * 3), health, _binary(X * 4)]
    replies = _exchange(server, *requests)
    statuses = [int(head.split(b" ")[1]) for head, _ in replies]
    assert statuses == [200, 400, 200, 200, 200]
    assert answered == [200, 400, 200]  # the last one was parsed behind the health check
    assert json.loads(replies[3][1]) == {"ready": True}
    for (head, body), x in ((replies[0], X), (replies[2], X * 3), (replies[4], X * 4)):
        out = oip.parse_infer_response(body, _header_len(head))["probabilities"]
        np.testing.assert_allclose(out, demo_reference(x), rtol=1e-6)
    # expect: 100-continue goes down the ASGI path (which answers 100 first)
    expect = _binary(X * 2, "expect: 100-continue\r\n")
    with tls_socket(_port(server)) as sock:
        sock.sendall(expect + _binary(X))
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        rest = first[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
        replies = _replies(_Prefixed(sock, rest), 2)  # type: ignore[arg-type]
    assert [int(h.split(b" ")[1]) for h, _ in replies] == [200, 200]
    out = oip.parse_infer_response(replies[0][1], _header_len(replies[0][0]))["probabilities"]
    np.testing.assert_allclose(out, demo_reference(X * 2), rtol=1e-6)
    assert len(answered) == 3


def _header_len(head: bytes) -> int:
    return int(next(v for k, v in _fields(head) if k == b"inference-header-content-length"))


class _Prefixed:
    """A socket whose first bytes were already read."""

    def __init__(self, sock: ssl.SSLSocket, first: bytes) -> None:
        self._sock, self._first = sock, first

    def recv(self, size: int) -> bytes:
        if self._first:
            out, self._first = self._first, b""
            return out
        return self._sock.recv(size)


def test_a_lane_reply_honours_connection_close(
    server: InProcessServer, answered: list[int]
) -> None:
    _warm(server)
    with tls_socket(_port(server)) as sock:
        sock.sendall(_binary(X, "connection: close\r\n"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert answered == [200]
    head = data[: data.index(b"\r\n\r\n")]
    assert (b"connection", b"close") in _fields(head)


def test_lane_requests_are_counted(
    server: InProcessServer, answered: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lane records a request right after writing its reply (so does the ASGI path): a
    # client may read its reply first, so each count is read once every reply is recorded.
    recorded: list[int] = []
    done = InferEndpoint.done

    def spy(self: InferEndpoint, ticket: Any, received: int, reply: Any) -> None:
        done(self, ticket, received, reply)
        recorded.append(reply[0])

    monkeypatch.setattr(InferEndpoint, "done", spy)

    def settled() -> None:
        eventually(lambda: recorded == answered, 5)

    _warm(server)
    _exchange(server, _binary(X))
    assert answered[-1] == 200
    settled()
    metrics = server.state.metrics
    before = _sample(server, "blindinfer_requests_total", route="infer", status="2xx")
    bytes_in = _sample(server, "blindinfer_bytes_total", direction="in")
    stats = metrics.model_stats(server.state.registry.resolve("demo").info.model_id)
    runs = stats.success.count
    request = _binary(X)
    _exchange(server, request, request, REQUESTS["wrong shape"])
    assert answered[-3:] == [200, 200, 400]
    settled()
    assert _sample(server, "blindinfer_requests_total", route="infer", status="2xx") == before + 2
    assert _sample(server, "blindinfer_requests_total", route="infer", status="4xx") == 1
    body_len = len(request) - request.index(b"\r\n\r\n") - 4
    assert _sample(server, "blindinfer_bytes_total", direction="in") >= bytes_in + 2 * body_len
    assert stats.success.count == runs + 2 and stats.fail.count == 1


def _sample(srv: InProcessServer, name: str, **labels: str) -> float:
    value = srv.state.metrics.registry.get_sample_value(name, {"api": "native", **labels})
    return value or 0.0


# --- waiting for a lone client by polling ---------------------------------------------------


class _CountingPoller:
    """A poll object that records each poll's timeout."""

    def __init__(self, fd: int, polled: list[int]) -> None:
        self._poll = socket_poller(fd)
        self._polled = polled

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        self._polled.append(timeout)
        return self._poll.poll(timeout)


def test_the_server_spins_only_for_a_lone_client(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    polled: list[int] = []
    monkeypatch.setattr(protocol, "socket_poller", lambda fd: _CountingPoller(fd, polled))
    with blindinfer.connect(server.url, simulation_mode=True, spin_us=0) as conn:
        for _ in range(5):
            out = conn.run_model("demo", X)["probabilities"]
            np.testing.assert_allclose(out, demo_reference(X), rtol=1e-6)
        assert polled and set(polled) == {0}  # alone: after each reply it polled, never slept
        with tls_socket(_port(server)) as other:
            other.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
            count = len(polled)
            for _ in range(5):
                conn.run_model("demo", X)
            assert len(polled) == count  # two connections: no spinning at all


def test_no_spinning_while_a_body_arrives(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer trickling a body must not keep a core spinning: the server polls only between
    requests."""
    polled: list[int] = []
    monkeypatch.setattr(protocol, "socket_poller", lambda fd: _CountingPoller(fd, polled))
    request = _binary(X)
    with tls_socket(_port(server)) as sock:
        for _ in range(2):  # the first on a worker, the second in the lane: polls after it
            sock.sendall(request)
            assert _replies(sock, 1)[0][0].startswith(b"HTTP/1.1 200")
        settled = _settle(polled)
        assert settled > 0
        for i in range(0, len(request) - 1, 7):
            sock.sendall(request[i : min(i + 7, len(request) - 1)])
            time.sleep(0.005)
        assert len(polled) == settled  # a whole head and most of a body: no polling
        sock.sendall(request[-1:])
        assert _replies(sock, 1)[0][0].startswith(b"HTTP/1.1 200")
        assert _settle(polled) > settled  # after the reply, it polled again


def _settle(polled: list[int]) -> int:
    """The number of polls once the server has stopped polling (a spin lasts at most
    ``--spin-us``; this waits for 0.1 s without a new poll, 10 s at most)."""
    deadline = time.monotonic() + 10
    seen = -1
    while len(polled) != seen and time.monotonic() < deadline:
        seen = len(polled)
        time.sleep(0.1)
    return seen


def test_no_spinning_when_it_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    polled: list[int] = []
    monkeypatch.setattr(protocol, "socket_poller", lambda fd: _CountingPoller(fd, polled))
    backend = simulation_backend("simulation", tmp_path)
    with (
        inprocess_server(tmp_path / "data", backend, spin_us=0) as srv,
        blindinfer.connect(srv.url, simulation_mode=True, spin_us=0) as conn,
    ):
        for _ in range(5):
            conn.run_model("demo", X)
    assert polled == []


def test_a_lone_client_that_goes_quiet_does_not_hold_the_server(server: InProcessServer) -> None:
    """The spin is bounded: a client that got its reply and sends nothing more leaves the loop
    free for a new connection (a liveness check, not a timing one)."""
    with blindinfer.connect(server.url, simulation_mode=True) as conn:
        for _ in range(3):
            conn.run_model("demo", X)
        with blindinfer.connect(server.url, simulation_mode=True) as other:
            np.testing.assert_allclose(
                other.run_model("demo", X)["probabilities"], demo_reference(X), rtol=1e-6
            )
