"""The streamed upload: sealed as it arrives, nothing left behind when it does not complete."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import blindinfer
from blindinfer._engine.registry import ModelRegistry
from blindinfer._storage.sealed import SealedStore
from tests._server import ServerProcess, running_server

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("upstream")) as srv:
        yield srv


def _no_temp_files(models: Path) -> bool:
    deadline = time.monotonic() + 20  # the abort runs after the response: wait for it
    while list(models.glob("*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not list(models.glob("*.tmp"))


def test_threaded_upload_seals_the_model_it_serves(tmp_path: Path) -> None:
    store = SealedStore(tmp_path, bytes(32))
    registry = ModelRegistry(store)
    data = (FIXTURES / "mlp.onnx").read_bytes()
    upload = registry.begin_upload(name="m")
    for start in range(0, len(data), 1000):
        upload.feed(data[start : start + 1000])
    info = registry.finish_upload(upload, data)
    assert store.get(info.model_id).data == data
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_refused_model_leaves_no_file(server: ServerProcess) -> None:
    models = server.data_dir / "models"
    before = sorted(p.name for p in models.iterdir())
    with (
        blindinfer.connect(server.url, simulation_mode=True, token=server.owner_token) as c,
        pytest.raises(blindinfer.BlindInferError),
    ):
        c.upload_model(b"\x08\x07" + b"not onnx" * 100_000, name="bad")
    assert _no_temp_files(models)
    assert sorted(p.name for p in models.iterdir()) == before


def test_truncated_body_leaves_no_file(server: ServerProcess) -> None:
    models = server.data_dir / "models"
    before = sorted(p.name for p in models.iterdir())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", server.port)) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(
            b"POST /blindinfer/v1/models?name=cut HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + server.owner_token.encode() + b"\r\n"
            b"Content-Length: 10000000\r\n\r\n" + b"\0" * 3_000_000
        )
    assert _no_temp_files(models)
    assert sorted(p.name for p in models.iterdir()) == before
    r = httpx.get(f"{server.url}/v2/models/cut", verify=False)
    assert r.status_code == 404
