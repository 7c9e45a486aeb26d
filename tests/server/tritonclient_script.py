"""Run NVIDIA's tritonclient (the stock OIP v2 HTTP client) against a blindinfer server.

Usage: python tritonclient_script.py HOST:PORT CERT.der. Runs in its own process (tritonclient
brings gevent); the TLS context trusts exactly the certificate the test got from an attested
connection, so this is what an OIP client does after `blindinfer attest`. Prints JSON results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gevent.ssl
import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException


def main() -> None:
    address, cert_path = sys.argv[1], sys.argv[2]
    cert_der = Path(cert_path).read_bytes()

    def pinned() -> gevent.ssl.SSLContext:
        ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=cert_der)
        return ctx

    client = http.InferenceServerClient(address, ssl=True, ssl_context_factory=pinned)
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    out: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata()["name"],
        "inputs": client.get_model_metadata("demo")["inputs"],
        "model_ready": client.is_model_ready("demo", model_version="1"),
    }
    for binary in (True, False):
        tensor = http.InferInput("features", [2, 4], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = http.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("demo", [tensor], outputs=[wanted], model_version="1")
        out["binary" if binary else "json"] = result.as_numpy("probabilities").tolist()
    try:
        client.infer("demo", [tensor], model_version="7")
    except InferenceServerException as exc:
        out["wrong_version"] = [exc.status(), exc.message()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
