"""The example pipelines through a real server process (``serve --examples``), attested TLS,
the SDK, the CLI and the official ``openai`` client: the same answers as in process, and bad
client data refused with a 4xx naming the problem while the server keeps serving."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from convert._driver import CONVERTERS, build_all

import blindinfer
from blindinfer.errors import InvalidInput, InvalidModel, PayloadTooLarge, ServerError
from tests._server import ServerProcess, start_server
from tests.pipelines import _documents, _inputs

pytestmark = [
    pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning"),
    pytest.mark.slow,
]

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TEXTS = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell."]


def _request(name: str) -> dict[str, Any]:
    """One typical request per served model (the SDK's input form)."""
    if name == "minilm-embed":
        return {"input": TEXTS}
    if name == "mobilenet-imagenet":
        return {"input": _inputs.photo("chelsea")}
    if name == "face-embed":
        return {"input": _inputs.photo("astronaut")}
    if name == "ocr":
        return {"input": _documents.invoice()[0]}
    if name == "whisper-tiny-en":
        return {"input": _inputs.speech(SENTENCE)}
    raise KeyError(name)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("examples")
    return out, build_all(out=out, progress=False)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, examples: tuple[Path, dict[str, Any]]
) -> Iterator[ServerProcess]:
    folder, _ = examples
    proc = start_server(
        tmp_path_factory.mktemp("served") / "data",
        "--examples", "--examples-dir", str(folder),
        timeout=300,
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def conn(server: ServerProcess) -> Iterator[blindinfer.Connection]:
    with blindinfer.connect(server.url, simulation_mode=True, token=server.owner_token) as c:
        yield c


def test_every_example_is_served_under_its_bundle_identity(
    conn: blindinfer.Connection, examples: tuple[Path, dict[str, Any]]
) -> None:
    _, manifest = examples
    served = {m.name: m for m in conn.list_models()}
    for name in CONVERTERS:
        assert served[name].sha256 == manifest[name]["bundle_sha256"]
        assert served[name].pipeline is not None
        meta = conn.model_metadata(name)
        assert meta["platform"] == f"blindinfer_pipeline:{served[name].pipeline}"
        assert meta["inputs"][0]["name"] == "input"
        assert meta["inputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize("name", list(CONVERTERS))
def test_server_output_equals_the_pipeline_in_process(
    name: str, conn: blindinfer.Connection, pipeline: Any
) -> None:
    request = _request(name)
    remote = conn.run_model(name, request)
    feeds = {"input": np.array(_as_list(request["input"]), dtype=object)}
    local = pipeline(name).run(feeds)
    assert set(remote) == set(local)
    for key, want in local.items():
        got = remote[key]
        assert got.shape == want.shape, key
        if want.dtype == object:
            assert [bytes(x) for x in got.reshape(-1)] == [bytes(x) for x in want.reshape(-1)]
        else:  # same code, same onnxruntime options: bit-exact
            assert np.array_equal(got, want), key


def _as_list(value: Any) -> list[bytes]:
    items = value if isinstance(value, list) else [value]
    return [v.encode() if isinstance(v, str) else v for v in items]


IMAGE_MODELS = ["mobilenet-imagenet", "face-embed", "ocr"]


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"%PDF-1.4 not an image", InvalidInput, "not a JPEG or PNG"),
        (_inputs.png_bomb(), PayloadTooLarge, "100000x100000"),
        (b"", InvalidInput, "empty"),
    ],
)
def test_bad_images_are_refused_by_name(
    name: str, data: bytes, error: type[ServerError], message: str, conn: blindinfer.Connection
) -> None:
    with pytest.raises(error, match=message) as info:
        conn.run_model(name, {"input": data})
    assert info.value.status is not None and 400 <= info.value.status < 500


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_truncated_jpeg_is_refused(name: str, conn: blindinfer.Connection) -> None:
    with pytest.raises(InvalidInput, match=r"truncated|damaged|cannot be read") as info:
        conn.run_model(name, {"input": _inputs.truncated(_inputs.photo("chelsea"))})
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x03 an mp3", "not a WAV"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "truncated|cannot be read"),
        (b"", "empty"),
    ],
)
def test_bad_audio_is_refused_by_name(
    data: bytes, message: str, conn: blindinfer.Connection
) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        conn.run_model("whisper-tiny-en", {"input": data})
    assert info.value.status == 400


def test_bad_text_is_refused_and_the_server_keeps_serving(conn: blindinfer.Connection) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        conn.run_model("minilm-embed", {"input": [""]})
    with pytest.raises(InvalidInput, match="UTF-8"):
        conn.run_model("minilm-embed", {"input": [b"\xff\xfe"]})
    with pytest.raises(InvalidInput, match="BYTES"):
        conn.run_model("minilm-embed", {"input": np.zeros(3, np.float32)})
    out = conn.run_model("minilm-embed", {"input": ["still serving"]})
    assert out["embedding"].shape == (1, 384)


