"""Attested key release against the KBS double (RCAR over real HTTP/HTTPS on 127.0.0.1)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blindinfer._keys import _jose, kbs, release_key
from blindinfer._keys._http import exchange
from blindinfer._keys.kbs import KbsSession, fetch_resource
from blindinfer._tee import create_backend
from blindinfer._tee.simulation import SimulationBackend
from blindinfer.attestation import Policy, verify_evidence
from blindinfer.errors import BackendUnavailable
from tests.keys.kbs_double import KbsDouble, jcs, jwe_encrypt

KEY = bytes(range(32))
RESOURCE = "blindinfer/sealing-key/model-store"


@pytest.fixture
def sim(tmp_path: Path) -> SimulationBackend:
    backend = create_backend("simulation", tmp_path / "data")
    assert isinstance(backend, SimulationBackend)
    return backend


def sim_policy(backend: SimulationBackend, measurement: bytes | None = None) -> Policy:
    m = (measurement if measurement is not None else backend.measurement).hex()
    return Policy.from_mapping(
        {"simulation": {"measurement": [m], "signer": [backend.signer.hex()]}}
    )


@pytest.fixture
def broker(sim: SimulationBackend) -> Iterator[KbsDouble]:
    with KbsDouble(sim_policy(sim), {RESOURCE: KEY}) as double:
        yield double


# --- success --------------------------------------------------------------------------------------


def test_key_released_to_evidence_that_satisfies_the_policy(
    broker: KbsDouble, sim: SimulationBackend
) -> None:
    assert fetch_resource(broker.url, RESOURCE, sim, context=None, timeout=10) == KEY
    assert release_key(broker.url, RESOURCE, sim, timeout=10) == KEY
    assert release_key(broker.url, f"kbs:///{RESOURCE}", sim, timeout=10) == KEY
    (first, *_rest) = broker.attestations
    assert first["tee"] == "sample"
    assert first["claims"].measurements["measurement"] == sim.measurement.hex()
    assert broker.released == [RESOURCE] * 3


def test_report_data_binds_the_runtime_data_hash_as_trustee_computes_it(
    broker: KbsDouble, sim: SimulationBackend
) -> None:
    session = KbsSession(broker.url, context=None, timeout=10)
    nonce, algorithm = session.auth("sample")
    assert algorithm == "sha384"
    key = _jose.generate_key()
    att = session.attestation("sample", nonce, algorithm, sim, key)
    # what the double (and Trustee's KBS) hash: JCS of tee-pubkey, nonce, additional-evidence
    expect = hashlib.sha384(
        jcs(
            {
                "tee-pubkey": att["runtime-data"]["tee-pubkey"],
                "nonce": nonce,
                "additional-evidence": "",
            }
        )
    ).digest()
    primary = att["tee-evidence"]["primary_evidence"]
    assert base64.b64decode(primary["report_data"]) == expect
    ev = kbs.decode_primary_evidence("sample", primary)[0]
    claims = verify_evidence(ev, at=dt.datetime.now(dt.UTC))
    assert claims.report_data == expect + bytes(16)
    assert att["runtime-data"]["tee-pubkey"] == _jose.public_jwk(key)
    assert set(att["runtime-data"]["tee-pubkey"]) == {"kty", "crv", "alg", "x", "y"}
    session.attest(att)
    assert session.resource(RESOURCE, key) == KEY


def test_hex_key_is_accepted_and_other_sizes_refused(sim: SimulationBackend) -> None:
    resources = {
        "r/k/hex": KEY.hex().encode() + b"\n",
        "r/k/short": b"x" * 31,
        "r/k/long": b"y" * 33,
    }
    with KbsDouble(sim_policy(sim), resources) as double:
        assert release_key(double.url, "r/k/hex", sim, timeout=10) == KEY
        for name in ("r/k/short", "r/k/long"):
            with pytest.raises(BackendUnavailable, match=r"not a sealing key") as info:
                release_key(double.url, name, sim, timeout=10)
            assert "yyy" not in str(info.value) and "xxx" not in str(info.value)


def test_https_broker_authenticated_by_the_given_context(
    tmp_path: Path, sim: SimulationBackend
) -> None:
    import ssl

    cert, key = self_signed(tmp_path)
    with KbsDouble(sim_policy(sim), {RESOURCE: KEY}, certfile=cert, keyfile=key) as double:
        assert double.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        assert release_key(double.url, RESOURCE, sim, timeout=10, context=ctx) == KEY
        with pytest.raises(BackendUnavailable, match=r"key broker auth request: cannot reach"):
            release_key(double.url, RESOURCE, sim, timeout=10)  # system trust store: refused


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test kbs")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(k, hashes.SHA256())
    )
    cp, kp = tmp_path / "kbs.pem", tmp_path / "kbs.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cp, kp


# --- refusals -----------------------------------------------------------------------------------


def test_refused_for_another_measurement(sim: SimulationBackend) -> None:
    with KbsDouble(sim_policy(sim, measurement=b"\x01" * 32), {RESOURCE: KEY}) as double:
        with pytest.raises(
            BackendUnavailable, match=r"key broker refused the attestation: 401"
        ) as info:
            release_key(double.url, RESOURCE, sim, timeout=10)
        assert "PolicyDeny" in str(info.value)
        assert "simulation.measurement" in str(info.value)
        assert double.released == []


def test_refused_when_report_data_does_not_bind_the_pubkey(
    broker: KbsDouble, sim: SimulationBackend
) -> None:
    session = KbsSession(broker.url, context=None, timeout=10)
    nonce, algorithm = session.auth("sample")
    key = _jose.generate_key()
    att = session.attestation("sample", nonce, algorithm, sim, key)
    mallory = _jose.generate_key()
    att["runtime-data"]["tee-pubkey"] = _jose.public_jwk(mallory)  # swapped after the evidence
    with pytest.raises(BackendUnavailable, match=r"refused the attestation: 401.*REPORT_DATA"):
        session.attest(att)
    with pytest.raises(BackendUnavailable, match=r"refused the resource .* 401"):
        session.resource(RESOURCE, mallory)
    assert broker.released == []


def test_refused_when_the_signed_report_data_differs_from_the_sample_field(
    broker: KbsDouble, sim: SimulationBackend
) -> None:
    """Evidence over the right digest but the runtime data of another key: caught by the signed
    report_data even though the unsigned sample field is rewritten to match."""
    session = KbsSession(broker.url, context=None, timeout=10)
    nonce, algorithm = session.auth("sample")
    att = session.attestation("sample", nonce, algorithm, sim, _jose.generate_key())
    other = _jose.public_jwk(_jose.generate_key())
    att["runtime-data"]["tee-pubkey"] = other
    att["tee-evidence"]["primary_evidence"]["report_data"] = base64.b64encode(
        kbs.runtime_data_digest(nonce, other)
    ).decode()
    with pytest.raises(
        BackendUnavailable, match=r"REPORT_DATA is different from that in the simulation"
    ):
        session.attest(att)


def test_replayed_nonce_is_refused(broker: KbsDouble, sim: SimulationBackend) -> None:
    session = KbsSession(broker.url, context=None, timeout=10)
    nonce, algorithm = session.auth("sample")
    key = _jose.generate_key()
    att = session.attestation("sample", nonce, algorithm, sim, key)
    session.attest(att)
    with pytest.raises(BackendUnavailable, match=r"401.*already used"):
        session.attest(att)  # same session, same nonce
    other = KbsSession(broker.url, context=None, timeout=10)
    other.auth("sample")
    with pytest.raises(BackendUnavailable, match=r"401.*already used"):
        other.attest(att)  # another session presenting the old nonce and evidence
    fresh = KbsSession(broker.url, context=None, timeout=10)
    fresh.auth("sample")
    with pytest.raises(BackendUnavailable, match=r"401.*not this session's"):
        fresh.attest(_with_nonce(att, "bm90LWlzc3VlZA=="))  # a nonce the broker never issued


def _with_nonce(att: dict[str, Any], nonce: str) -> dict[str, Any]:
    return {**att, "runtime-data": {**att["runtime-data"], "nonce": nonce}}


def test_resource_without_token_or_session_is_refused(broker: KbsDouble) -> None:
    url = f"{broker.url}/kbs/v0/resource/{RESOURCE}"
    reply = exchange("GET", url, step="t", timeout=10)
    assert reply.status == 401
    assert json.loads(reply.body)["type"].endswith("/TokenNotFound")
    reply = exchange("GET", url, step="t", timeout=10, headers={"Authorization": "Bearer a.b.c"})
    assert reply.status == 401
    session = KbsSession(broker.url, context=None, timeout=10)
    session.auth("sample")  # a session that never attested
    with pytest.raises(BackendUnavailable, match=r"refused the resource .*not attested.*401"):
        session.resource(RESOURCE, _jose.generate_key())


def test_token_works_as_bearer_and_missing_resource_is_404(
    broker: KbsDouble, sim: SimulationBackend
) -> None:
    session = KbsSession(broker.url, context=None, timeout=10)
    nonce, algorithm = session.auth("sample")
    key = _jose.generate_key()
    token = session.attest(session.attestation("sample", nonce, algorithm, sim, key))
    reply = exchange(
        "GET",
        f"{broker.url}/kbs/v0/resource/{RESOURCE}",
        step="t",
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status == 200
    assert _jose.decrypt(json.loads(reply.body), key) == KEY
    with pytest.raises(BackendUnavailable, match=r"has no resource a/b/c: 404"):
        session.resource("a/b/c", key)


def test_tampered_jwe_from_the_broker_is_refused(sim: SimulationBackend) -> None:
    with KbsDouble(sim_policy(sim), {RESOURCE: KEY}, tamper_jwe=True) as double:
        with pytest.raises(
            BackendUnavailable, match=r"does not decrypt with the TEE key.*authenticate"
        ) as info:
            release_key(double.url, RESOURCE, sim, timeout=10)
        assert KEY.hex() not in str(info.value)


def test_backend_failure_and_unsupported_kinds_name_the_step(broker: KbsDouble) -> None:
    class Broken:
        name, kind, insecure = "simulation", "simulation", True

        def get_evidence(self, report_data: bytes):  # type: ignore[no-untyped-def]
            raise OSError("device gone")

    with pytest.raises(
        BackendUnavailable,
        match=r"could not produce evidence for the key broker: OSError: device gone",
    ):
        fetch_resource(broker.url, RESOURCE, Broken(), timeout=10)  # type: ignore[arg-type]
    b = Broken()
    b.kind = "nitro"
    with pytest.raises(BackendUnavailable, match="no Nitro"):
        fetch_resource(broker.url, RESOURCE, b, timeout=10)  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable, match=r"must be <repository>/<type>/<tag>"):
        fetch_resource(broker.url, "../../etc", Broken(), timeout=10)  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable, match=r"cannot reach"):
        release_key("http://127.0.0.1:9", RESOURCE, Broken(), timeout=2)  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable, match=r"KBS URL .* or 'cdh'"):
        release_key("ftp://x", RESOURCE, Broken(), timeout=2)  # type: ignore[arg-type]


# --- JWE ----------------------------------------------------------------------------------------


def test_jwe_decrypts_only_with_the_right_key() -> None:
    key = _jose.generate_key()
    jwe = jwe_encrypt(_jose.public_jwk(key), b"secret")
    assert _jose.decrypt(jwe, key) == b"secret"
    with pytest.raises(ValueError, match=r"does not unwrap"):
        _jose.decrypt(jwe, _jose.generate_key())
    for member in ("ciphertext", "tag", "iv", "encrypted_key"):
        raw = bytearray(_jose.b64url_decode(jwe[member], member))
        raw[-1] ^= 0x80
        bad = {**jwe, member: _jose.b64url(bytes(raw))}
        with pytest.raises(ValueError):
            _jose.decrypt(bad, key)
    header = json.loads(_jose.b64url_decode(jwe["protected"], "p"))
    header["kid"] = "x"  # any change to the protected header breaks the AAD
    with pytest.raises(ValueError, match=r"does not authenticate"):
        _jose.decrypt(
            {**jwe, "protected": _jose.b64url(json.dumps(header, separators=(",", ":")).encode())},
            key,
        )
    header = {**json.loads(_jose.b64url_decode(jwe["protected"], "p")), "alg": "RSA1_5"}
    with pytest.raises(ValueError, match=r"unsupported JWE algorithms"):
        _jose.decrypt({**jwe, "protected": _jose.b64url(json.dumps(header).encode())}, key)


def test_concat_kdf_matches_rfc7518_appendix_c() -> None:
    # RFC 7518 Appendix C: ECDH-ES with A128GCM, apu "Alice", apv "Bob"
    d_bob = _jose.b64url_decode("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw", "d")
    eph = {
        "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
        "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
    }
    bob = ec.derive_private_key(int.from_bytes(d_bob, "big"), ec.SECP256R1())
    z = bob.exchange(ec.ECDH(), _jose.jwk_public_key({"kty": "EC", "crv": "P-256", **eph}))
    assert (
        _jose.b64url(_jose.concat_kdf(z, "A128GCM", b"Alice", b"Bob", 128))
        == "VqqN6vgjbSBcIijNcacQGg"
    )


def test_canonical_json_is_jcs() -> None:
    assert _jose.canonical_json({"b": "é", "a": {"z": 1, "y": [True, None]}}) == (
        '{"a":{"y":[true,null],"z":1},"b":"é"}'.encode()
    )
    # RFC 8785 3.2.3: keys sorted by UTF-16 code units
    # (U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FB33 although its code point is higher)
    assert _jose.canonical_json({"\ufb33": 4, "\u20ac": 1, "\U0001f600": 2, "\r": 3}) == (
        '{"\\r":3,"\u20ac":1,"\U0001f600":2,"\ufb33":4}'.encode()
    )
