"""Key release on SEV-SNP: the report sent as the sev crate's serde JSON (Trustee's SnpEvidence).

The emulated sev-snp backend (configfs-tsm emulation: a real-format report over the written
inblob, signed by a test VCEK under a test ARK/ASK, the certificates in the auxblob) attests to
the KBS double, which rebuilds the report bytes from the JSON with its own decoder (ABI spec
layout) and verifies them with blindinfer's verifier under the test ARK. The golden test pins the
JSON of the real report in the shared vectors to values read off its bytes by hand.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blindinfer._keys import _jose, release_key
from blindinfer._keys.kbs import KbsSession, encode_primary_evidence, kbs_tee, snp_evidence
from blindinfer._tee import create_backend
from blindinfer._tee.base import TeeBackend
from blindinfer.attestation import Evidence, Policy, verify_evidence
from blindinfer.errors import BackendUnavailable
from tests.attestation._snp_nitro_forge import (
    SnpChain,
    build_snp_report,
    make_test_snp_chain,
    sign_snp_report,
)
from tests.keys.kbs_double import (
    KbsDouble,
    snp_collateral_from_cert_chain,
    snp_report_from_sev_json,
)
from tests.tee.emulation import ConfigfsTsmEmulation, cert_table

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "snp_vector_sev_json.json"
MEASUREMENT = bytes.fromhex("5e" * 48)
RESOURCE = "blindinfer/sealing-key/snp"
KEY = bytes(range(7, 39))
# GHCB spec 4.1.8.1 certificate table GUIDs (VCEK, ASK, ARK).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes
# Inside the real vector's VCEK validity (2022-09-24..2029-09-24).
VECTOR_TIME = datetime(2025, 6, 1, tzinfo=UTC)
TAMPERED = r"401.*signature does not verify with the VCEK"


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def chain() -> SnpChain:
    return make_test_snp_chain()


def snp_backend(tmp_path: Path, chain: SnpChain) -> TeeBackend:
    def outblob(report_data: bytes) -> bytes:
        unsigned = build_snp_report(
            report_data=report_data,
            measurement=MEASUREMENT,
            chip_id=chain.chip_id,
            tcb=chain.tcb,
            product=chain.product,
        )
        return sign_snp_report(unsigned, chain.vcek_key)

    table = cert_table(
        [(VCEK_GUID, der(chain.vcek)), (ASK_GUID, der(chain.ask)), (ARK_GUID, chain.ark_der)]
    )
    fs = ConfigfsTsmEmulation(tmp_path / "tsm", "sev_guest", outblob, auxblob=table)
    key_file = tmp_path / "bootstrap.key"
    key_file.write_bytes(bytes(32))

    def no_network(evidence: bytes) -> dict[str, bytes]:
        raise AssertionError("the backend tried to fetch collateral")

    return create_backend(
        "sev-snp",
        tmp_path / "data",
        tsm_root=fs.root,
        fs=fs,
        collateral=no_network,
        sealing_key_file=key_file,
    )


def double(chain: SnpChain, measurement: bytes = MEASUREMENT) -> KbsDouble:
    return KbsDouble(
        Policy.from_mapping({"snp": {"measurement": measurement.hex(), "vmpl": 0}}),
        {RESOURCE: KEY},
        roots={"snp": [chain.ark_der]},
    )


# --- the exchange ------------------------------------------------------------------------------


def test_snp_key_released_under_the_policy(tmp_path: Path, chain: SnpChain) -> None:
    backend = snp_backend(tmp_path, chain)
    assert kbs_tee(backend.kind) == "snp"
    with double(chain) as kbs:
        assert release_key(kbs.url, RESOURCE, backend, timeout=20) == KEY
        (att,) = kbs.attestations
        assert att["tee"] == "snp"
        assert att["claims"].kind == "snp"
        assert att["claims"].measurements["measurement"] == MEASUREMENT.hex()
        assert kbs.released == [RESOURCE]


def test_snp_refused_for_another_measurement(tmp_path: Path, chain: SnpChain) -> None:
    backend = snp_backend(tmp_path, chain)
    with double(chain, measurement=b"\xab" * 48) as kbs:
        with pytest.raises(
            BackendUnavailable, match=r"refused the attestation: 401.*snp\.measurement"
        ):
            release_key(kbs.url, RESOURCE, backend, timeout=20)
        assert kbs.released == []


def attestation(kbs: KbsDouble, backend: TeeBackend) -> tuple[KbsSession, dict[str, Any]]:
    session = KbsSession(kbs.url, context=None, timeout=20)
    nonce, alg = session.auth("snp")
    return session, session.attestation("snp", nonce, alg, backend, _jose.generate_key())


def test_snp_evidence_is_sent_as_sev_snp_evidence(tmp_path: Path, chain: SnpChain) -> None:
    backend = snp_backend(tmp_path, chain)
    with double(chain) as kbs:
        session, att = attestation(kbs, backend)
        primary = att["tee-evidence"]["primary_evidence"]
        assert set(primary) == {"attestation_report", "cert_chain"}
        assert [e["cert_type"] for e in primary["cert_chain"]] == ["VCEK", "ASK", "ARK"]
        assert bytes(primary["cert_chain"][0]["data"]) == der(chain.vcek)
        report = primary["attestation_report"]
        assert report["version"] == 3 and report["cpuid_fam_id"] == 0x19
        assert report["reported_tcb"] == {
            "fmc": None,
            "bootloader": 3,
            "tee": 0,
            "snp": 8,
            "microcode": 115,
        }
        assert report["launch_mit_vector"] is None  # version 3: no mitigation vectors
        json.dumps(att)  # plain JSON all through
        session.attest(att)


@pytest.mark.parametrize(
    ("field", "index"),
    [("measurement", 0), ("report_data", 63), ("chip_id", 5), ("host_data", 0)],
)
def test_snp_tampered_report_field_is_refused(
    tmp_path: Path, chain: SnpChain, field: str, index: int
) -> None:
    backend = snp_backend(tmp_path, chain)
    with double(chain) as kbs:
        session, att = attestation(kbs, backend)
        report = att["tee-evidence"]["primary_evidence"]["attestation_report"]
        report[field][index] ^= 1
        with pytest.raises(BackendUnavailable, match=TAMPERED):
            session.attest(att)
        assert kbs.attestations == []


def test_snp_tampered_tcb_and_policy_are_refused(tmp_path: Path, chain: SnpChain) -> None:
    backend = snp_backend(tmp_path, chain)
    for path in (("reported_tcb", "snp"), ("policy",), ("current", "minor")):
        with double(chain) as kbs:
            session, att = attestation(kbs, backend)
            node = att["tee-evidence"]["primary_evidence"]["attestation_report"]
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] += 1
            with pytest.raises(BackendUnavailable, match=TAMPERED):
                session.attest(att)


def test_snp_refused_when_the_pubkey_is_swapped(tmp_path: Path, chain: SnpChain) -> None:
    backend = snp_backend(tmp_path, chain)
    with double(chain) as kbs:
        session, att = attestation(kbs, backend)
        att["runtime-data"]["tee-pubkey"] = _jose.public_jwk(_jose.generate_key())
        with pytest.raises(
            BackendUnavailable, match=r"401.*REPORT_DATA is different from that in the snp"
        ):
            session.attest(att)


def test_snp_refused_without_the_test_root(tmp_path: Path, chain: SnpChain) -> None:
    backend = snp_backend(tmp_path, chain)
    kbs = KbsDouble(Policy.from_mapping({"snp": {"measurement": MEASUREMENT.hex()}}), {})
    with kbs, pytest.raises(BackendUnavailable, match=r"401.*not the pinned AMD root"):
        release_key(kbs.url, RESOURCE, backend, timeout=20)


# --- the encoding ------------------------------------------------------------------------------


def test_real_vector_json_matches_the_hand_derived_fields(vectors: Path) -> None:
    """sev serde JSON of the real (Milan, version 2) report against values read off its bytes."""
    raw = (vectors / "snp" / "attestation.bin").read_bytes()
    coll = {
        "vcek": (vectors / "snp" / "vcek.testcer").read_bytes(),
        "chain": (vectors / "snp" / "ask_ark_milan.pem").read_bytes(),
    }
    doc = snp_evidence(Evidence("snp", raw, coll))
    want = json.loads(FIXTURE.read_text())
    report = doc["attestation_report"]
    assert list(report) == want["field_order"]
    for name, value in want["numbers"].items():
        assert report[name] == value, name
    for name, value in want["objects"].items():
        assert report[name] == value, name
    for name, value in want["hex"].items():
        node = report
        for part in name.split("."):
            node = node[part]
        assert bytes(node).hex() == value, name
    assert [e["cert_type"] for e in doc["cert_chain"]] == want["cert_chain_types"]
    assert bytes(doc["cert_chain"][0]["data"]) == coll["vcek"]

    # The double's independent inverse gives back the exact signed bytes, which verify under the
    # pinned AMD root with the certificates carried in cert_chain.
    rebuilt = snp_report_from_sev_json(json.loads(json.dumps(report)))
    assert rebuilt == raw
    claims = verify_evidence(
        Evidence("snp", rebuilt, snp_collateral_from_cert_chain(doc["cert_chain"])),
        at=VECTOR_TIME,
        policy=None,
    )
    assert claims.measurements["measurement"] == want["hex"]["measurement"]


def _sign_with_mit_vectors(report: bytearray, chain: SnpChain) -> bytes:
    report[0x1F8:0x200] = (0x1122334455667788).to_bytes(8, "little")  # LAUNCH_MIT_VECTOR
    report[0x200:0x208] = (0x0102).to_bytes(8, "little")  # CURRENT_MIT_VECTOR
    return sign_snp_report(report, chain.vcek_key)


@pytest.mark.parametrize(("product", "version"), [("milan", 3), ("genoa", 4), ("turin", 5)])
def test_encoding_round_trips_through_the_independent_decoder(product: str, version: int) -> None:
    chain = make_test_snp_chain(product)
    unsigned = build_snp_report(
        chip_id=chain.chip_id, tcb=chain.tcb, product=product, version=version
    )
    if product == "genoa":
        unsigned[0x188:0x18B] = b"\x19\x11\x01"
    raw = (
        _sign_with_mit_vectors(unsigned, chain)
        if version == 5
        else sign_snp_report(unsigned, chain.vcek_key)
    )
    doc = encode_primary_evidence("snp", Evidence("snp", raw, chain.collateral()), b"")
    report = doc["attestation_report"]
    if product == "turin":
        assert report["reported_tcb"] == {
            "fmc": 1,
            "bootloader": 2,
            "tee": 3,
            "snp": 4,
            "microcode": 5,
        }
        assert report["launch_mit_vector"] == 0x1122334455667788
        assert report["current_mit_vector"] == 0x0102
    else:
        assert report["reported_tcb"]["fmc"] is None
        assert report["launch_mit_vector"] is None and report["current_mit_vector"] is None
    assert snp_report_from_sev_json(copy.deepcopy(report)) == raw


def test_no_collateral_means_no_cert_chain(chain: SnpChain) -> None:
    """Without a VCEK the chain is null: Trustee then fetches the VCEK from AMD's KDS."""
    raw = sign_snp_report(build_snp_report(chip_id=chain.chip_id, tcb=chain.tcb), chain.vcek_key)
    assert snp_evidence(Evidence("snp", raw))["cert_chain"] is None
    only_vcek = snp_evidence(Evidence("snp", raw, {"vcek": der(chain.vcek)}))["cert_chain"]
    assert [e["cert_type"] for e in only_vcek] == ["VCEK"]


