"""Start a real ``blindinfer serve`` process on loopback for integration tests."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

OWNER_TOKEN = "test-owner-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    port: int
    data_dir: Path
    owner_token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def is_ready(url: str) -> bool:
    """Whether a blindinfer server answers /v2/health/ready at ``url`` (TLS, unverified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_server(
    data_dir: Path, *extra_args: str, port: int | None = None, timeout: float = 60.0
) -> ServerProcess:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
    cmd = [
        sys.executable, "-m", "blindinfer", "serve",
        "--data-dir", str(data_dir),
        "--port", str(port),
        "--owner-token", OWNER_TOKEN,
        "--log-level", "warning",
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"https://127.0.0.1:{port}"
    server = ServerProcess(url, port, data_dir, OWNER_TOKEN, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        if is_ready(url):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become ready in {timeout}s:\n{server.log()}")


@contextmanager
def running_server(
    tmp_path: Path, *extra_args: str, port: int | None = None
) -> Iterator[ServerProcess]:
    server = start_server(tmp_path / "data", *extra_args, port=port)
    try:
        yield server
    finally:
        server.stop()


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> float:
    """Wait until ``check()`` holds (polled every 0.1 s); the seconds it took, or an
    AssertionError past ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s")
