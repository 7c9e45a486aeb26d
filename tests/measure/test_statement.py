"""The release statement (in-toto Statement v1): deterministic, round-trips into the same policy
as measuring directly, and `verify` refuses it when an artefact or a register does not match."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from blindinfer import _measure
from blindinfer.attestation import Policy
from blindinfer.errors import ConfigError
from tests.measure import _ovmf
from tests.measure._helpers import copy_package, measure

pytest.importorskip("sevsnpmeasure", reason="sev-snp-measure==0.0.13 is a dependency of measure")


@pytest.fixture
def release(tmp_path: Path) -> dict[str, Path]:
    """A release folder: sources (src/blindinfer), firmware, kernel, initrd."""
    src = tmp_path / "src"
    src.mkdir()
    copy_package(src)
    art = tmp_path / "artefacts"
    art.mkdir()
    (art / "OVMF.fd").write_bytes(_ovmf.build())
    (art / "vmlinuz").write_bytes(hashlib.sha512(b"kernel").digest() * 1000)
    (art / "initrd.img").write_bytes(hashlib.sha512(b"initrd").digest() * 500)
    return {"root": tmp_path, "src": src, "art": art, "statement": tmp_path / "release.json"}


SNP_ARGS = ["--vcpus", "2", "--vcpu-type", "EPYC-v4", "--append", "console=ttyS0"]


def _snp(art: Path) -> _measure.Measurement:
    return _measure.snp_measurement(
        art / "OVMF.fd", art / "vmlinuz", art / "initrd.img", "console=ttyS0", 2, "EPYC-v4"
    )


def _write_release(r: dict[str, Path]) -> None:
    a = r["art"]
    assert measure("simulation", "--source", r["src"], "--statement", r["statement"]).exit_code == 0
    snp: list[str | Path] = [
        "--ovmf",
        a / "OVMF.fd",
        "--kernel",
        a / "vmlinuz",
        "--initrd",
        a / "initrd.img",
    ]
    result = measure("snp", *snp, *SNP_ARGS, "--statement", r["statement"])
    assert result.exit_code == 0, result.stderr


def test_statement_shape_is_in_toto_v1(release: dict[str, Path]) -> None:
    _write_release(release)
    doc = json.loads(release["statement"].read_text())
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == _measure.PREDICATE_TYPE
    names = [s["name"] for s in doc["subject"]]
    assert names == sorted(names) and {"OVMF.fd", "vmlinuz", "initrd.img"} <= set(names)
    assert "blindinfer/_measure.py" in names
    by_name = {s["name"]: s["digest"]["sha256"] for s in doc["subject"]}
    kernel = release["art"] / "vmlinuz"
    assert by_name["vmlinuz"] == hashlib.sha256(kernel.read_bytes()).hexdigest()
    preds = doc["predicate"]["measurements"]
    assert set(preds) == {"simulation", "snp"}
    assert preds["snp"]["registers"]["measurement"] == _snp(release["art"]).registers["measurement"]
    assert preds["snp"]["inputs"]["vcpus"] == 2
    # Deterministic: sorted keys, and the same bytes when written again.
    text = release["statement"].read_text()
    assert text == json.dumps(doc, sort_keys=True, indent=2) + "\n"
    _write_release(release)
    assert release["statement"].read_text() == text


def test_round_trip_gives_the_direct_policy(release: dict[str, Path]) -> None:
    _write_release(release)
    direct = _measure.policy_of(
        [_measure.simulation_measurement(release["src"]), _snp(release["art"])]
    )
    back = _measure.policy_from_statement(release["statement"])
    assert back == direct
    out = release["root"] / "policy.toml"
    result = measure("policy", release["statement"], "--out", out)
    assert result.exit_code == 0, result.stderr
    assert Policy.load(out) == direct
    assert Policy.load(out).to_toml() == direct.to_toml()
    # One kind only.
    result = measure("policy", release["statement"], "--kind", "snp")
    assert result.exit_code == 0
    assert Policy.from_toml(result.stdout) == _snp(release["art"]).policy()
    assert measure("policy", release["statement"], "--kind", "tdx").exit_code == 2


def test_verify_accepts_the_untouched_release(release: dict[str, Path]) -> None:
    _write_release(release)
    result = measure(
        "verify", release["statement"], "--root", release["src"], "--root", release["art"], "--json"
    )
    assert result.exit_code == 0, result.stderr
    checks = json.loads(result.stdout)["checks"]
    assert any("simulation: measurement recomputed and equal" in c for c in checks)
    assert any("snp: measurement recomputed and equal" in c for c in checks)


def _roots(r: dict[str, Path]) -> list[str | Path]:
    return ["--root", r["src"], "--root", r["art"]]


def test_tampered_subject_digest_is_refused(release: dict[str, Path]) -> None:
    _write_release(release)
    doc = json.loads(release["statement"].read_text())
    for s in doc["subject"]:
        if s["name"] == "vmlinuz":
            s["digest"]["sha256"] = hashlib.sha256(b"another kernel").hexdigest()
    release["statement"].write_text(json.dumps(doc))
    result = measure("verify", release["statement"], *_roots(release))
    assert result.exit_code == 3
    assert "'vmlinuz'" in result.stderr and "sha256" in result.stderr


def test_changed_artefact_is_refused(release: dict[str, Path]) -> None:
    _write_release(release)
    source = release["src"] / "blindinfer" / "_kinds.py"
    source.write_bytes(source.read_bytes() + b"\n")
    result = measure("verify", release["statement"], *_roots(release))
    assert result.exit_code == 3 and "blindinfer/_kinds.py" in result.stderr


def test_forged_register_with_true_subjects_is_refused(release: dict[str, Path]) -> None:
    """Subjects intact, but the predicate claims another measurement: recomputed, refused."""
    _write_release(release)
    for kind in ("simulation", "snp"):
        doc = json.loads(release["statement"].read_text())
        regs = doc["predicate"]["measurements"][kind]["registers"]
        regs["measurement"] = ("0" if regs["measurement"][0] != "0" else "1") + regs["measurement"][
            1:
        ]
        forged = release["root"] / f"forged-{kind}.json"
        forged.write_text(json.dumps(doc))
        result = measure("verify", forged, *_roots(release))
        assert result.exit_code == 3, kind
        assert f"{kind}.measurement" in result.stderr


def test_missing_artefact_is_refused(release: dict[str, Path]) -> None:
    _write_release(release)
    (release["art"] / "initrd.img").unlink()
    result = measure("verify", release["statement"], *_roots(release))
    assert result.exit_code == 3 and "'initrd.img' not found" in result.stderr


def test_measuring_a_kind_again_replaces_it(release: dict[str, Path]) -> None:
    _write_release(release)
    a = release["art"]
    result = measure("snp", "--ovmf", a / "OVMF.fd", "--vcpus", "8", "--vcpu-type", "EPYC-v4",
                     "--statement", release["statement"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    st = _measure.read_statement(release["statement"])
    assert st.measurements["snp"].inputs["vcpus"] == 8
    assert "vmlinuz" not in {s.name for s in st.subjects}  # no longer an artefact of the release
    assert "simulation" in st.measurements


def test_dsse_envelope_is_read(release: dict[str, Path]) -> None:
    _write_release(release)
    payload = base64.b64encode(release["statement"].read_bytes()).decode()
    envelope = release["root"] / "release.dsse.json"
    envelope.write_text(
        json.dumps(
            {"payloadType": _measure.DSSE_PAYLOAD_TYPE, "payload": payload, "signatures": []}
        )
    )
    assert _measure.policy_from_statement(envelope) == _measure.policy_from_statement(
        release["statement"]
    )
    envelope.write_text(json.dumps({"payloadType": "text/plain", "payload": payload}))
    with pytest.raises(ConfigError, match="payloadType"):
        _measure.read_statement(envelope)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"_type": "https://in-toto.io/Statement/v0.1"}, "_type"),
        (
            {"_type": _measure.STATEMENT_TYPE, "predicateType": "https://slsa.dev/provenance/v1"},
            "predicateType",
        ),
        (
            {
                "_type": _measure.STATEMENT_TYPE,
                "predicateType": _measure.PREDICATE_TYPE,
                "subject": [],
                "predicate": {"measurements": {"snp": {"registers": {"measurement": "00"}}}},
            },
            "48 bytes",
        ),
        (
            {
                "_type": _measure.STATEMENT_TYPE,
                "predicateType": _measure.PREDICATE_TYPE,
                "subject": [],
                "predicate": {"measurements": {"quantum": {"registers": {}}}},
            },
            "unknown TEE kind",
        ),
        (
            {
                "_type": _measure.STATEMENT_TYPE,
                "predicateType": _measure.PREDICATE_TYPE,
                "subject": [],
                "predicate": {"measurements": {"snp": {"registers": {}, "subjects": ["x"]}}},
            },
            "missing from subject",
        ),
    ],
)
def test_not_a_statement_is_a_usage_error(
    tmp_path: Path, doc: dict[str, object], problem: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    result = measure("policy", path)
    assert result.exit_code == 2
    assert problem in result.stderr


def test_inputs_naming_no_subject_are_refused(release: dict[str, Path]) -> None:
    _write_release(release)
    doc = json.loads(release["statement"].read_text())
    doc["predicate"]["measurements"]["snp"]["inputs"]["kernel"] = "vmlinuz-other"
    release["statement"].write_text(json.dumps(doc))
    result = measure("verify", release["statement"], *_roots(release))
    assert result.exit_code == 3 and "snp: the statement's inputs" in result.stderr
