"""The SDK refuses to talk to anything but the attested TEE: MITM, simulation opt-in, policy."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer._client import InsecureSimulationWarning
from blindinfer._client.connection import fetch_evidence
from tests._server import ServerProcess, running_server
from tests.client.mitm import mitm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# Marker bytes that would show up in the proxy's plaintext if any input leaked.
SECRET = np.frombuffer(b"TOP-SECRET-INPUT" * 4, dtype=np.float32).reshape(4, 4).copy()

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("tls")) as srv:
        yield srv


def test_proxy_relaying_real_evidence_is_refused_at_connect(server: ServerProcess) -> None:
    with mitm(server.port, "terminate") as proxy:
        # The proxy really does relay the real server's evidence...
        evidence, proxy_cert = fetch_evidence(proxy.url, None, 10)
        _, server_cert = fetch_evidence(server.url, None, 10)
        assert evidence.kind == "simulation" and proxy_cert != server_cert
        # ...but the certificate the client sees is the proxy's, which the evidence does not bind.
        with pytest.raises(blindinfer.BindingError, match="not the one the simulation evidence"):
            blindinfer.connect(proxy.url, simulation_mode=True, token=server.owner_token)
        assert b"POST" not in proxy.seen
        assert server.owner_token.encode() not in proxy.seen


def test_mitm_after_attestation_fails_before_any_request_byte(server: ServerProcess) -> None:
    model = (FIXTURES / "mlp.onnx").read_bytes()
    with mitm(server.port, "passthrough") as proxy:
        conn = blindinfer.connect(proxy.url, simulation_mode=True, token=server.owner_token)
        with conn:
            out = conn.run_model("demo", np.ones((1, 4), np.float32))  # end-to-end TLS: fine
            assert out["probabilities"].shape == (1, 3)
            # The attacker takes over: new connections now end at the proxy's own TLS.
            proxy.mode = "terminate"
            proxy.drop_connections()
            proxy.seen.clear()
            with pytest.raises(blindinfer.BindingError, match="man in the middle"):
                conn.upload_model(model, name="stolen")
            with pytest.raises(blindinfer.BindingError):
                conn.run_model("demo", SECRET)
            # The client reached the proxy and, its certificate being unknown, attested that
            # connection: the relayed evidence binds the real server's certificate, not the
            # proxy's, so each of the bounded attempts was refused...
            assert proxy.handshakes == 2 * 3 == conn._transport.refused
            # ...and all the proxy ever read is attestation requests: no token, no model, no input.
            requests = [r for r in bytes(proxy.seen).split(b"\r\n\r\n") if r]
            assert len(requests) == 6
            assert all(r.startswith(b"GET /blindinfer/v1/attestation?nonce=") for r in requests)
            assert b"authorization" not in proxy.seen.lower()
            assert len(conn.verified_certificates) == 1
    assert model not in proxy.seen and SECRET.tobytes() not in proxy.seen
    assert server.owner_token.encode() not in proxy.seen and b"POST" not in proxy.seen


def test_mitm_refused_once_without_retries(server: ServerProcess) -> None:
    with mitm(server.port, "passthrough") as proxy:
        conn = blindinfer.connect(
            proxy.url, simulation_mode=True, token=server.owner_token, attest_attempts=1
        )
        with conn:
            conn.run_model("demo", np.ones((1, 4), np.float32))
            proxy.mode = "terminate"
            proxy.drop_connections()
            proxy.seen.clear()
            with pytest.raises(blindinfer.BindingError, match="man in the middle"):
                conn.run_model("demo", SECRET)
            assert proxy.handshakes == 1 and conn._transport.refused == 1
    assert SECRET.tobytes() not in proxy.seen


def test_connect_through_mitm_is_refused_after_bounded_attempts(server: ServerProcess) -> None:
    with mitm(server.port, "terminate") as proxy:
        with pytest.raises(blindinfer.BindingError):
            blindinfer.connect(proxy.url, simulation_mode=True, attest_attempts=2)
        assert proxy.handshakes == 2


def test_dropped_keep_alive_connections_are_replaced(server: ServerProcess) -> None:
    with (
        mitm(server.port, "passthrough") as proxy,
        blindinfer.connect(proxy.url, simulation_mode=True, token=server.owner_token) as c,
    ):
        x = np.ones((1, 4), np.float32)
        first = c.run_model("demo", x)
        proxy.drop_connections()  # as a server or load balancer closing idle connections
        np.testing.assert_array_equal(
            c.run_model("demo", x)["probabilities"], first["probabilities"]
        )
        proxy.drop_connections()
        info = c.upload_model(FIXTURES / "mlp.onnx", name="after-drop")  # streamed body, replayed
        c.delete_model(info.model_id)


def test_simulation_refused_without_opt_in(server: ServerProcess) -> None:
    with pytest.raises(blindinfer.PolicyError, match="SIMULATION TEE"):
        blindinfer.connect(server.url)
    with pytest.raises(blindinfer.PolicyError, match="SIMULATION"):
        blindinfer.connect(server.url, policy={"simulation": {}})


def test_simulation_mode_warns_plainly(server: ServerProcess) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blindinfer.connect(server.url, simulation_mode=True).close()
    assert any(
        issubclass(w.category, InsecureSimulationWarning)
        and "NO hardware protection" in str(w.message)
        for w in caught
    )


def test_policy_pins_measurement(server: ServerProcess, tmp_path: Path) -> None:
    with blindinfer.connect(server.url, simulation_mode=True) as conn:
        measured = conn.claims.measurements["measurement"]
        signer = conn.claims.fields["signer"]
    good = tmp_path / "good.toml"
    good.write_text(f'[simulation]\nmeasurement = "{measured}"\nsigner = "{signer}"\n')
    blindinfer.connect(server.url, policy=good, simulation_mode=True).close()

    wrong = "ab" * 32
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[simulation]\nmeasurement = "{wrong}"\n')
    with pytest.raises(blindinfer.PolicyError) as exc:
        blindinfer.connect(server.url, policy=bad, simulation_mode=True)
    msg = str(exc.value)
    assert "simulation.measurement" in msg and wrong in msg and measured in msg


def test_real_tee_policy_without_matching_table_is_refused(server: ServerProcess) -> None:
    with pytest.raises(blindinfer.PolicyError, match=r"no \[simulation\] table"):
        blindinfer.connect(
            server.url,
            policy={"sgx": {"mrenclave": "00" * 32}},
            simulation_mode=True,
        )


def test_token_from_environment(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLINDINFER_OWNER_TOKEN", server.owner_token)
    with blindinfer.connect(server.url, simulation_mode=True) as conn:
        info = conn.upload_model(FIXTURES / "mlp.onnx", name="env-token")
        conn.delete_model(info.model_id)
