"""Simulation evidence: produced by the simulation backend, checked by the pure verifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindinfer._server.tls import generate_identity
from blindinfer._tee.simulation import SimulationBackend, code_measurement, create
from blindinfer.attestation import Evidence, Policy, detect_kind, verify_evidence
from blindinfer.attestation import _simulation as sim
from blindinfer.attestation._binding import check_binding, report_data_for
from blindinfer.errors import (
    AttestationError,
    BindingError,
    ConfigError,
    EvidenceError,
    PolicyError,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CERT = generate_identity().certificate_der


@pytest.fixture
def backend(tmp_path: Path) -> SimulationBackend:
    return create("simulation", tmp_path)


@pytest.fixture
def evidence(backend: SimulationBackend) -> Evidence:
    return backend.get_evidence(report_data_for(CERT))


def test_round_trip_and_binding(backend: SimulationBackend, evidence: Evidence) -> None:
    claims = verify_evidence(evidence, at=datetime.now(UTC), certificate_der=CERT)
    assert claims.kind == "simulation" and claims.insecure and claims.debug
    assert claims.measurements["measurement"] == code_measurement().hex()
    assert claims.fields["signer"] == backend.signer.hex()
    assert detect_kind(evidence.evidence) == "simulation"


def test_signer_and_sealing_key_survive_restart(tmp_path: Path) -> None:
    a, b = create("simulation", tmp_path), create("simulation", tmp_path)
    assert a.signer == b.signer and a.sealing_key() == b.sealing_key()
    other = create("simulation", tmp_path / "other")
    assert other.signer != a.signer and other.sealing_key() != a.sealing_key()


def test_every_flipped_byte_is_refused(evidence: Evidence) -> None:
    raw = evidence.evidence
    for pos in range(len(raw)):
        for mask in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[pos] ^= mask
            with pytest.raises(AttestationError):
                verify_evidence(
                    Evidence("simulation", bytes(tampered)),
                    at=datetime.now(UTC),
                    certificate_der=CERT,
                )


def test_signature_by_another_key_is_refused(evidence: Evidence) -> None:
    payload, _ = cbor2.loads(evidence.evidence)
    forged = Ed25519PrivateKey.generate().sign(sim.DOMAIN + payload)
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_evidence(
            Evidence("simulation", cbor2.dumps([payload, forged])), at=datetime.now(UTC)
        )


def test_re_signed_with_own_key_fails_a_pinned_signer(backend: SimulationBackend) -> None:
    attacker = SimulationBackend(b"\x01" * 32)
    ev = attacker.get_evidence(report_data_for(CERT))
    verify_evidence(ev, at=datetime.now(UTC))  # authentic in itself...
    policy = Policy.from_mapping({"simulation": {"signer": backend.signer.hex()}})
    with pytest.raises(PolicyError, match=r"simulation\.signer"):
        verify_evidence(ev, at=datetime.now(UTC), policy=policy)  # ...but not the pinned key
    with pytest.raises(EvidenceError, match="not a trusted root"):
        verify_evidence(ev, at=datetime.now(UTC), roots=[backend.signer])


def test_report_data_for_another_certificate_is_refused(backend: SimulationBackend) -> None:
    other = generate_identity().certificate_der
    ev = backend.get_evidence(report_data_for(other))
    with pytest.raises(BindingError, match="man in the middle"):
        verify_evidence(ev, at=datetime.now(UTC), certificate_der=CERT)


def test_nonce_freshness(backend: SimulationBackend) -> None:
    ev = backend.get_evidence(report_data_for(CERT, b"nonce-one"))
    claims = verify_evidence(ev, at=datetime.now(UTC), certificate_der=CERT)
    check_binding(claims, CERT, b"nonce-one")
    with pytest.raises(BindingError, match="not fresh"):
        check_binding(claims, CERT, b"nonce-two")


def test_measurement_policy_names_field_and_values(evidence: Evidence) -> None:
    measured = code_measurement().hex()
    wrong = "cd" * 32
    policy = Policy.from_toml(f'[simulation]\nmeasurement = ["{wrong}"]\n')
    with pytest.raises(PolicyError) as exc:
        verify_evidence(evidence, at=datetime.now(UTC), policy=policy)
    assert "simulation.measurement" in str(exc.value)
    assert wrong in str(exc.value) and measured in str(exc.value)


def test_policy_from_claims_round_trips(evidence: Evidence) -> None:
    claims = verify_evidence(evidence, at=datetime.now(UTC))
    policy = Policy.from_toml(Policy.from_claims(claims).to_toml())
    policy.check(claims)


def test_future_dated_evidence_is_refused(evidence: Evidence) -> None:
    with pytest.raises(EvidenceError, match="after the verification time"):
        verify_evidence(evidence, at=datetime.now(UTC) - timedelta(hours=1))


@pytest.mark.parametrize(
    "blob",
    [b"", b"\xff", cbor2.dumps([b"x"]), cbor2.dumps([b"\xa0", b"sig"]), cbor2.dumps({"a": 1})],
)
def test_malformed_documents(blob: bytes) -> None:
    with pytest.raises(EvidenceError):
        verify_evidence(Evidence("simulation", blob), at=NOW)


@pytest.mark.parametrize(
    "toml",
    [
        "[simulation]\nmeasurement = 'zz'\n",
        "[simulation]\nmeasurement = 'abcd'\n",
        "[simulation]\nunknown = 1\n",
        "[martian]\n",
        "not toml ===",
    ],
)
def test_bad_policies_are_config_errors(toml: str) -> None:
    with pytest.raises(ConfigError):
        Policy.from_toml(toml)


def test_empty_policy_refuses_everything(evidence: Evidence) -> None:
    with pytest.raises(PolicyError, match="no \\[simulation\\] table"):
        verify_evidence(evidence, at=datetime.now(UTC), policy=Policy())
