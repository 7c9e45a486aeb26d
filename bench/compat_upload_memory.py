"""Peak memory of the server while the BlindAI 0.6 client protocol uploads a ~100 MB model.

Starts a real ``blindinfer serve --blindai-compat`` process, builds an ONNX model with one
~100 MB initializer, encodes the UploadModel body exactly as blindai 0.6.3 does (cbor2 of
``{"model": list(bytes), ...}``: each byte a CBOR unsigned int, 1 or 2 bytes), streams it to the
management port over HTTPS and samples the server's /proc/PID/status (VmRSS, VmHWM) meanwhile.

    .venv/bin/python bench/compat_upload_memory.py [--mb 100]

The body is encoded with numpy (the real client needs ~1 GB of Python ints to build it); the
script checks on a small model that this encoder writes the very bytes cbor2 writes.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

import cbor2
import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests._server import free_port, start_server

CLIENT_INFO = {"uid": "bench", "platform_name": "Linux", "user_agent": "blindai_python"}


def make_model(megabytes: int) -> bytes:
    n = megabytes * 1024 * 1024 // 4
    w = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _head(major: int, n: int) -> bytes:
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 24:
            return bytes([major << 5 | n])
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


def _text(s: str) -> bytes:
    return _head(3, len(s.encode())) + s.encode()


def upload_body(data: bytes) -> bytes:
    """cbor2.dumps({"model": list(data), "length": ..., "model_name", "optimize", "client_info"})"""
    a = np.frombuffer(data, np.uint8)
    two = a >= 24
    out = np.empty(len(a) + int(two.sum()), np.uint8)
    pos = np.arange(len(a)) + np.concatenate([[0], np.cumsum(two)[:-1]])
    out[pos] = np.where(two, 0x18, a)
    out[pos[two] + 1] = a[two]
    tail = bytes(cbor2.dumps({"length": len(data), "model_name": "big.onnx", "optimize": True,
                              "client_info": CLIENT_INFO}))  # fmt: skip
    return b"".join([b"\xa5", _text("model"), _head(4, len(a)), out.tobytes(), tail[1:]])


def check_encoder() -> None:
    sample = bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)) + b"\x18" * 9
    want = cbor2.dumps({"model": list(sample), "length": len(sample), "model_name": "big.onnx",
                        "optimize": True, "client_info": CLIENT_INFO})  # fmt: skip
    assert upload_body(sample) == want, "the numpy encoder differs from cbor2"


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    check_encoder()
    model = make_model(args.mb)
    body = upload_body(model)
    print(f"model {len(model) / 1e6:.1f} MB, UploadModel body {len(body) / 1e6:.1f} MB")
    ports = (free_port(), free_port(), free_port())
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(
            Path(tmp) / "data",
            "--blindai-compat",
            "--blindai-ports",
            ",".join(map(str, ports)),
            "--max-model-size",
            str(2 * len(model)),
            "--no-demo-model",
        )
        try:
            pid = server.process.pid
            time.sleep(1.0)
            before = status_kb(pid)
            samples: list[int] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    samples.append(status_kb(pid)["VmRSS"])
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # a benchmark: we measure memory, not attestation
            conn = http.client.HTTPSConnection("127.0.0.1", ports[2], context=ctx, timeout=600)
            t0 = time.monotonic()
            conn.request("POST", "/upload", body=body)
            resp = conn.getresponse()
            reply = cbor2.loads(resp.read())
            elapsed = time.monotonic() - t0
            done.set()
            sampler.join()
            after = status_kb(pid)
        finally:
            server.stop()
    assert resp.status == 200, reply
    mb = len(model) / 2**20
    base = before["VmRSS"] / 1024
    hwm = after["VmHWM"] / 1024
    print(f"upload: HTTP {resp.status} in {elapsed:.1f} s, model_id {reply['model_id']}")
    print(f"server RSS before upload: {base:.0f} MiB")
    print(f"server peak RSS (VmHWM):  {hwm:.0f} MiB = {hwm / mb:.2f}x the model")
    print(f"peak growth over baseline: {hwm - base:.0f} MiB = {(hwm - base) / mb:.2f}x the model")
    print(
        f"sampled max VmRSS: {max(samples) / 1024:.0f} MiB; RSS after: {after['VmRSS'] / 1024:.0f}"
    )


if __name__ == "__main__":
    main()
