"""What waking idle threads costs on this machine: the floor under the server's added latency.

Two measurements, no blindinfer code involved:

- a TLS round trip on loopback (a uvloop/asyncio TLS server answering a 4 KB reply to a
  600 KB request, a blocking client), back to back and after the client slept ``--idle-ms``;
- an event loop -> worker thread -> event loop hop (``run_in_executor``) around a no-op and
  around ``--idle-ms`` of numpy work on the worker (the loop's thread idles meanwhile);
- the floor under a ResNet-18-sized call: a 600 KB TLS request to a server in another process
  that computes ``--idle-ms`` before a 4 KB answer, minus that compute (no HTTP at all).

    .venv/bin/python -m bench.wakeup [--idle-ms 19] [--n 300]

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REQUEST = 602_112  # a 1x3x224x224 float32 tensor
REPLY = b"x" * 4096


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.got = 0

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= REQUEST:
            self.got -= REQUEST
            self.transport.write(self.answer())  # type: ignore[attr-defined]

    def answer(self) -> bytes:
        return REPLY


def _contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp / "k.pem"), "-out", str(tmp / "c.pem"), "-days", "1",
         "-subj", "/CN=bench"],
        capture_output=True, check=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


def _serve(context: ssl.SSLContext) -> int:
    """A TLS echo server on its own thread and loop (uvloop when installed); its port."""
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()

        async def main() -> None:
            server = await loop.create_server(_Echo, "127.0.0.1", 0, ssl=context)
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            await asyncio.Event().wait()

        loop.run_until_complete(main())

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return port[0]


def _p50_ms(fn: Callable[[], object], n: int, before: Callable[[], object] | None = None) -> float:
    samples = []
    for _ in range(n):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples[n // 10 :]) * 1e3)


def tls_round_trip(idle_s: float, n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx, client_ctx = _contexts(Path(tmp))
        port = _serve(server_ctx)
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = client_ctx.wrap_socket(raw)
        payload = os.urandom(REQUEST)

        def call() -> None:
            sock.sendall(payload)
            got = 0
            while got < len(REPLY):
                got += len(sock.recv(65536))

        hot = _p50_ms(call, n)
        cold = _p50_ms(call, n, lambda: time.sleep(idle_s))
        sock.close()
        return hot, cold


def thread_hop(idle_s: float, n: int) -> tuple[float, float]:
    a = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    reps = max(1, int(idle_s / ((time.perf_counter() - start) / 20)))

    def work(k: int) -> None:
        for _ in range(k):
            a @ a

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        out = []
        with ThreadPoolExecutor(1) as pool:
            for k in (0, reps):
                hops, direct = [], []
                for _ in range(n):
                    t = time.perf_counter()
                    await loop.run_in_executor(pool, work, k)
                    hops.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    work(k)
                    direct.append(time.perf_counter() - t)
                out.append(float(np.median(hops) - np.median(direct)) * 1e3)
        return out[0], out[1]

    return asyncio.run(main())


def _floor_server(tmp: Path, work_ms: float, port_file: Path) -> None:
    """Child process: a uvloop TLS server that computes ``work_ms`` (one thread) per request,
    then answers 4 KB whose first 8 bytes are the compute time it measured (ns)."""
    import uvloop

    server_ctx, _ = _contexts(tmp)
    a = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(50):
        a @ a
    reps = max(1, int(work_ms / 1e3 / ((time.perf_counter() - start) / 50)))

    class Compute(_Echo):
        def answer(self) -> bytes:
            t = time.perf_counter_ns()
            for _ in range(reps):
                a @ a
            return struct.pack("<q", time.perf_counter_ns() - t) + REPLY[8:]

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Compute, "127.0.0.1", 0, ssl=server_ctx)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.Event().wait()

    uvloop.run(serve())


def tls_floor(work_ms: float, n: int) -> float:
    """The least a request can cost on top of its run here: a blocking TLS client sends 600 KB
    to a server in another process that computes ``work_ms`` and answers 4 KB (no HTTP, no
    parsing); p50 of round trip minus the server's own compute time, in ms."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.wakeup", "--floor-server", tmp, str(work_ms)],
            env=env,
        )
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            _, client_ctx = _contexts(Path(tmp))
            raw = socket.create_connection(("127.0.0.1", int(port_file.read_text())))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = client_ctx.wrap_socket(raw)
            payload, buf = os.urandom(REQUEST), bytearray(65536)
            extra = []
            for i in range(n + 20):
                start = time.perf_counter_ns()
                sock.sendall(payload)
                got = b""
                while len(got) < len(REPLY):
                    got += buf[: sock.recv_into(buf)]
                total = time.perf_counter_ns() - start
                if i >= 20:  # warm-up
                    extra.append(total - struct.unpack("<q", got[:8])[0])
            sock.close()
        finally:
            child.kill()
            child.wait()
    return float(np.median(extra)) / 1e6


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--floor-server":
        _floor_server(Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[2]) / "port")
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle-ms", type=float, default=19.0, help="idle time before a call")
    ap.add_argument("--n", type=int, default=300, help="calls per measurement")
    args = ap.parse_args()
    idle = args.idle_ms / 1000
    hot, cold = tls_round_trip(idle, args.n)
    print(f"TLS round trip, 600 KB request / 4 KB reply: p50 {hot:.3f} ms back to back, "
          f"{cold:.3f} ms after {args.idle_ms:g} ms idle")  # fmt: skip
    noop, busy = thread_hop(idle, min(args.n, 200))
    print(f"loop -> worker -> loop hop: {noop:.3f} ms around a no-op, {busy:.3f} ms around "
          f"{args.idle_ms:g} ms of work")  # fmt: skip
    floor = tls_floor(args.idle_ms, min(args.n, 200))
    print(f"floor: 600 KB TLS request to another process computing {args.idle_ms:g} ms, 4 KB "
          f"reply: {floor:.3f} ms on top of the compute (p50)")  # fmt: skip


if __name__ == "__main__":
    main()
