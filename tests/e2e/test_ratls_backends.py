"""Evidence inside the certificate (RA-TLS), per TEE backend: the real server on each emulated
device (the same emulations as test_tee_backends.py, signing real-format evidence under test
roots) puts evidence of its TLS key into its certificate; that certificate alone, with the
kind's collateral, verifies with the same verifiers as the endpoint's evidence, gives the same
measurements, and is refused under the pinned vendor roots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from blindinfer._client.connection import connect, fetch_evidence
from blindinfer._tee import create_backend
from blindinfer.attestation import verify_certificate
from blindinfer.attestation._ratls import extension_value, parse_extension
from blindinfer.errors import EvidenceError
from tests._inproc import inprocess_server
from tests.attestation._snp_nitro_forge import make_test_nitro_chain, make_test_snp_chain
from tests.e2e.test_tee_backends import (
    NITRO_PCRS,
    SGX_MRENCLAVE,
    SNP_MEASUREMENT,
    TDX_MRTD,
    dcap_pki,
    nitro_document,
    no_network,
    sealing_key_file,
    snp_device,
)
from tests.tee.emulation import ConfigfsTsmEmulation, FakeNsm, GramineAttestationFs


@contextmanager
def _server(kind: str, tmp_path: Path, vectors: Path) -> Iterator[tuple[Any, dict, dict, str]]:
    """(server, trust roots, policy, measurement name and value) for one emulated TEE."""
    data = tmp_path / "data"
    if kind == "snp":
        chain = make_test_snp_chain()
        fs = snp_device(tmp_path, chain)
        backend = create_backend("sev-snp", data, tsm_root=fs.root, fs=fs, collateral=no_network,
                                 sealing_key_file=sealing_key_file(tmp_path))  # fmt: skip
        with inprocess_server(data, backend, demo_model=False) as server:
            yield (
                server,
                {"snp": [chain.ark_der]},
                {"snp": {"measurement": SNP_MEASUREMENT.hex()}},
                "measurement",
            )
        return
    if kind == "nitro":
        chain = make_test_nitro_chain()
        device = tmp_path / "nsm"
        device.write_bytes(b"")
        nsm = FakeNsm(device, nitro_document(chain))
        backend = create_backend("nitro", data, nsm=nsm, device=device,
                                 sealing_key_file=sealing_key_file(tmp_path))  # fmt: skip
        with inprocess_server(data, backend, demo_model=False) as server:
            yield (
                server,
                {"nitro": [chain.root_der]},
                {"nitro": {"pcr0": NITRO_PCRS[0].hex()}},
                "pcr0",
            )
        return
    pki = dcap_pki(vectors, kind)
    collateral = pki.collateral(datetime.now(UTC))
    roots = {kind: [pki.root_der]}
    if kind == "tdx":
        fs = ConfigfsTsmEmulation(tmp_path / "tsm", "tdx_guest", pki.quote)
        backend = create_backend("tdx", data, tsm_root=fs.root, fs=fs,
                                 collateral=lambda quote: {"dcap": collateral},
                                 sealing_key_file=sealing_key_file(tmp_path))  # fmt: skip
        with inprocess_server(data, backend, demo_model=False) as server:
            yield server, roots, {"tdx": {"mrtd": TDX_MRTD}}, "mrtd"
        return
    policy = {"sgx": {"mrenclave": SGX_MRENCLAVE,
                      "allowed_tcb_status": ["ConfigurationAndSWHardeningNeeded"],
                      "allowed_advisories": ["INTEL-SA-00289", "INTEL-SA-00615"]}}  # fmt: skip
    with GramineAttestationFs(tmp_path / "attestation", pki.quote) as device:
        backend = create_backend("gramine-sgx", data, attestation_root=device.root,
                                 collateral=lambda quote: {"dcap": collateral})  # fmt: skip
        with inprocess_server(data, backend, demo_model=False) as server:
            yield server, roots, policy, "mrenclave"


@pytest.mark.parametrize("kind", ["sgx", "tdx", "snp", "nitro"])
def test_the_certificate_alone_carries_verifiable_evidence(
    kind: str, tmp_path: Path, vectors: Path
) -> None:
    from blindinfer import Policy

    with _server(kind, tmp_path, vectors) as (server, roots, policy, field):
        with connect(server.url, policy, token=server.owner_token, trust_roots=roots) as conn:
            cert = conn.certificate_der  # connect() also checked the extension (same options)
            endpoint_claims = conn.claims
        value = extension_value(cert)
        assert value is not None
        parsed = parse_extension(value)
        assert parsed.tag == {"sgx": 0x1A7501, "tdx": 0x1A7501, "snp": 0x1A7504}.get(
            kind, parsed.tag
        )
        evidence, _ = fetch_evidence(server.url, None, 10)  # only for its collateral
        claims = verify_certificate(
            cert,
            at=datetime.now(UTC),
            collateral=evidence.collateral,
            policy=Policy.from_mapping(policy),
            roots=roots[kind],
        )
        assert claims.kind == kind
        assert claims.measurements[field] == endpoint_claims.measurements[field]
        assert claims.report_data != endpoint_claims.report_data  # two bindings, two reports
        with pytest.raises(EvidenceError):  # the pinned vendor roots do not know the test PKI
            verify_certificate(cert, at=datetime.now(UTC), collateral=evidence.collateral)
