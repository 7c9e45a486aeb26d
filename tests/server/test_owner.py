"""Who the model owner is: on a real TEE, only measured configuration or the key broker say so.

The backends here are real-TEE-like (``insecure=False``) stand-ins whose evidence carries the
fields the owner comes from: an SEV-SNP ATTESTATION_REPORT with HOST_DATA, the real TDX quote of
the shared vectors with its MRCONFIGID patched, an SGX backend (Gramine: the measured manifest's
loader.env). The server is the real one (``build_state`` and ``serve_state``, real HTTPS).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from blindinfer._engine.demo import demo_model_bytes
from blindinfer._server.config import Settings
from blindinfer._server.owner import OWNER_TOKEN_FILE, owner_digest
from blindinfer._server.runner import banner, build_state, serve_state
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import ConfigError
from tests._server import free_port
from tests.attestation._snp_nitro_forge import build_snp_report

TOKEN = "the-real-owner-token-0123456789"
DIGEST = hashlib.sha256(TOKEN.encode()).digest()
MRCONFIGID_AT = 48 + 184  # quote header, then TD report body up to MRTD


class RealLike:
    """A TEE backend with insecure=False whose evidence carries the given config field."""

    insecure = False

    def __init__(self, kind: str, field: bytes = b"", quote: bytes = b"") -> None:
        self.kind = kind
        self.name = {"sgx": "gramine-sgx", "snp": "sev-snp"}.get(kind, kind)
        self.field = field
        self.quote = quote

    def get_evidence(self, report_data: bytes) -> Evidence:
        if self.kind == "snp":
            host_data = self.field.ljust(32, b"\0")
            raw = bytes(build_snp_report(report_data=report_data, host_data=host_data))
        elif self.kind == "tdx":
            q = bytearray(self.quote)
            q[MRCONFIGID_AT : MRCONFIGID_AT + 48] = self.field.ljust(48, b"\0")
            raw = bytes(q)
        else:
            raw = b"opaque-evidence" + report_data
        return Evidence(kind=self.kind, evidence=raw)

    def sealing_key(self) -> bytes:
        return bytes(range(32))


def settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", port=free_port(), log_level="warning", **kw)


def digest_of(backend: RealLike, tmp_path: Path, **kw: Any) -> bytes:
    got, token = owner_digest(settings(tmp_path, **kw), backend, backend.sealing_key())
    assert token is None  # a real TEE never mints (nor shows) a token
    return got


@pytest.fixture
def tdx_quote(vectors: Path) -> bytes:
    return (vectors / "tdx" / "tdx_quote").read_bytes()


# --- where the owner may come from ---------------------------------------------------------------


def test_a_real_tee_without_a_measured_owner_refuses_to_start(tmp_path: Path) -> None:
    for backend, what in [
        (RealLike("sgx"), "loader.env.BLINDINFER_OWNER_TOKEN_SHA256"),
        (RealLike("snp"), "HOST_DATA"),
        (RealLike("nitro"), "enclave image"),
    ]:
        with pytest.raises(ConfigError, match=f"no model owner is configured.*{what}"):
            build_state(settings(tmp_path), backend=backend)  # type: ignore[arg-type]
    assert not (tmp_path / "data" / OWNER_TOKEN_FILE).exists()  # nothing minted


def test_the_hosts_owner_token_is_refused_on_a_real_tee(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="come from the host"):
        digest_of(RealLike("sgx"), tmp_path, owner_token=TOKEN)


def test_sgx_takes_the_hash_from_the_measured_manifest(tmp_path: Path) -> None:
    assert digest_of(RealLike("sgx"), tmp_path, owner_token_sha256=DIGEST.hex()) == DIGEST


def test_snp_host_data(tmp_path: Path) -> None:
    assert digest_of(RealLike("snp", DIGEST), tmp_path) == DIGEST
    # the environment is the host's on SNP: it may only repeat what HOST_DATA says
    assert digest_of(RealLike("snp", DIGEST), tmp_path, owner_token_sha256=DIGEST.hex())
    with pytest.raises(ConfigError, match="differs"):
        digest_of(RealLike("snp", DIGEST), tmp_path, owner_token_sha256="00" * 32)
    with pytest.raises(ConfigError, match="not measured"):
        digest_of(RealLike("snp"), tmp_path, owner_token_sha256=DIGEST.hex())


def test_tdx_mrconfigid(tmp_path: Path, tdx_quote: bytes) -> None:
    assert digest_of(RealLike("tdx", DIGEST, tdx_quote), tmp_path) == DIGEST
    with pytest.raises(ConfigError, match="something other than sha256"):
        digest_of(RealLike("tdx", DIGEST + b"\x01" * 16, tdx_quote), tmp_path)
    with pytest.raises(ConfigError, match="no model owner"):
        digest_of(RealLike("tdx", b"", tdx_quote), tmp_path)


def test_coco_initdata(tmp_path: Path, tdx_quote: bytes) -> None:
    doc = (
        'algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n'
        f'"blindinfer-owner" = "{DIGEST.hex()}"\n'
    ).encode()
    path = tmp_path / "initdata.toml"
    path.write_bytes(doc)
    measured = hashlib.sha384(doc).digest()
    tdx = RealLike("tdx", measured, tdx_quote)
    assert digest_of(tdx, tmp_path, owner_initdata=path) == DIGEST
    path.write_bytes(doc.replace(DIGEST.hex().encode(), b"11" * 32))  # the operator's own owner
    with pytest.raises(ConfigError, match="not the one measured"):
        digest_of(tdx, tmp_path, owner_initdata=path)
    snp_doc = doc.replace(b"sha384", b"sha256")
    path.write_bytes(snp_doc)
    snp = RealLike("snp", hashlib.sha256(snp_doc).digest())
    assert digest_of(snp, tmp_path, owner_initdata=path) == DIGEST


def test_key_broker_release(tmp_path: Path) -> None:
    backend = RealLike("sgx")
    s = settings(tmp_path, owner_resource="kbs:///blindinfer/owner")

    def release(value: bytes) -> Callable[[], bytes]:
        return lambda: value

    for raw in (DIGEST, DIGEST.hex().encode(), DIGEST.hex().encode() + b"\n"):
        assert owner_digest(s, backend, b"k" * 32, released=release(raw)) == (DIGEST, None)
    with pytest.raises(ConfigError, match="no key broker"):
        owner_digest(s, backend, b"k" * 32, released=None)
    with pytest.raises(ConfigError, match="32 bytes or 64 hex"):
        owner_digest(s, backend, b"k" * 32, released=release(b"short"))
    both = settings(tmp_path, owner_resource="r", owner_token_sha256="22" * 32)
    with pytest.raises(ConfigError, match="differs"):  # two sources must agree
        owner_digest(both, backend, b"k" * 32, released=release(DIGEST))


def test_simulation_keeps_generating_once(tmp_path: Path) -> None:
    class Sim(RealLike):
        insecure = True

    s = settings(tmp_path)
    s.data_dir.mkdir(parents=True)
    first, token = owner_digest(s, Sim("simulation"), b"k" * 32)
    assert token is not None and hashlib.sha256(token.encode()).digest() == first
    assert owner_digest(s, Sim("simulation"), b"k" * 32) == (first, None)  # shown once


# --- the operator's attacks, against the running server -------------------------------------------


@contextmanager
def serving(s: Settings, backend: RealLike) -> Iterator[tuple[str, str]]:
    state, token = build_state(s, backend=backend)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(serve_state(state, token, ready.set)), daemon=True
    )
    thread.start()
    assert ready.wait(30)
    try:
        yield f"https://127.0.0.1:{s.port}", banner(state, token)
    finally:
        assert state.stop_event is not None
        loop.call_soon_threadsafe(state.stop_event.set)
        thread.join(15)
        state.registry.stop_sync()
        state.executor.shutdown(wait=False)


def upload(url: str, token: str, name: str) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with httpx.Client(base_url=url, verify=ctx) as http:
        r = http.post(
            "/blindinfer/v1/models",
            params={"name": name},
            content=demo_model_bytes(),
            headers={"authorization": f"Bearer {token}"},
        )
        return r.status_code


def test_deleting_owner_files_never_makes_a_new_owner(tmp_path: Path) -> None:
    backend = RealLike("sgx")
    s = settings(tmp_path, owner_token_sha256=DIGEST.hex())
    with serving(s, backend) as (url, text):
        assert "owner token" not in text and TOKEN not in text
        assert upload(url, TOKEN, "first") == 201
        assert upload(url, "operator-guess", "x") in (401, 403)
    # the operator wipes whatever looks like owner state and plants a sealed token of their own
    (s.data_dir / OWNER_TOKEN_FILE).unlink(missing_ok=True)
    with pytest.raises(ConfigError):  # without the measured hash: refused, nothing minted
        build_state(settings(tmp_path), backend=backend)  # type: ignore[arg-type]
    assert not (s.data_dir / OWNER_TOKEN_FILE).exists()
    with pytest.raises(ConfigError, match="come from the host"):
        build_state(settings(tmp_path, owner_token="mine"), backend=backend)  # type: ignore[arg-type]
    s2 = settings(tmp_path, owner_token_sha256=DIGEST.hex())
    with serving(s2, backend) as (url, text):
        assert "owner token" not in text
        assert upload(url, "mine", "y") in (401, 403)
        assert upload(url, TOKEN, "second") == 201
