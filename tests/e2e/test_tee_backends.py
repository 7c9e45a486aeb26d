"""End to end, per TEE backend: the real server with its evidence producer on an emulated device,
and the real SDK connecting, verifying and running a model over attested TLS.

Two kinds of run:

- **replay**: the emulated device answers with a REAL hardware vector from the shared vectors,
  unchanged. Such a vector cannot carry the digest of our server's certificate. The production
  producer notices and the server refuses to start; a server that replays anyway (modelled by a
  test subclass of the producer whose report_data check is switched off, i.e. an operator who
  replaces the producer) is refused by the CLIENT's binding check, with ``BindingError``, although
  the vector itself is authentic: verified against the pinned vendor root, inside its validity
  window (``attest(..., at=...)`` where the window has passed), and accepted by a policy made from
  its own claims.
- **success**: the emulation signs evidence over the report_data the producer wrote, in the real
  format, under a root of trust generated inside the test and passed to the SDK only through
  ``trust_roots`` (SEV-SNP: test ARK/ASK/VCEK; Nitro: test root and cabundle; SGX/TDX: a test
  Intel-style PKI for dcap-qvl's ``verify_with_root_ca``). The SDK uploads and runs a model and
  gets the outputs of in-process onnxruntime. The same server is then refused without the test
  root (pinned vendor root: ``EvidenceError``) and under a policy naming another measurement
  (``PolicyError`` naming the field).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer._client.connection import Connection, attest, connect, fetch_evidence
from blindinfer._collateral import CollateralProvider, collect
from blindinfer._tee import create_backend
from blindinfer._tee.base import BackendUnavailable, TeeBackend
from blindinfer._tee.configfs_tsm import ConfigfsTsmBackend
from blindinfer._tee.gramine import GramineSgxBackend
from blindinfer._tee.nitro import NitroBackend
from blindinfer.attestation import Claims, Evidence, Policy, kind_module, verify_evidence
from blindinfer.attestation._binding import report_data_for
from blindinfer.errors import BindingError, CollateralError, EvidenceError, PolicyError
from tests._inproc import InProcessServer, inprocess_server
from tests.attestation._snp_nitro_forge import (
    NitroChain,
    SnpChain,
    build_snp_report,
    make_nitro_payload,
    make_test_nitro_chain,
    make_test_snp_chain,
    sign_cose_sign1,
    sign_snp_report,
)
from tests.e2e._dcap_forge import HEADER_LEN, REPORT_DATA_AT, DcapTestPki, Template
from tests.tee.emulation import ConfigfsTsmEmulation, FakeNsm, GramineAttestationFs, cert_table

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp.onnx"

# GHCB spec 4.1.8.1 certificate table GUIDs (VCEK, ASK, ARK).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes

# Inside the validity windows given in /work/shared/vectors/README.md.
DCAP_VECTOR_TIME = datetime(2025, 7, 1, tzinfo=UTC)
NITRO_VECTOR_TIME = datetime(2023, 9, 18, 15, 3, 31, tzinfo=UTC)

SNP_MEASUREMENT = bytes.fromhex("5e" * 48)
NITRO_PCRS = {i: bytes([0xA0 + i]) * 48 for i in (0, 1, 2, 3, 4)} | {8: bytes(48)}


# --- shared helpers ----------------------------------------------------------------------------


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def sealing_key_file(tmp_path: Path) -> Path:
    """The key a key broker would release to the TEE (TDX, SNP and Nitro have no sealing key)."""
    path = tmp_path / "sealing.key"
    path.write_bytes(bytes(range(32)))
    return path


def no_network(evidence: bytes) -> Mapping[str, bytes]:
    """A collateral provider that must never be asked: the device supplied everything."""
    raise AssertionError("the backend tried to fetch collateral")


def mlp_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "x": rng.standard_normal((3, 8)).astype(np.float32),
        "scale": np.array([1.5], np.float32),
    }


def reference(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(MLP), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def upload_and_run(conn: Connection) -> None:
    """Upload the fixture model as the owner, run it, compare with in-process onnxruntime."""
    info = conn.upload_model(MLP, name="mlp-tee")
    feeds = mlp_feeds()
    want = reference(feeds)
    got = conn.run_model(info.model_id, feeds)
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)


def assert_authentic_but_unbound(server: InProcessServer, vector: bytes, at: datetime) -> Policy:
    """The evidence the server hands out is the real vector, byte for byte, and it is authentic
    at ``at`` against the pinned vendor root; returns a policy made from its own claims (so a
    refusal under that policy can only come from the binding)."""
    evidence, cert = fetch_evidence(server.url, None, 10)
    assert evidence.evidence == vector
    claims: Claims = verify_evidence(evidence, at=at)  # pinned root, no binding, no policy
    assert claims.report_data[:32] != report_data_for(cert)[:32]
    policy = Policy({evidence.kind: kind_module(evidence.kind).KindPolicy.from_claims(claims)})
    policy.check(claims)
    return policy


# --- producers that replay (the report_data check switched off, test only) ----------------------


class ReplayingTsmBackend(ConfigfsTsmBackend):
    """configfs-tsm producer minus its report_data check: what a replaying operator would run."""

    def _check_report_data(self, outblob: bytes, report_data: bytes) -> None:
        return None


class ReplayingGramineBackend(GramineSgxBackend):
    """Gramine producer minus its REPORTDATA check (same device I/O, same collateral)."""

    def get_evidence(self, report_data: bytes) -> Evidence:
        with self._lock:
            quote = self._quote(report_data)
        return Evidence(kind=self.kind, evidence=quote, collateral=collect(self._collateral, quote))


class ReplayingNitroBackend(NitroBackend):
    """Nitro producer minus its user_data check (same NSM calls)."""

    def get_evidence(self, report_data: bytes) -> Evidence:
        with self._lock:
            document = self._document(report_data)
        return Evidence(kind=self.kind, evidence=document)


def assert_producer_refuses_to_start(tmp_path: Path, backend: TeeBackend) -> None:
    """The unmodified producer checks report_data at start-up, so the server never comes up."""
    with (
        pytest.raises(BackendUnavailable, match="not the requested"),
        inprocess_server(tmp_path / "refused", backend, demo_model=False),
    ):
        pytest.fail("the server started on a device that replays evidence")


# --- SEV-SNP -----------------------------------------------------------------------------------


@pytest.fixture
def snp_vector(vectors: Path) -> tuple[bytes, bytes]:
    """(the real report, its real GHCB certificate table: VCEK, ASK and ARK of Milan)."""
    report = (vectors / "snp" / "attestation.bin").read_bytes()
    vcek = (vectors / "snp" / "vcek.testcer").read_bytes()
    ask, ark = x509.load_pem_x509_certificates((vectors / "snp" / "ask_ark_milan.pem").read_bytes())
    table = cert_table([(VCEK_GUID, vcek), (ASK_GUID, der(ask)), (ARK_GUID, der(ark))])
    return report, table


def test_snp_replayed_real_report_is_refused_by_the_client_binding(
    tmp_path: Path, snp_vector: tuple[bytes, bytes]
) -> None:
    """A real SNP report (and its real AMD certificates) replayed by the device: the honest
    producer refuses to start; a replaying server gets through TLS, and its evidence verifies
    against the pinned AMD ARK today (the VCEK is valid until 2029), but ``connect`` refuses it
    with BindingError because report_data does not carry our certificate's digest."""
    report, table = snp_vector
    fs = ConfigfsTsmEmulation(tmp_path / "tsm", "sev_guest", lambda rd: report, auxblob=table)
    key = sealing_key_file(tmp_path)
    honest = ConfigfsTsmBackend(
        "sev-snp", tsm_root=fs.root, fs=fs, collateral=no_network, sealing_key_file=key
    )
    assert_producer_refuses_to_start(tmp_path, honest)

    replaying = ReplayingTsmBackend(
        "sev-snp", tsm_root=fs.root, fs=fs, collateral=no_network, sealing_key_file=key
    )
    with inprocess_server(tmp_path / "data", replaying, demo_model=False) as server:
        policy = assert_authentic_but_unbound(server, report, datetime.now(UTC))
        with pytest.raises(BindingError, match="not the one the snp evidence binds"):
            connect(server.url, policy, token=server.owner_token)