def test_json_oip_request_with_strings(server: ServerProcess, conn: blindinfer.Connection) -> None:
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    with httpx.Client(verify=conn.ssl_context(), timeout=60) as client:
        reply = client.post(f"{server.url}/v2/models/minilm-embed/infer", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()["outputs"][0]
    assert out["name"] == "embedding" and out["shape"] == [2, 384]
    via_sdk = conn.run_model("minilm-embed", {"input": TEXTS[:2]})["embedding"]
    assert np.allclose(np.asarray(out["data"], np.float32).reshape(2, 384), via_sdk, atol=1e-6)


def test_openai_client_embeddings_and_transcription(
    server: ServerProcess, conn: blindinfer.Connection
) -> None:
    import openai

    http = httpx.Client(verify=conn.ssl_context(), timeout=120)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", http_client=http)
    emb = client.embeddings.create(model="minilm-embed", input=TEXTS)
    vectors = np.asarray([d.embedding for d in emb.data], np.float32)
    assert vectors.shape == (3, 384)
    sdk = conn.run_model("minilm-embed", {"input": TEXTS})["embedding"]
    assert np.allclose(vectors, sdk, atol=1e-6)
    audio = _inputs.speech(SENTENCE)
    text = client.audio.transcriptions.create(model="whisper-tiny-en", file=("s.wav", audio))
    sdk_text = conn.run_model("whisper-tiny-en", {"input": audio})["text"][0].decode()
    assert text.text == sdk_text and "fox" in text.text.lower()
    with pytest.raises(openai.BadRequestError, match="not a speech-to-text pipeline") as info:
        client.audio.transcriptions.create(model="minilm-embed", file=("s.wav", audio))
    assert info.value.type == "invalid_request_error"  # OpenAI's error object
    with pytest.raises(openai.BadRequestError, match="not a WAV"):
        client.audio.transcriptions.create(model="whisper-tiny-en", file=("s.mp3", b"ID3x"))
    http.close()


def test_openai_client_refuses_another_certificate(server: ServerProcess) -> None:
    """The pinned context is what makes the openai client attested: a different certificate
    (here: a pin on a certificate the server does not have) ends the handshake."""
    from blindinfer._client.tls import pinned_context
    from blindinfer._server.tls import generate_identity

    other = generate_identity(["127.0.0.1"]).certificate_der
    with (
        httpx.Client(verify=pinned_context(other), timeout=10) as http,
        pytest.raises(httpx.ConnectError),
    ):
        http.get(f"{server.url}/v2/health/ready")


def test_cli_run_file_prints_the_outputs(server: ServerProcess, tmp_path: Path) -> None:
    page, _ = _documents.invoice()
    path = tmp_path / "invoice.png"
    path.write_bytes(page)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
    run = subprocess.run(
        [sys.executable, "-m", "blindinfer", "run", server.url, "ocr", "--simulation",
         "--file", str(path), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["lines"]["datatype"] == "BYTES"
    assert any("TOTAL" in line for line in out["lines"]["data"])
    missing = subprocess.run(
        [sys.executable, "-m", "blindinfer", "run", server.url, "ocr", "--simulation",
         "--file", str(tmp_path / "absent.png")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0 and "absent.png" in missing.stderr


def test_bundle_folder_uploads_as_one_unit(
    conn: blindinfer.Connection, examples: tuple[Path, dict[str, Any]]
) -> None:
    folder, manifest = examples
    info = conn.upload_model(folder / "minilm-embed", "minilm-copy")
    assert info.sha256 == manifest["minilm-embed"]["bundle_sha256"]
    assert info.pipeline == "text-embedding"
    out = conn.run_model(info.sha256, {"input": TEXTS[:1]})  # pinned by identity
    assert out["embedding"].shape == (1, 384)
    conn.delete_model("minilm-copy")


def test_a_bundle_with_a_bad_graph_is_refused_whole(
    conn: blindinfer.Connection, examples: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from blindinfer._pipelines.bundle import Bundle, pack, read_dir

    good = read_dir(examples[0] / "minilm-embed")
    graph = good.manifest["graphs"]["encoder"]
    bad = Bundle(good.manifest, {**good.files, graph: b"\x08\x07 not onnx"})
    with pytest.raises(InvalidModel) as info:
        conn.upload_model(pack(bad), "minilm-bad")
    assert info.value.status == 422
    assert "minilm-bad" not in {m.name for m in conn.list_models()}
    digest = hashlib.sha256(pack(good)).hexdigest()
    assert any(m.sha256 == digest for m in conn.list_models())  # the served one is intact


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(script: str, server: ServerProcess, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, "--url", server.url, "--simulation"],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_example_scripts_run(server: ServerProcess, tmp_path: Path) -> None:
    files = {
        "speech.wav": _inputs.speech(SENTENCE),
        "cat.jpg": _inputs.photo("chelsea"),
        "astronaut.jpg": _inputs.photo("astronaut"),
        "astronaut.png": _inputs.photo("astronaut", "PNG"),
        "invoice.png": _documents.invoice()[0],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert "fox" in _example("transcribe.py", server, str(tmp_path / "speech.wav")).lower()
    assert "cat" in _example("classify_photo.py", server, str(tmp_path / "cat.jpg")).lower()
    same = _example("face_verify.py", server, str(tmp_path / "astronaut.jpg"),
                    str(tmp_path / "astronaut.png"))  # fmt: skip
    assert same.startswith("same person")
    assert "TOTAL" in _example("invoice_ocr.py", server, str(tmp_path / "invoice.png"))
    ranked = _example("semantic_search.py", server, "I forgot my password").splitlines()
    assert "password" in ranked[0]
