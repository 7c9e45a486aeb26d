"""The Confidential Containers local endpoints (api-server-rest double on 127.0.0.1)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blindinfer._keys import AttestationAgentEvidence, fetch_resource_cdh, release_key
from blindinfer._keys.kbs import fetch_resource
from blindinfer._tee import create_backend
from blindinfer.attestation import Policy, verify_evidence
from blindinfer.errors import BackendUnavailable
from tests.e2e._dcap_forge import DcapTestPki, Template
from tests.keys.cdh_double import ApiServerRestDouble
from tests.keys.kbs_double import KbsDouble

KEY = bytes(range(200, 232))
RESOURCE = "blindinfer/sealing-key/cdh"
TDX_MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a"
    "3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
)


def test_cdh_resource_plaintext_and_release_key(tmp_path: Path) -> None:
    seen: list[str] = []

    def resource(path: str) -> bytes:
        seen.append(path)
        if path == RESOURCE:
            return KEY
        raise RuntimeError("KBS resource Not Found (Error 404)")

    with ApiServerRestDouble(resource=resource, features="resource") as api:
        assert fetch_resource_cdh(RESOURCE, base=api.url, timeout=5) == KEY
        assert release_key("cdh", RESOURCE, None, timeout=5, cdh_base=api.url) == KEY
        assert api.requests[0] == f"/cdh/resource/{RESOURCE}"
        with pytest.raises(
            BackendUnavailable,
            match=r"could not get the resource a/b/c .*500 KBS resource Not Found",
        ):
            fetch_resource_cdh("a/b/c", base=api.url, timeout=5)
        assert seen == [RESOURCE, RESOURCE, "a/b/c"]
    with (
        ApiServerRestDouble(features="attestation") as api,
        pytest.raises(
            BackendUnavailable, match=r"does not serve resources: 404 Resource Feature Not Enabled"
        ),
    ):
        fetch_resource_cdh(RESOURCE, base=api.url, timeout=5)
    with pytest.raises(
        BackendUnavailable, match=r"confidential data hub resource request: cannot reach"
    ):
        fetch_resource_cdh(RESOURCE, base="http://127.0.0.1:9", timeout=2)


def test_cdh_backed_by_a_real_rcar_exchange(tmp_path: Path) -> None:
    """The CDH double does what the real CDH does: RCAR with the KBS, then serves plaintext."""
    sim = create_backend("simulation", tmp_path / "data")
    policy = Policy.from_mapping({"simulation": {"measurement": [sim.measurement.hex()]}})  # type: ignore[attr-defined]
    with (
        KbsDouble(policy, {RESOURCE: KEY.hex().encode()}) as kbs,
        ApiServerRestDouble(resource=lambda p: fetch_resource(kbs.url, p, sim, timeout=10)) as api,
    ):
        assert release_key("cdh", RESOURCE, None, timeout=10, cdh_base=api.url) == KEY


@pytest.fixture
def pki(vectors: Path) -> DcapTestPki:
    return DcapTestPki(
        Template.load(vectors / "tdx" / "tdx_quote", vectors / "tdx" / "tdx_quote_collateral.json")
    )


def aa_tdx(pki: DcapTestPki, *, honour_encoding: bool = True) -> ApiServerRestDouble:
    def evidence(report_data: bytes) -> dict[str, object]:
        return {"cc_eventlog": None, "quote": base64.b64encode(pki.quote(report_data)).decode()}

    api = ApiServerRestDouble(tee="tdx", evidence=evidence, features="attestation")
    return api


def test_attestation_agent_evidence_carries_the_exact_report_data(pki: DcapTestPki) -> None:
    collateral = pki.collateral(datetime.now(UTC))
    with aa_tdx(pki) as api:
        aa = AttestationAgentEvidence(base=api.url, timeout=10)  # tee from /info
        assert (aa.kind, aa.name, aa.insecure) == ("tdx", "coco-aa-tdx", False)
        rd = bytes(range(64))
        ev = aa.get_evidence(rd)
        assert (
            api.requests[-1].startswith("/aa/evidence?runtime_data=")
            and "encoding=base64" in api.requests[-1]
        )
        claims = verify_evidence(
            type(ev)(ev.kind, ev.evidence, {"dcap": collateral}),
            at=datetime.now(UTC),
            policy=Policy.from_mapping({"tdx": {"mrtd": TDX_MRTD}}),
            roots=[pki.root_der],
        )
        assert claims.report_data == rd
        with pytest.raises(BackendUnavailable, match=r"no sealing key"):
            aa.sealing_key()


def test_attestation_agent_evidence_released_a_key_through_the_kbs(pki: DcapTestPki) -> None:
    collateral = pki.collateral(datetime.now(UTC))
    kbs = KbsDouble(
        Policy.from_mapping({"tdx": {"mrtd": TDX_MRTD}}),
        {RESOURCE: KEY},
        roots={"tdx": [pki.root_der]},
        collateral=lambda ev: {"dcap": collateral},
    )
    with aa_tdx(pki) as api, kbs:
        aa = AttestationAgentEvidence("tdx", base=api.url, timeout=10)
        assert release_key(kbs.url, RESOURCE, aa, timeout=20) == KEY


def test_attestation_agent_refusals(pki: DcapTestPki) -> None:
    with (
        ApiServerRestDouble(tee="snp", evidence=lambda rd: {}, features="all") as api,
        pytest.raises(BackendUnavailable, match=r"sev crate's serde form"),
    ):
        AttestationAgentEvidence(base=api.url, timeout=5)
    with ApiServerRestDouble(features="resource") as api:
        with pytest.raises(BackendUnavailable, match=r"names no tee"):
            AttestationAgentEvidence(base=api.url, timeout=5)
        aa = AttestationAgentEvidence("tdx", base=api.url, timeout=5)
        with pytest.raises(
            BackendUnavailable,
            match=r"refused the evidence request: 404 Attestation Feature Not Enabled",
        ):
            aa.get_evidence(bytes(64))

    # an AA that ignores encoding=base64 (older api-server-rest) signs the text: caught
    def legacy(report_data: bytes) -> dict[str, object]:
        return {"cc_eventlog": None, "quote": base64.b64encode(pki.quote(b"x" * 64)).decode()}

    with (
        ApiServerRestDouble(tee="tdx", evidence=legacy) as api,
        pytest.raises(BackendUnavailable, match=r"does not carry the requested report_data"),
    ):
        AttestationAgentEvidence(base=api.url, timeout=5).get_evidence(bytes(64))
    with (
        ApiServerRestDouble(tee="tdx", evidence=lambda rd: {"quote": "!!"}) as api,
        pytest.raises(BackendUnavailable, match=r"not the expected JSON"),
    ):
        AttestationAgentEvidence(base=api.url, timeout=5).get_evidence(bytes(64))
    with (
        ApiServerRestDouble(
            tee="tdx", evidence=lambda rd: (_ for _ in ()).throw(OSError("tsm busy"))
        ) as api,
        pytest.raises(BackendUnavailable, match=r"refused the evidence request: 500 tsm busy"),
    ):
        AttestationAgentEvidence(base=api.url, timeout=5).get_evidence(bytes(64))


def test_coco_tdx_server_end_to_end(pki: DcapTestPki, tmp_path: Path) -> None:
    """``--tee coco-tdx --key-broker KBS``: the server's evidence comes from the attestation
    agent, its sealing key from the KBS after that evidence passed; the SDK then attests it."""
    import numpy as np

    from blindinfer import connect
    from blindinfer._tee.coco import create as create_coco
    from tests._inproc import inprocess_server

    collateral = pki.collateral(datetime.now(UTC))
    policy = Policy.from_mapping({"tdx": {"mrtd": TDX_MRTD}})
    kbs = KbsDouble(
        policy,
        {"default/blindinfer/sealing-key": KEY},
        roots={"tdx": [pki.root_der]},
        collateral=lambda ev: {"dcap": collateral},
    )
    with aa_tdx(pki) as api, kbs:
        backend = create_coco(
            "coco-tdx", tmp_path, aa_url=api.url, collateral=lambda raw: {"dcap": collateral}
        )
        with (
            inprocess_server(tmp_path / "d", backend, key_broker=kbs.url) as srv,
            connect(srv.url, {"tdx": {"mrtd": TDX_MRTD}}, trust_roots={"tdx": [pki.root_der]}) as c,
        ):
            assert c.claims.kind == "tdx"
            out = c.run_model("demo", np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))
            assert out["probabilities"].shape == (1, 3)
        assert kbs.released == ["default/blindinfer/sealing-key"]
    with pytest.raises(BackendUnavailable, match="no sealing key of its own"):
        backend.sealing_key()
