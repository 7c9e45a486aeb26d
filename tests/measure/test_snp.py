"""`blindinfer measure snp` on a synthetic launch (our own OVMF, kernel, initrd, command line)
equals what sev-snp-measure's own CLI computes in a subprocess; every input changes it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from blindinfer import _measure
from blindinfer.attestation import Policy
from tests.measure import _ovmf
from tests.measure._helpers import measure

pytest.importorskip("sevsnpmeasure", reason="sev-snp-measure==0.0.13 is a dependency of measure")

CMDLINE = "console=ttyS0 root=/dev/vda1 blindinfer.release=1"


def _blob(label: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes (the kernel and initrd are only hashed)."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


@pytest.fixture
def launch(tmp_path: Path) -> dict[str, Path]:
    files = {
        "ovmf": (tmp_path / "OVMF.fd", _ovmf.build()),
        "kernel": (tmp_path / "vmlinuz", _blob("kernel", 300_000)),
        "initrd": (tmp_path / "initrd.img", _blob("initrd", 120_000)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {k: p for k, (p, _) in files.items()}


def _reference(*args: str | Path) -> str:
    """sev-snp-measure's own CLI, in its own process."""
    done = subprocess.run(
        [sys.executable, "-m", "sevsnpmeasure.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def _ours(*args: str | Path) -> str:
    result = measure("snp", *args)
    assert result.exit_code == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["kind"] == "snp"
    return lines["measurement"]


@pytest.mark.parametrize(
    ("vcpus", "vcpu_type"), [(1, "EPYC-v4"), (4, "EPYC-Milan"), (2, "EPYC-Genoa")]
)
def test_direct_boot_equals_sev_snp_measure(
    launch: dict[str, Path], vcpus: int, vcpu_type: str
) -> None:
    args: list[str | Path] = [
        "--ovmf", launch["ovmf"], "--kernel", launch["kernel"], "--initrd", launch["initrd"],
        "--append", CMDLINE, "--vcpus", str(vcpus), "--vcpu-type", vcpu_type,
    ]  # fmt: skip
    expected = _reference("--mode", "snp", *args)
    assert len(bytes.fromhex(expected)) == 48
    assert _ours(*args) == expected
    assert _ours(*args, "--mode", "snp") == expected


def test_firmware_only_launch_equals_sev_snp_measure(launch: dict[str, Path]) -> None:
    args: list[str | Path] = ["--ovmf", launch["ovmf"], "--vcpus", "2", "--vcpu-type", "EPYC-v4"]
    assert _ours(*args) == _reference("--mode", "snp", *args)


def test_each_input_changes_the_measurement(launch: dict[str, Path], tmp_path: Path) -> None:
    def digest(**change: object) -> str:
        params: dict[str, object] = {
            "ovmf": launch["ovmf"], "kernel": launch["kernel"], "initrd": launch["initrd"],
            "append": CMDLINE, "vcpus": 2, "vcpu_type": "EPYC-v4",
        }  # fmt: skip
        params.update(change)
        m = _measure.snp_measurement(**params)  # type: ignore[arg-type]
        return m.registers["measurement"]

    other_kernel = tmp_path / "vmlinuz-2"
    other_kernel.write_bytes(_blob("kernel", 300_000)[:-1] + b"\x00")
    other_ovmf = tmp_path / "OVMF-2.fd"
    other_ovmf.write_bytes(_ovmf.build(seed=2))
    base = digest()
    variants = {
        "vcpus": digest(vcpus=3),
        "vcpu_type": digest(vcpu_type="EPYC-Milan"),
        "append": digest(append=CMDLINE + " debug"),
        "kernel": digest(kernel=other_kernel),
        "initrd": digest(initrd=None),
        "ovmf": digest(ovmf=other_ovmf),
    }
    assert all(v != base for v in variants.values()), variants
    assert len(set(variants.values())) == len(variants)


def test_policy_pins_the_snp_measurement(launch: dict[str, Path], tmp_path: Path) -> None:
    policy = tmp_path / "snp.toml"
    args: list[str | Path] = [
        "--ovmf",
        launch["ovmf"],
        "--kernel",
        launch["kernel"],
        "--vcpus",
        "1",
    ]
    result = measure("snp", *args, "--vcpu-type", "EPYC-v4", "--policy-out", policy)
    assert result.exit_code == 0, result.stderr
    expected = _reference("--mode", "snp", *args, "--vcpu-type", "EPYC-v4")
    table = tomllib.loads(policy.read_text())
    assert table["snp"]["measurement"] == [expected]
    assert table["snp"]["allow_debug"] is False
    loaded = Policy.load(policy).kinds["snp"]
    assert loaded.measurement == [expected]  # type: ignore[attr-defined]


def test_firmware_without_the_ovmf_table_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.fd"
    junk.write_bytes(_blob("junk", 8192))
    result = measure("snp", "--ovmf", junk, "--vcpus", "1", "--vcpu-type", "EPYC-v4")
    assert result.exit_code == 1
    assert "sev-snp-measure refused" in result.stderr and "SEV_ES_RESET_BLOCK" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--append", "x"], "only with --kernel"),
        (["--vcpu-type", "Pentium"], "unknown vCPU type"),
        (["--mode", "seves"], "--mode must be one of"),
        (["--mode", "snp:svsm"], "needs --svsm"),
        (["--vcpus", "0"], "at least 1"),
        (["--guest-features", "zz"], "not an integer"),
    ],
)
def test_bad_launch_options_are_usage_errors(
    launch: dict[str, Path], extra: list[str], message: str
) -> None:
    base = {"--ovmf": str(launch["ovmf"]), "--vcpus": "1", "--vcpu-type": "EPYC-v4"}
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        base[key] = value
    result = measure("snp", *[x for kv in base.items() for x in kv])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr


def test_missing_artefact_is_named(tmp_path: Path) -> None:
    result = measure("snp", "--ovmf", tmp_path / "nope.fd", "--vcpus", "1", "--vcpu-type", "EPYC")
    assert result.exit_code == 1 and "nope.fd" in result.stderr
