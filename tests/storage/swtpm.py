"""A real software TPM 2.0 (``swtpm``, Debian packages swtpm + swtpm-tools) on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from blindinfer._storage.tpm_anchor import TcpTransport

SWTPM = shutil.which("swtpm")


def _free_pair() -> int:
    """A port P with P and P+1 both free on loopback (data and control channel)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


@dataclass
class SwTpm:
    state_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def transport(self) -> TcpTransport:
        return TcpTransport("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_swtpm(state_dir: Path) -> SwTpm:
    """``swtpm socket --tpm2`` with state in ``state_dir`` (kept across restarts), already past
    TPM2_Startup(CLEAR); returns once the data port accepts connections."""
    if SWTPM is None:
        raise RuntimeError("swtpm is not installed (apt-get install -y swtpm swtpm-tools)")
    state_dir.mkdir(parents=True, exist_ok=True)
    last = ""
    for _ in range(5):
        port = _free_pair()
        log_path = state_dir.parent / f"{state_dir.name}-swtpm.log"
        log = log_path.open("ab")
        proc = subprocess.Popen(
            [
                SWTPM,
                "socket",
                "--tpm2",
                "--server",
                f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--tpmstate",
                f"dir={state_dir}",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                # the control port: connecting to the data port would occupy swtpm's one
                # connection slot for nothing
                with socket.create_connection(("127.0.0.1", port + 1), timeout=1):
                    return SwTpm(state_dir, port, proc, log_path)
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        last = log_path.read_text(errors="replace")
    raise RuntimeError(f"swtpm did not start: {last[-2000:]}")
