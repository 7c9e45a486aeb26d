"""The floor under any TLS model server on this machine: the same run behind the thinnest TLS
server possible, side by side with ``blindinfer serve`` and in-process onnxruntime.

    .venv/bin/python -m bench.floor --model resnet18 --seconds 3 --rounds 12

The thin server (``--serve``, a child process) is a loop and nothing else: TLS 1.3 on
loopback, the request's raw input bytes read straight into a preallocated array, the same
onnxruntime session as in-process (``bench.run.ort_session``), the raw output bytes written
back. No HTTP, no framing, no checks, no attestation; the client sends the arrays' own
buffers and reads into a preallocated buffer, and both sides poll their non-blocking sockets
as blindinfer does. ``bench.wakeup``'s last line measures a floor too, with a stand-in
compute and a uvloop server that sleeps between reads; this one runs the real model and
measures the thin server, blindinfer and in-process onnxruntime in the same minutes
(``bench.run.interleaved``: short slices in turn, the order rotating), so that the real
server's overhead splits into "transport" (thin - in-process) and "everything else"
(blindinfer - thin). Meant for big requests (ResNet-18, BERT-shaped): on the MLP the thin
server is slower than blindinfer (+0.54 ms, not investigated), so it is no floor there.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.models import ensure_model
from bench.run import Runner, connect, interleaved, ort_session, server, upload_all
from bench.timeline import _parse, _spans
from blindinfer._server.tls import generate_identity

ROOT = Path(__file__).resolve().parent.parent

_RUN = struct.Struct("<Q")  # the thin server's own run time, ns, after each reply
_now = time.perf_counter_ns


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key, made as blindinfer makes its own (P-256)."""
    identity = generate_identity(["127.0.0.1"])
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(identity.certificate_pem)
    key_path.write_bytes(identity.private_key_pem())
    return cert_path, key_path


def _read_exactly(sock: ssl.SSLSocket, view: memoryview, spin_ns: int = 30_000_000) -> None:
    """Read ``view`` full, polling the non-blocking socket for up to ``spin_ns`` before
    sleeping in ``select``: a blocking read pays a wake-up per TLS record here (~1.8 ms more
    per 600 KB request on this VM), and blindinfer polls too; the sleep keeps an idle thin
    server off the CPU while the other variants run."""
    got, idle_since = 0, _now()
    while got < len(view):
        try:
            n = sock.recv_into(view[got:])
        except ssl.SSLWantReadError:
            if _now() - idle_since > spin_ns:
                select.select([sock], [], [])
                idle_since = _now()
            continue
        idle_since = _now()
        if n == 0:
            raise EOFError
        got += n


def _send_all(sock: ssl.SSLSocket, data: memoryview) -> None:
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:])
        except ssl.SSLWantWriteError:
            continue


def serve(model_name: str, intra_op: int, cert: Path, key: Path) -> None:
    """The thin server: one connection, then request bytes in, run, reply bytes out."""
    model = ensure_model(model_name)
    session = ort_session(model, intra_op)
    arrays = {name: np.empty_like(a) for name, a in model.inputs.items()}
    views = [memoryview(a).cast("B") for a in arrays.values()]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    raw, _ = listener.accept()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with ctx.wrap_socket(raw, server_side=True) as sock:
        sock.setblocking(False)
        try:
            while True:
                for view in views:
                    _read_exactly(sock, view, spin_ns=500_000)  # blindinfer serve --spin-us 500
                started = _now()
                outputs = session.run(None, arrays)
                ran = _now() - started
                reply = b"".join(o.tobytes() for o in outputs) + _RUN.pack(ran)
                _send_all(sock, memoryview(reply))
        except EOFError:
            pass