def snp_device(tmp_path: Path, chain: SnpChain) -> ConfigfsTsmEmulation:
    """configfs-tsm whose 'firmware' signs a real-format report over each inblob with the test
    VCEK, and whose auxblob carries the test VCEK/ASK/ARK like a host's certificate table."""

    def outblob(report_data: bytes) -> bytes:
        unsigned = build_snp_report(
            report_data=report_data,
            measurement=SNP_MEASUREMENT,
            chip_id=chain.chip_id,
            tcb=chain.tcb,
            product=chain.product,
        )
        return sign_snp_report(unsigned, chain.vcek_key)

    table = cert_table(
        [(VCEK_GUID, der(chain.vcek)), (ASK_GUID, der(chain.ask)), (ARK_GUID, chain.ark_der)]
    )
    return ConfigfsTsmEmulation(tmp_path / "tsm", "sev_guest", outblob, auxblob=table)


def test_snp_end_to_end_with_a_test_amd_chain(tmp_path: Path) -> None:
    """``--tee sev-snp`` on emulated configfs-tsm, evidence signed by a test VCEK under a test
    ARK: the SDK attests (trust_roots = test ARK, policy pinning the measurement), uploads and
    runs a model. Without the test ARK (pinned AMD roots) or with another measurement: refused."""
    chain = make_test_snp_chain()
    fs = snp_device(tmp_path, chain)
    backend = create_backend(
        "sev-snp",
        tmp_path / "data",
        tsm_root=fs.root,
        fs=fs,
        collateral=no_network,
        sealing_key_file=sealing_key_file(tmp_path),
    )
    policy = {"snp": {"measurement": SNP_MEASUREMENT.hex(), "vmpl": 0}}
    roots = {"snp": [chain.ark_der]}
    with inprocess_server(tmp_path / "data", backend, demo_model=False) as server:
        with connect(server.url, policy, token=server.owner_token, trust_roots=roots) as conn:
            assert conn.claims.kind == "snp"
            assert conn.claims.measurements["measurement"] == SNP_MEASUREMENT.hex()
            assert conn.claims.report_data[:32] == report_data_for(conn.certificate_der)[:32]
            upload_and_run(conn)

        with pytest.raises(EvidenceError, match="is not the pinned AMD root"):
            connect(server.url, policy, token=server.owner_token)
        other = {"snp": {"measurement": "ab" * 48}}
        with pytest.raises(PolicyError, match=r"policy mismatch on snp\.measurement") as info:
            connect(server.url, other, token=server.owner_token, trust_roots=roots)
        assert SNP_MEASUREMENT.hex() in str(info.value) and "ab" * 48 in str(info.value)


