"""Nitro producer against an emulated NSM returning real-format attestation documents."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

import cbor2
import pytest

from blindinfer._tee import create_backend
from blindinfer._tee.base import SEALING_KEY_ENV, BackendUnavailable
from blindinfer._tee.nitro import NitroBackend, document_user_data
from tests.tee.emulation import FakeNsm, nitro_document_with_user_data

RD = bytes(range(100, 164))


@pytest.fixture
def real_doc(vectors: Path) -> bytes:
    return (vectors / "nitro" / "debug-mode-attestation-doc-bytes").read_bytes()


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "nsm"
    path.write_bytes(b"")
    return path


def test_document_carries_report_data_as_user_data(
    device: Path, real_doc: bytes, tmp_path: Path
) -> None:
    nsm = FakeNsm(device, lambda ud: nitro_document_with_user_data(real_doc, ud))
    backend = create_backend("nitro", tmp_path, nsm=nsm, device=device)
    assert (backend.name, backend.kind, backend.insecure) == ("nitro", "nitro", False)
    evidence = backend.get_evidence(RD)
    assert evidence.kind == "nitro"
    assert evidence.collateral == {}
    assert nsm.requests == [{"Attestation": {"user_data": RD, "nonce": None, "public_key": None}}]
    assert nsm.open_handles == 0  # the device handle is closed again
    protected, _, payload, signature = cbor2.loads(evidence.evidence)
    original = cbor2.loads(real_doc)
    assert (protected, signature) == (original[0], original[3])
    fields = cbor2.loads(payload)
    assert fields["user_data"] == RD
    assert fields["module_id"] == cbor2.loads(original[2])["module_id"]


def test_refuses_document_with_other_user_data(device: Path, real_doc: bytes) -> None:
    nsm = FakeNsm(device, lambda ud: real_doc)  # the real document: user_data is not ours
    with pytest.raises(BackendUnavailable, match="not the requested"):
        NitroBackend(nsm, device=device).get_evidence(RD)
    assert nsm.open_handles == 0


def test_refuses_document_without_user_data(device: Path, real_doc: bytes) -> None:
    nsm = FakeNsm(device, lambda ud: nitro_document_with_user_data(real_doc, None))
    with pytest.raises(BackendUnavailable, match="user_data none"):
        NitroBackend(nsm, device=device).get_evidence(RD)


def test_refuses_malformed_document(device: Path) -> None:
    nsm = FakeNsm(device, lambda ud: cbor2.dumps({"not": "cose"}))
    with pytest.raises(BackendUnavailable, match="malformed attestation document"):
        NitroBackend(nsm, device=device).get_evidence(RD)


def test_tagged_cose_sign1_is_accepted(device: Path, real_doc: bytes) -> None:
    def tagged(ud: bytes | None) -> bytes:
        doc = cbor2.loads(nitro_document_with_user_data(real_doc, ud))
        return bytes(cbor2.dumps(cbor2.CBORTag(18, doc)))

    evidence = NitroBackend(FakeNsm(device, tagged), device=device).get_evidence(RD)
    assert document_user_data(evidence.evidence) == RD


def test_nsm_errors_become_backend_unavailable(device: Path) -> None:
    class Failing(FakeNsm):
        def get_attestation_doc(
            self,
            file_handle: IO[Any],
            user_data: bytes | None = None,
            nonce: bytes | None = None,
            public_key: bytes | None = None,
        ) -> dict[str, Any]:
            raise OSError("ioctl failed")

    nsm = Failing(device, lambda ud: b"")
    with pytest.raises(BackendUnavailable, match="ioctl failed"):
        NitroBackend(nsm, device=device).get_evidence(RD)
    assert nsm.open_handles == 0


def test_outside_an_enclave_is_refused(tmp_path: Path, real_doc: bytes) -> None:
    nsm = FakeNsm(tmp_path / "nsm", lambda ud: b"")
    with pytest.raises(BackendUnavailable, match="inside an AWS Nitro Enclave"):
        create_backend("nitro", tmp_path, nsm=nsm, device=tmp_path / "nsm")


def test_missing_package_is_explained(
    tmp_path: Path, device: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "aws_nsm_interface", None)  # import fails
    with pytest.raises(BackendUnavailable, match=r"blindinfer\[nitro\]"):
        create_backend("nitro", tmp_path, device=device)


def test_real_package_has_the_functions_used() -> None:
    nsm = pytest.importorskip("aws_nsm_interface")
    for name in ("open_nsm_device", "get_attestation_doc", "close_nsm_device"):
        assert callable(getattr(nsm, name))
    assert nsm.NSM_DEV_FILE == "/dev/nsm"


def test_sealing_key_needs_a_broker(
    device: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SEALING_KEY_ENV, raising=False)
    backend = NitroBackend(FakeNsm(device, lambda ud: b""), device=device)
    with pytest.raises(BackendUnavailable, match="Nitro has no hardware sealing key"):
        backend.sealing_key()
    (tmp_path / "k").write_bytes(b"k" * 32)
    monkeypatch.setenv(SEALING_KEY_ENV, str(tmp_path / "k"))
    assert backend.sealing_key() == b"k" * 32
