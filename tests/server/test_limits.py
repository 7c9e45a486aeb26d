"""Hostile requests against a real server process: run limits, cancellation, shutdown,
connection limits (head size, idle/header/body timeouts, connection cap), lazy body buffers."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer.errors import LimitExceeded, PayloadTooLarge
from tests._server import ServerProcess, free_port, running_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEMO_X = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def tls_socket(port: int, timeout: float = 20.0) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = (
        "--max-run-seconds", "2", "--max-run-memory", "256MiB", "--idle-timeout", "2",
        "--inference-workers", "1", "--max-connections", "40", "--max-json-request-size", "1MiB",
    )  # fmt: skip
    with running_server(tmp_path_factory.mktemp("limits"), *args) as srv:
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as c:
            c.upload_model(FIXTURES / "memory_bomb.onnx", name="memory-bomb")
            c.upload_model(FIXTURES / "loop_bomb.onnx", name="loop-bomb")
        yield srv


@pytest.fixture
def conn(server: ServerProcess) -> Iterator[blindinfer.Connection]:
    with blindinfer.connect(server.url, simulation_mode=True, token=server.owner_token) as c:
        yield c


def assert_still_serving(conn: blindinfer.Connection) -> None:
    out = conn.run_model("demo", DEMO_X)
    assert out["probabilities"].shape == (1, 3)
    # The worker path too: the loop model never runs inline with a large count.
    assert conn.run_model("loop-bomb", {"count": np.array(1000, np.int64)})["total"][0] == 1000


def test_memory_bomb_is_stopped_at_the_memory_limit(
    conn: blindinfer.Connection, server: ServerProcess
) -> None:
    small = conn.run_model("memory-bomb", {"shape": np.array([1000], np.int64)})
    assert small["total"] == 1000
    before = rss_mb(server.process.pid)
    with pytest.raises(LimitExceeded, match="max_run_memory"):
        conn.run_model("memory-bomb", {"shape": np.array([1 << 30], np.int64)})  # 4 GiB
    assert rss_mb(server.process.pid) - before < 300  # the 256 MiB cap, not 4 GiB
    assert_still_serving(conn)


def test_loop_bomb_is_stopped_at_the_time_limit(conn: blindinfer.Connection) -> None:
    # Small counts first: the model gets fast enough to run inline on the event loop, where
    # a huge count must not hold the loop (it is stopped there and rerun on a worker).
    for _ in range(20):
        conn.run_model("loop-bomb", {"count": np.array(3, np.int64)})
    with pytest.raises(LimitExceeded, match="max_run_seconds"):
        conn.run_model("loop-bomb", {"count": np.array(10**12, np.int64)})
    assert_still_serving(conn)


def test_disconnect_cancels_the_run(conn: blindinfer.Connection, server: ServerProcess) -> None:
    """One worker: if the abandoned run kept it, the next worker-path call would wait."""
    body = b'{"inputs":[{"name":"count","datatype":"INT64","shape":[],"data":[1000000000000]}]}'
    head = (
        f"POST /v2/models/loop-bomb/infer HTTP/1.1\r\nhost: x\r\n"
        f"content-length: {len(body)}\r\ncontent-type: application/json\r\n\r\n"
    ).encode()
    with tls_socket(server.port) as sock:
        sock.sendall(head + body)
        time.sleep(0.3)
    assert_still_serving(conn)


def test_json_body_limit_is_lower_than_binary(conn: blindinfer.Connection) -> None:
    big = np.zeros((70_000, 4), np.float32)  # 1.1 MB binary: fine
    assert conn.run_model("demo", big)["probabilities"].shape == (70_000, 3)
    with tls_socket(conn_port(conn)) as sock:
        sock.sendall(
            b"POST /v2/models/demo/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n"
        )
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 413") and b"max_json_request_size" in reply


def conn_port(conn: blindinfer.Connection) -> int:
    return int(conn.url.rsplit(":", 1)[1])


def test_header_flood_gets_431(server: ServerProcess, conn: blindinfer.Connection) -> None:
    with tls_socket(server.port) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nhost: x\r\nx-flood: ")
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert sent < 8 * 1024 * 1024 or reply  # refused long before 8 MiB was buffered
    assert_still_serving(conn)


@pytest.mark.parametrize(
    "what",
    [b"", b"GET /v2 HTTP/1.1\r\nhost:", b"POST /v2/models/demo/infer HTTP/1.1\r\n"
     b"content-length: 100\r\n\r\n{"],
    ids=["silent", "partial-head", "partial-body"],
)  # fmt: skip
def test_silent_and_trickling_connections_are_closed(server: ServerProcess, what: bytes) -> None:
    with tls_socket(server.port, timeout=15) as sock:
        if what:
            sock.sendall(what)
        start = time.monotonic()
        reply = read_until_closed(sock)
        waited = time.monotonic() - start
    assert waited < 12  # idle timeout 2 s (a generous bound: closed, not held forever)
    if what:
        assert reply.startswith(b"HTTP/1.1 408"), reply


def test_trickle_one_byte_at_a_time_is_cut(server: ServerProcess) -> None:
    """Bytes keep coming, but the head never completes: the head deadline still applies."""
    with tls_socket(server.port, timeout=15) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\n")
        start = time.monotonic()
        try:
            while time.monotonic() - start < 12:
                sock.sendall(b"x")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        assert time.monotonic() - start < 12


def test_idle_connections_declaring_64mib_cost_little(
    server: ServerProcess, conn: blindinfer.Connection
) -> None:
    before = rss_mb(server.process.pid)
    socks = [tls_socket(server.port) for _ in range(10)]
    try:
        for sock in socks:
            sock.sendall(
                b"POST /v2/models/demo/infer HTTP/1.1\r\nhost: x\r\n"
                b"inference-header-content-length: 10\r\ncontent-length: 67108864\r\n\r\n"
            )
        time.sleep(0.5)
        grown = rss_mb(server.process.pid) - before
    finally:
        for sock in socks:
            sock.close()
    print(f"RSS growth with 10 idle 64 MiB requests: {grown:.1f} MB")
    assert grown < 64


def test_connection_cap(server: ServerProcess, conn: blindinfer.Connection) -> None:
    socks = []
    try:
        for _ in range(45):
            socks.append(tls_socket(server.port))
        replies = []
        for sock in socks:
            sock.settimeout(0.5)
            try:
                replies.append(sock.recv(200))
            except (TimeoutError, ssl.SSLError):
                replies.append(b"")
        refused = [r for r in replies if r.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 5
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.2)
    assert_still_serving(conn)


def test_sigterm_exits_with_runs_in_flight(tmp_path: Path) -> None:
    args = ("--max-run-seconds", "600", "--inference-workers", "2")
    with running_server(tmp_path, *args) as srv:
        with blindinfer.connect(srv.url, simulation_mode=True, token=srv.owner_token) as c:
            c.upload_model(FIXTURES / "loop_bomb.onnx", name="loop-bomb")

        def hold() -> None:
            with (
                blindinfer.connect(srv.url, simulation_mode=True) as c2,
                contextlib.suppress(blindinfer.BlindInferError),
            ):
                c2.run_model("loop-bomb", {"count": np.array(10**12, np.int64)})

        threads = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        start = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        srv.process.wait(15)
        print(f"exited {time.monotonic() - start:.2f} s after SIGTERM with 2 runs in flight")
        assert srv.process.returncode is not None


def test_oversized_declared_body_is_refused_before_reading(conn: blindinfer.Connection) -> None:
    with pytest.raises(PayloadTooLarge):
        conn.run_model("demo", np.zeros((10_000_000, 4), np.float32))


def test_blindai_run_checks_the_token_before_reading_the_body(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    args = ("--blindai-compat", "--blindai-ports", ",".join(map(str, ports)), "--run-token", "t")
    with running_server(tmp_path, *args), tls_socket(ports[1]) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nhost: x\r\ncontent-length: 67108864\r\n\r\n")
        sock.settimeout(10)
        reply = sock.recv(4096)  # answered without a body byte sent
    assert reply.startswith(b"HTTP/1.1 403"), reply[:80]


@pytest.mark.slow
def test_big_response_to_a_slow_reader_is_not_cut(server: ServerProcess) -> None:
    """A 12 MB response read at ~160 kB/s: over a minute, past the 2 s idle timeout plus the 30 s
    a TLS close waits (which used to cut it mid-body)."""
    from blindinfer._wire import oip

    x = np.ones((1_000_000, 4), np.float32)
    chunks, header_len = oip.encode_infer_request({"features": x})
    body = b"".join(bytes(c) for c in chunks)
    head = (
        f"POST /v2/models/demo/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n"
        f"inference-header-content-length: {header_len}\r\n\r\n"
    ).encode()
    with tls_socket(server.port, timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(head + body)
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        head_end = got.index(b"\r\n\r\n")
        lines = got[:head_end].lower().split(b"\r\n")
        length = next(int(line[16:]) for line in lines if line.startswith(b"content-length: "))
        received = len(got) - head_end - 4
        while received < length:
            chunk = sock.recv(256 * 1024)
            assert chunk, f"cut after {received} of {length} bytes"
            received += len(chunk)
            time.sleep(0.1)
    assert received == length > 12_000_000, got[:300]


def test_hostile_corpus_is_refused_by_the_live_server(
    conn: blindinfer.Connection, server: ServerProcess
) -> None:
    from blindinfer.errors import InvalidModel

    # The file the models name, next to the server's data: the server runs in an empty
    # directory, and validation refuses before onnxruntime could look anyway.
    (server.data_dir / "secret.bin").write_bytes(b"ROOTSECRET")
    (server.data_dir.parent / "secret.bin").write_bytes(b"ROOTSECRET")
    files = sorted((FIXTURES / "hostile").glob("*.onnx"))
    for path in files:
        with pytest.raises(InvalidModel) as info:
            conn.upload_model(path, name=f"hostile-{path.stem}".replace("_", "-"))
        assert info.value.status == 422 and "ROOTSECRET" not in info.value.message
    assert "hostile" not in str([m.name for m in conn.list_models()])
    assert_still_serving(conn)