def test_snp_client_brings_its_own_collateral(tmp_path: Path) -> None:
    """A host that gives the guest no certificate table and a server with no AMD KDS access:
    the server's evidence arrives without collateral, so the SDK refuses it (CollateralError)
    unless the client supplies the VCEK and chain itself (``collateral_source``)."""
    chain = make_test_snp_chain()
    device = snp_device(tmp_path, chain)
    bare = ConfigfsTsmEmulation(tmp_path / "tsm-bare", "sev_guest", device.make_outblob)
    backend = create_backend(
        "sev-snp",
        tmp_path / "data",
        tsm_root=bare.root,
        fs=bare,
        collateral=lambda evidence: {},
        sealing_key_file=sealing_key_file(tmp_path),
    )
    policy = {"snp": {"measurement": SNP_MEASUREMENT.hex()}}
    roots = {"snp": [chain.ark_der]}
    seen: list[str] = []

    def own_kds(evidence: Evidence) -> Mapping[str, bytes]:
        seen.append(evidence.kind)
        ark = x509.load_der_x509_certificate(chain.ark_der)
        return {"vcek": der(chain.vcek), "chain": pem(chain.ask) + pem(ark)}

    with inprocess_server(tmp_path / "data", backend, demo_model=False) as server:
        with pytest.raises(CollateralError):
            connect(server.url, policy, trust_roots=roots)
        with connect(
            server.url, policy, token=server.owner_token, trust_roots=roots,
            collateral_source=own_kds,
        ) as conn:  # fmt: skip
            assert conn.claims.kind == "snp" and seen == ["snp"]
            upload_and_run(conn)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


# --- AWS Nitro ---------------------------------------------------------------------------------


