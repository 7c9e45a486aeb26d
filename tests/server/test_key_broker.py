"""serve --key-broker: the sealing key comes from a KBS only after the server's own attestation;
two replicas given it by the broker share one store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import blindinfer
from blindinfer._server.config import Settings
from blindinfer._server.runner import build_state
from blindinfer._storage.sealed import SealedStore
from blindinfer._tee import create_backend
from blindinfer._tee.simulation import SimulationBackend
from blindinfer.attestation import Policy
from blindinfer.errors import BackendUnavailable
from tests._inproc import inprocess_server
from tests.keys.kbs_double import KbsDouble

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KEY = bytes(range(100, 132))
RESOURCE = "default/blindinfer/sealing-key"


def _backend(path: Path) -> SimulationBackend:
    backend = create_backend("simulation", path)
    assert isinstance(backend, SimulationBackend)
    return backend


def _policy(backend: SimulationBackend) -> Policy:
    table = {"measurement": [backend.measurement.hex()], "signer": [backend.signer.hex()]}
    return Policy.from_mapping({"simulation": table})


def test_store_is_sealed_with_the_released_key_and_shared(tmp_path: Path) -> None:
    a, b = _backend(tmp_path / "a"), _backend(tmp_path / "b")
    assert a.measurement == b.measurement  # same code, its own signer key each
    policy = Policy.from_mapping(
        {
            "simulation": {
                "measurement": [a.measurement.hex()],
                "signer": [a.signer.hex(), b.signer.hex()],
            }
        }
    )
    store = tmp_path / "shared"
    common = {"key_broker": "", "store_dir": store, "store_poll_seconds": 0.2}
    with KbsDouble(policy, {RESOURCE: KEY}) as kbs:
        common["key_broker"] = kbs.url
        with (
            inprocess_server(tmp_path / "da", a, **common) as sa,
            inprocess_server(tmp_path / "db", b, **common) as sb,
        ):
            with blindinfer.connect(sa.url, simulation_mode=True, token=sa.owner_token) as ca:
                info = ca.upload_model(FIXTURES / "mlp.onnx", name="shared-mlp")
            sealed = next((store / "models").glob("*.sealed"))
            # The file opens with the broker's key, i.e. the store key is the released one.
            assert SealedStore(store / "models", KEY).get(sealed.stem).data
            feeds = {"x": np.ones((1, 8), np.float32), "scale": np.array([1.0], np.float32)}
            with blindinfer.connect(sb.url, simulation_mode=True) as cb:
                for _ in range(50):
                    try:
                        out = cb.run_model(info.model_id, feeds)
                        break
                    except blindinfer.ModelNotFound:
                        time.sleep(0.1)
                else:
                    raise AssertionError("the replica never picked the model up")
        assert len(kbs.released) == 2
    import onnxruntime as ort

    session = ort.InferenceSession(str(FIXTURES / "mlp.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for name, value in zip(names, session.run(None, feeds), strict=True):
        np.testing.assert_array_equal(out[name], value)


def test_a_server_whose_evidence_fails_the_broker_policy_gets_no_key(tmp_path: Path) -> None:
    good, other = _backend(tmp_path / "good"), _backend(tmp_path / "other")
    with KbsDouble(_policy(good), {RESOURCE: KEY}) as kbs:
        conf = Settings(
            data_dir=tmp_path / "d", port=0, key_broker=kbs.url, owner_token="t" * 20,
            log_level="warning",
        )  # fmt: skip
        with pytest.raises(BackendUnavailable):
            build_state(conf, backend=other)  # another signer: refused by the broker
        assert kbs.released == []
    assert not (tmp_path / "d" / "models").exists() or not any(
        (tmp_path / "d" / "models").iterdir()
    )


class _FileKeyBackend:
    """A real-TEE-shaped backend whose sealing key comes from a file (TDX, Nitro)."""

    insecure = False

    def __init__(self, kind: str) -> None:
        self.kind, self.name = kind, kind

    def sealing_key(self) -> bytes:
        return KEY


@pytest.mark.parametrize("kind", ["tdx", "nitro"])
def test_a_key_file_on_a_real_tee_warns_and_never_logs_the_key(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from blindinfer._server.runner import _sealing_key

    conf = Settings(data_dir=tmp_path, port=0, log_level="warning")
    with caplog.at_level("INFO", logger="blindinfer.server"):
        assert _sealing_key(conf, _FileKeyBackend(kind)) == KEY  # type: ignore[arg-type]
    assert "development only" in caplog.text and "--key-broker" in caplog.text
    assert KEY.hex() not in caplog.text and repr(KEY) not in caplog.text


def test_with_a_broker_the_backend_key_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from blindinfer._server import runner

    seen: list[tuple[str, str]] = []

    def release(broker: str, resource: str, backend: object, **_: object) -> bytes:
        seen.append((broker, resource))
        return KEY

    class NoKey(_FileKeyBackend):
        def sealing_key(self) -> bytes:
            raise AssertionError("the file key must not be read when a broker is configured")

    monkeypatch.setattr(runner, "release_key", release)
    conf = Settings(data_dir=tmp_path, port=0, key_broker="cdh", log_level="warning")
    with caplog.at_level("INFO", logger="blindinfer.server"):
        assert runner._sealing_key(conf, NoKey("tdx")) == KEY  # type: ignore[arg-type]
    assert seen == [("cdh", "default/blindinfer/sealing-key")]
    assert "development only" not in caplog.text and KEY.hex() not in caplog.text