class ThinClient:
    def __init__(self, port: int, inputs: dict[str, np.ndarray], reply_size: int) -> None:
        self.inputs = [memoryview(np.ascontiguousarray(a)).cast("B") for a in inputs.values()]
        self.reply = bytearray(reply_size + _RUN.size)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # a benchmark on loopback: the cost, not the trust
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw)
        self.sock.setblocking(False)
        self.runs: list[int] = []
        self.sends: list[int] = []

    def call(self) -> None:
        started = _now()
        for view in self.inputs:
            _send_all(self.sock, view)
        self.sends.append(_now() - started)
        _read_exactly(self.sock, memoryview(self.reply))
        self.runs.append(_RUN.unpack_from(self.reply, len(self.reply) - _RUN.size)[0])

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--seconds", type=float, default=3.0, help="budget per variant")
    ap.add_argument("--rounds", type=int, default=12, help="slices per variant")
    ap.add_argument("--intra-op", type=int, default=1)
    ap.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.model, args.intra_op, Path(args.serve[0]), Path(args.serve[1]))
        return 0
    model = ensure_model(args.model)
    session = ort_session(model, args.intra_op)
    reply_size = sum(o.nbytes for o in session.run(None, model.inputs))
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _self_signed(Path(tmp))
        cmd = [
            sys.executable, "-m", "bench.floor", "--model", args.model,
            "--intra-op", str(args.intra_op), "--serve", str(cert), str(key),
        ]  # fmt: skip
        thin_proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        try:
            assert thin_proc.stdout is not None
            thin = ThinClient(int(thin_proc.stdout.readline()), model.inputs, reply_size)
            marks = Path(tmp) / "marks.txt"
            env = {
                "BLINDINFER_TIMELINE_OUT": str(marks),
                "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
            }
            with server(Path(tmp), args.intra_op, module="bench._timeline_server", env=env) as srv:
                upload_all(srv.url, [model])
                # One connection only: a second one on the port turns the server's polling for a
                # lone client off (bench.spin compares the polling settings).
                conn = connect(srv.url)
                variants: dict[str, Runner] = {
                    "in-process": lambda: session.run(None, model.inputs),
                    "thin TLS server": thin.call,
                    "blindinfer": lambda: conn.run_model(model.name, model.inputs),
                }
                began = _now()
                p50 = {
                    name: row["p50_ms"]
                    for name, row in interleaved(variants, args.seconds, args.rounds, 1.0).items()
                }
                conn.close()
                srv.process.send_signal(signal.SIGUSR1)  # it writes its marks and exits
                srv.process.wait(30)
            server_marks = [_parse(line) for line in marks.read_text().splitlines()]
            served = _spans(
                [m for m in server_marks if m[1] >= began], "server run start", "server run end"
            )
            thin.close()
        finally:
            thin_proc.wait(30)
    _report(p50, thin.runs, thin.sends, served)
    return 0


def _report(
    p50: dict[str, float], thin_runs: list[int], thin_sends: list[int], served: list[int]
) -> None:
    """Each variant's median call against in-process, and each server's call against its own
    run (medians over every call, warm-up included: a few of several hundred)."""
    local = p50["in-process"]
    for name, ms in p50.items():
        print(f"{name:16s} p50 {ms:8.3f} ms  {ms / local:.3f}x in-process  +{ms - local:.3f} ms")
    thin_run = statistics.median(thin_runs) / 1e6
    own = statistics.median(served) / 1e6
    print(
        f"\nthe thin server's own run: {thin_run:.3f} ms "
        f"(thin call - its run: {p50['thin TLS server'] - thin_run:.3f} ms; "
        f"sending the request: {statistics.median(thin_sends) / 1e6:.3f} ms)\n"
        f"blindinfer's own run (registry.run): {own:.3f} ms "
        f"(blindinfer call - its run: {p50['blindinfer'] - own:.3f} ms)\n"
        f"blindinfer - thin server: {p50['blindinfer'] - p50['thin TLS server']:+.3f} ms"
    )


if __name__ == "__main__":
    raise SystemExit(main())
