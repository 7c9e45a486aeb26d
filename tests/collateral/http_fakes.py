"""Local HTTP services on 127.0.0.1 standing in for Intel PCCS and AMD KDS (no internet here).

They answer from the real collateral vectors, in the wire formats of the real services:
- PCCS v4 (Intel "Provisioning Certification Service for ECDSA Attestation" API v4): pckcrl (DER,
  issuer chain in the URL-encoded SGX-PCK-CRL-Issuer-Chain header), rootcacrl (hex text),
  tcb (JSON {"tcbInfo", "signature"} + TCB-Info-Issuer-Chain), qe/identity (JSON
  {"enclaveIdentity", "signature"} + SGX-Enclave-Identity-Issuer-Chain);
- AMD KDS: /vcek/v1/{product}/{hwid}?... (DER) and /vcek/v1/{product}/cert_chain (PEM).
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

Route = tuple[int, dict[str, str], bytes]


@dataclass
class FakeService:
    routes: dict[str, Route] = field(default_factory=dict)  # exact path+query -> answer
    requests: list[str] = field(default_factory=list)
    url: str = ""


@contextmanager
def serve(service: FakeService) -> Iterator[FakeService]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            service.requests.append(self.path)
            status, headers, body = service.routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    service.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pccs_routes(collateral_json: Path, tee: str, fmspc: str, ca: str) -> dict[str, Route]:
    """The four PCCS v4 answers that together make up ``collateral_json``."""
    c = json.loads(collateral_json.read_text())
    chain = urllib.parse.quote
    tcb = f'{{"tcbInfo":{c["tcb_info"]},"signature":"{c["tcb_info_signature"]}"}}'
    qe = f'{{"enclaveIdentity":{c["qe_identity"]},"signature":"{c["qe_identity_signature"]}"}}'
    return {
        f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der": (
            200,
            {"SGX-PCK-CRL-Issuer-Chain": chain(c["pck_crl_issuer_chain"])},
            bytes.fromhex(c["pck_crl"]),
        ),
        "/sgx/certification/v4/rootcacrl": (200, {}, c["root_ca_crl"].encode()),
        f"/{tee}/certification/v4/tcb?fmspc={fmspc}&update=standard": (
            200,
            {"TCB-Info-Issuer-Chain": chain(c["tcb_info_issuer_chain"])},
            tcb.encode(),
        ),
        f"/{tee}/certification/v4/qe/identity?update=standard": (
            200,
            {"SGX-Enclave-Identity-Issuer-Chain": chain(c["qe_identity_issuer_chain"])},
            qe.encode(),
        ),
    }