@pytest.fixture
def nsm_device(tmp_path: Path) -> Path:
    path = tmp_path / "nsm"
    path.write_bytes(b"")
    return path


def test_nitro_replayed_real_document_is_refused_by_the_client_binding(
    tmp_path: Path, vectors: Path, nsm_device: Path
) -> None:
    """The real Nitro document (bound to another TLS key's SubjectPublicKeyInfo) replayed by the
    NSM: the honest producer refuses to start; from a replaying server the document verifies
    against the pinned AWS root at its own time, but ``attest`` raises BindingError."""
    doc = base64.b64decode((vectors / "nitro" / "valid-attestation-doc-base64").read_bytes())
    nsm = FakeNsm(nsm_device, lambda user_data: doc)
    key = sealing_key_file(tmp_path)
    honest = NitroBackend(nsm, device=nsm_device, sealing_key_file=key)
    assert_producer_refuses_to_start(tmp_path, honest)

    replaying = ReplayingNitroBackend(nsm, device=nsm_device, sealing_key_file=key)
    with inprocess_server(tmp_path / "data", replaying, demo_model=False) as server:
        policy = assert_authentic_but_unbound(server, doc, NITRO_VECTOR_TIME)
        with pytest.raises(BindingError, match="not the one the nitro evidence binds"):
            attest(server.url, policy, at=NITRO_VECTOR_TIME)


def nitro_document(chain: NitroChain) -> Callable[[bytes | None], bytes]:
    """What the NSM would answer: a COSE_Sign1 document over the requested user_data, signed
    now by the test leaf, with the test root and intermediate in its cabundle."""

    def make(user_data: bytes | None) -> bytes:
        payload = make_nitro_payload(
            chain, user_data=user_data, pcrs=NITRO_PCRS, timestamp=datetime.now(UTC)
        )
        return sign_cose_sign1(payload, chain.leaf_key)

    return make


def test_nitro_end_to_end_with_a_test_root(tmp_path: Path, nsm_device: Path) -> None:
    """``--tee nitro`` with an emulated NSM signing real-format documents under a test root:
    the SDK attests (trust_roots = test root, policy pinning PCR0/1/2), uploads and runs a
    model. Without the test root (pinned AWS root G1) or with another PCR0: refused."""
    chain = make_test_nitro_chain()
    nsm = FakeNsm(nsm_device, nitro_document(chain))
    backend = create_backend(
        "nitro",
        tmp_path / "data",
        nsm=nsm,
        device=nsm_device,
        sealing_key_file=sealing_key_file(tmp_path),
    )
    pcrs = {f"pcr{i}": NITRO_PCRS[i].hex() for i in (0, 1, 2)}
    policy: dict[str, Any] = {"nitro": pcrs}
    roots = {"nitro": [chain.root_der]}
    with inprocess_server(tmp_path / "data", backend, demo_model=False) as server:
        with connect(server.url, policy, token=server.owner_token, trust_roots=roots) as conn:
            assert conn.claims.kind == "nitro" and not conn.claims.debug
            assert conn.claims.measurements["pcr0"] == NITRO_PCRS[0].hex()
            assert conn.claims.report_data == nsm.requests[-1]["Attestation"]["user_data"]
            upload_and_run(conn)

        with pytest.raises(EvidenceError, match="is not a trusted root"):
            connect(server.url, policy, token=server.owner_token)
        other = {"nitro": {**pcrs, "pcr0": "cd" * 48}}
        with pytest.raises(PolicyError, match=r"policy mismatch on nitro\.pcr0") as info:
            connect(server.url, other, token=server.owner_token, trust_roots=roots)
        assert NITRO_PCRS[0].hex() in str(info.value)


# --- Intel TDX and SGX: replays of the real quotes ----------------------------------------------


def vector_collateral(path: Path) -> CollateralProvider:
    """A collateral provider serving the vector's own DCAP collateral (as a PCCS would)."""
    raw = path.read_bytes()
    json.loads(raw)  # the file is QuoteCollateralV3 JSON, served as is

    def provide(evidence: bytes) -> Mapping[str, bytes]:
        return {"dcap": raw}

    return provide