def test_reports_the_sev_crate_cannot_decode_are_refused(chain: SnpChain) -> None:
    masked_v2 = build_snp_report(version=2, chip_id=bytes(64), tcb=chain.tcb)
    with pytest.raises(BackendUnavailable, match="masked CHIP_ID"):
        snp_evidence(Evidence("snp", sign_snp_report(masked_v2, chain.vcek_key)))
    unknown_cpu = build_snp_report(chip_id=chain.chip_id, tcb=chain.tcb)
    unknown_cpu[0x188:0x18B] = b"\x17\x31\x00"
    with pytest.raises(BackendUnavailable, match="family 0x17"):
        snp_evidence(Evidence("snp", sign_snp_report(unknown_cpu, chain.vcek_key)))
    with pytest.raises(BackendUnavailable, match="SEV-SNP evidence for the key broker"):
        snp_evidence(Evidence("snp", b"\x00" * 100))


def test_double_refuses_what_trustee_refuses(chain: SnpChain) -> None:
    raw = sign_snp_report(
        build_snp_report(chip_id=chain.chip_id, tcb=chain.tcb, version=2), chain.vcek_key
    )
    primary = snp_evidence(Evidence("snp", raw, chain.collateral()))
    with pytest.raises(ValueError, match=r"version 2 is not 3\.\.5"):
        KbsDouble._decode("snp", primary)
    bad = copy.deepcopy(primary)
    bad["attestation_report"]["bogus"] = 1
    with pytest.raises(ValueError, match="fields differ"):
        snp_report_from_sev_json(bad["attestation_report"])
    bad = copy.deepcopy(primary)
    bad["attestation_report"]["measurement"] = bad["attestation_report"]["measurement"][:47]
    with pytest.raises(ValueError, match="array of 48"):
        snp_report_from_sev_json(bad["attestation_report"])
