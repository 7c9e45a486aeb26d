"""Simulation backend: software-signed evidence, for development only. INSECURE by design.

It holds a 32-byte secret in ``<data-dir>/simulation-tee.key`` (created on first start) from which
it derives an Ed25519 signing key (so a policy can pin the signer across restarts) and the model
store's sealing key. Anyone who can read that file can forge evidence and read stored models.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from blindinfer.attestation import _simulation as fmt
from blindinfer.attestation._claims import Evidence

KEY_FILE = "simulation-tee.key"


def code_measurement(package_dir: Path | None = None) -> bytes:
    """sha256 over the installed blindinfer sources: sorted (relative path, sha256(content))."""
    root = package_dir or Path(__file__).resolve().parent.parent
    h = hashlib.sha256(b"blindinfer-code-measurement-v1\x00")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\x00" + hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=label).derive(secret)


def _load_or_create_secret(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    try:
        secret = path.read_bytes()
        if len(secret) == 32:
            return secret
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


class SimulationBackend:
    name = "simulation"
    kind = "simulation"
    insecure = True

    def __init__(self, secret: bytes, measurement: bytes | None = None) -> None:
        self._signing_key = Ed25519PrivateKey.from_private_bytes(_derive(secret, b"sim-signing"))
        self._sealing_key = _derive(secret, b"sim-sealing")
        self.signer = self._signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.measurement = measurement if measurement is not None else code_measurement()
        self._lock = threading.Lock()

    def get_evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report_data must be exactly 64 bytes")
        payload = fmt.encode_payload(self.measurement, report_data, self.signer, int(time.time()))
        with self._lock:
            signature = self._signing_key.sign(fmt.DOMAIN + payload)
        return Evidence(kind=fmt.KIND, evidence=bytes(cbor2.dumps([payload, signature])))

    def sealing_key(self) -> bytes:
        return self._sealing_key


def create(name: str, data_dir: Path, **options: Any) -> SimulationBackend:
    return SimulationBackend(_load_or_create_secret(data_dir))