def test_tdx_replayed_real_quote_is_refused_by_the_client_binding(
    tmp_path: Path, vectors: Path
) -> None:
    """The real TDX quote v4 replayed by configfs-tsm, with its real collateral: the honest
    producer refuses to start; from a replaying server the quote verifies against the pinned
    Intel root inside its collateral window (``at`` = 2025-07-01), but ``attest`` raises
    BindingError."""
    quote = (vectors / "tdx" / "tdx_quote").read_bytes()
    provider = vector_collateral(vectors / "tdx" / "tdx_quote_collateral.json")
    fs = ConfigfsTsmEmulation(tmp_path / "tsm", "tdx_guest", lambda rd: quote)
    key = sealing_key_file(tmp_path)
    honest = ConfigfsTsmBackend(
        "tdx", tsm_root=fs.root, fs=fs, collateral=provider, sealing_key_file=key
    )
    assert_producer_refuses_to_start(tmp_path, honest)

    replaying = ReplayingTsmBackend(
        "tdx", tsm_root=fs.root, fs=fs, collateral=provider, sealing_key_file=key
    )
    with inprocess_server(tmp_path / "data", replaying, demo_model=False) as server:
        policy = assert_authentic_but_unbound(server, quote, DCAP_VECTOR_TIME)
        with pytest.raises(BindingError, match="not the one the tdx evidence binds"):
            attest(server.url, policy, at=DCAP_VECTOR_TIME)


@pytest.fixture
def gramine_replay(tmp_path: Path, vectors: Path) -> Iterator[tuple[bytes, GramineAttestationFs]]:
    quote = (vectors / "sgx" / "sgx_quote").read_bytes()
    with GramineAttestationFs(tmp_path / "attestation", lambda rd: quote) as device:
        yield quote, device


def test_sgx_replayed_real_quote_is_refused_by_the_client_binding(
    tmp_path: Path, vectors: Path, gramine_replay: tuple[bytes, GramineAttestationFs]
) -> None:
    """The real SGX quote v3 (REPORTDATA "Hello, world!") replayed by /dev/attestation, with its
    real collateral: the honest Gramine producer refuses to start; from a replaying server the
    quote verifies against the pinned Intel root at 2025-07-01 (and a policy made from its claims
    accepts it), but ``attest`` raises BindingError."""
    quote, device = gramine_replay
    provider = vector_collateral(vectors / "sgx" / "sgx_quote_collateral.json")
    assert_producer_refuses_to_start(tmp_path, GramineSgxBackend(device.root, provider))

    replaying = ReplayingGramineBackend(device.root, provider)
    with inprocess_server(tmp_path / "data", replaying) as server:
        policy = assert_authentic_but_unbound(server, quote, DCAP_VECTOR_TIME)
        with pytest.raises(BindingError, match="not the one the sgx evidence binds"):
            attest(server.url, policy, at=DCAP_VECTOR_TIME)


# --- Intel SGX and TDX: runs under a test DCAP PKI ------------------------------------------------

SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
TDX_MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a"
    "3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
)


def dcap_pki(vectors: Path, kind: str) -> DcapTestPki:
    return DcapTestPki(
        Template.load(
            vectors / kind / f"{kind}_quote", vectors / kind / f"{kind}_quote_collateral.json"
        )
    )


def test_sgx_end_to_end_with_a_test_dcap_pki(tmp_path: Path, vectors: Path) -> None:
    """``--tee gramine-sgx`` on the emulated /dev/attestation (FIFOs): each quote v3 is the real
    one re-signed over the written REPORTDATA under a test root CA (PCK chain with the real SGX
    extension, TCB info and QE identity signed by a test TCB signing key), and dcap-qvl's
    verify_with_root_ca accepts it with that root. The SDK attests (trust_roots = test root,
    policy pinning MRENCLAVE and allowing the real TCB status and advisories), uploads and runs
    a model. With the pinned Intel root or another MRENCLAVE: refused."""
    pki = dcap_pki(vectors, "sgx")
    collateral = pki.collateral(datetime.now(UTC))
    sgx_policy = {
        "mrenclave": SGX_MRENCLAVE,
        "allowed_tcb_status": ["ConfigurationAndSWHardeningNeeded"],
        "allowed_advisories": ["INTEL-SA-00289", "INTEL-SA-00615"],
    }
    roots = {"sgx": [pki.root_der]}
    with GramineAttestationFs(tmp_path / "attestation", pki.quote) as device:
        backend = create_backend(
            "gramine-sgx",
            tmp_path / "data",
            attestation_root=device.root,
            collateral=lambda quote: {"dcap": collateral},
        )
        with inprocess_server(tmp_path / "data", backend, demo_model=False) as server:
            with connect(
                server.url, {"sgx": sgx_policy}, token=server.owner_token, trust_roots=roots
            ) as conn:
                assert conn.claims.kind == "sgx"
                assert conn.claims.measurements["mrenclave"] == SGX_MRENCLAVE
                assert conn.claims.report_data == device.writes[-1]
                upload_and_run(conn)

            with pytest.raises(EvidenceError, match="does not end in the trusted root CA"):
                connect(server.url, {"sgx": sgx_policy}, token=server.owner_token)
            other = {"sgx": {**sgx_policy, "mrenclave": "ef" * 32}}
            with pytest.raises(PolicyError, match=r"policy mismatch on sgx\.mrenclave") as info:
                connect(server.url, other, token=server.owner_token, trust_roots=roots)
            assert SGX_MRENCLAVE in str(info.value)


def test_tdx_end_to_end_with_a_test_dcap_pki(tmp_path: Path, vectors: Path) -> None:
    """``--tee tdx`` on emulated configfs-tsm: each quote v4 is the real TD quote re-signed over
    the inblob under a test root CA (QE report certification data, type 6, around the test PCK
    chain), accepted by dcap-qvl with that root. The SDK attests (trust_roots = test root,
    policy pinning MRTD), uploads and runs a model. With the pinned Intel root or another MRTD:
    refused."""
    pki = dcap_pki(vectors, "tdx")
    collateral = pki.collateral(datetime.now(UTC))
    fs = ConfigfsTsmEmulation(tmp_path / "tsm", "tdx_guest", pki.quote)
    backend = create_backend(
        "tdx",
        tmp_path / "data",
        tsm_root=fs.root,
        fs=fs,
        collateral=lambda quote: {"dcap": collateral},
        sealing_key_file=sealing_key_file(tmp_path),
    )
    policy = {"tdx": {"mrtd": TDX_MRTD}}
    roots = {"tdx": [pki.root_der]}
    with inprocess_server(tmp_path / "data", backend, demo_model=False) as server:
        with connect(server.url, policy, token=server.owner_token, trust_roots=roots) as conn:
            assert conn.claims.kind == "tdx"
            assert conn.claims.measurements["mrtd"] == TDX_MRTD
            assert conn.claims.report_data[:32] == report_data_for(conn.certificate_der)[:32]
            upload_and_run(conn)

        with pytest.raises(EvidenceError, match="does not end in the trusted root CA"):
            connect(server.url, policy, token=server.owner_token)
        other = {"tdx": {"mrtd": "01" * 48}}
        with pytest.raises(PolicyError, match=r"policy mismatch on tdx\.mrtd") as info:
            connect(server.url, other, token=server.owner_token, trust_roots=roots)
        assert TDX_MRTD in str(info.value)


@pytest.mark.parametrize("kind", ["sgx", "tdx"])
def test_dcap_test_pki_is_trusted_only_as_given(vectors: Path, kind: str) -> None:
    """The re-signed quote verifies under its own test root only, and every byte counts: a
    REPORTDATA changed after signing, or another test root, is refused."""
    pki = dcap_pki(vectors, kind)
    now = datetime.now(UTC)
    rd = bytes(range(64))
    quote = pki.quote(rd)
    coll = {"dcap": pki.collateral(now)}
    claims = verify_evidence(Evidence(kind, quote, coll), at=now, roots=[pki.root_der])
    assert claims.report_data == rd
    at = HEADER_LEN + REPORT_DATA_AT[pki.template.version]
    tampered = quote[:at] + bytes([quote[at] ^ 1]) + quote[at + 1 :]
    with pytest.raises(EvidenceError):
        verify_evidence(Evidence(kind, tampered, coll), at=now, roots=[pki.root_der])
    other = dcap_pki(vectors, kind)
    with pytest.raises(EvidenceError, match="does not end in the trusted root CA"):
        verify_evidence(Evidence(kind, quote, coll), at=now, roots=[other.root_der])
