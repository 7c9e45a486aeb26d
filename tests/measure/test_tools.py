"""SGX (Gramine) and Nitro measurements need their vendors' tools: without them `measure` exits
non-zero naming the tool; with stand-ins printing the tools' documented output, it is parsed.

Output formats reproduced by the stand-ins:
- ``gramine-sgx-sigstruct-view --output-format json``: gramine python/gramine-sgx-sigstruct-view
  (``json.dump(sig_readable, output, indent=4)``: mr_signer, mr_enclave, isv_prod_id, isv_svn,
  debug_enclave without --verbose; no final newline);
- ``nitro-cli describe-eif --eif-path``: the example output of the AWS Nitro Enclaves user guide
  (cmd-nitro-describe-eif), byte for byte, and the same with hex in place of "EXAMPLE".
"""

from __future__ import annotations

import json
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from tests.measure._helpers import measure

MRENCLAVE = "a3" * 32
MRSIGNER = "5c" * 32

# The AWS documentation's example, exactly (its PCR values are placeholders, not hex).
NITRO_DOC_EXAMPLE = """{
  "Measurements": {
    "HashAlgorithm": "Sha384 { ... }",
    "PCR0": "EXAMPLE59044e337c00068c2c033546641e37aa466b853ca486dd149f641f15071961db2a0827beccea9cade3EXAMPLE",
    "PCR1": "EXAMPLE7783d0c23167299fbe5a69622490a9bdf82e94a0a1a48b0e7c56130c0c1e6555de7c0aa3d7901fbc58EXAMPLE",
    "PCR2": "EXAMPLE4b51589e8374b7f695b4649d1f1e9b528b05ab75a49f9a0a4a1ec36be81280caab0486f660b9207ac0EXAMPLE"
  }
}
"""  # noqa: E501
NITRO_HEX = NITRO_DOC_EXAMPLE.replace("EXAMPLE", "abcdef0")


@pytest.fixture
def no_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def _tool(bin_dir: Path, name: str, body: str) -> None:
    """A stand-in executable (Python) placed first on PATH."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport json, sys\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def _install_gramine(bin_dir: Path, log: Path) -> None:
    # gramine-sgx-sign: record the argv, write the SIGSTRUCT where --sigfile says.
    _tool(
        bin_dir,
        "gramine-sgx-sign",
        f"open({str(log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "args = sys.argv[1:]\n"
        "open(args[args.index('--sigfile') + 1], 'wb').write(b'SIGSTRUCT')\n"
        "open(args[args.index('--output') + 1], 'w').write('# expanded')",
    )
    view = {
        "mr_signer": MRSIGNER,
        "mr_enclave": MRENCLAVE,
        "isv_prod_id": 0,
        "isv_svn": 0,
        "debug_enclave": False,
    }
    _tool(
        bin_dir,
        "gramine-sgx-sigstruct-view",
        "assert sys.argv[1:3] == ['--output-format', 'json'], sys.argv\n"
        f"json.dump({view!r}, sys.stdout, indent=4)",
    )


def test_sgx_without_gramine_names_the_tool(no_tools: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "blindinfer.manifest"
    manifest.write_text('libos.entrypoint = "/usr/bin/python3"\n')
    result = measure("sgx", "--manifest", manifest)
    assert result.exit_code == 1
    assert "gramine-sgx-sign not found on PATH" in result.stderr
    assert "gramine.readthedocs.io" in result.stderr
    sig = tmp_path / "blindinfer.sig"
    sig.write_bytes(b"\0" * 1808)
    result = measure("sgx", "--sig", sig)
    assert result.exit_code == 1 and "gramine-sgx-sigstruct-view not found" in result.stderr


def test_nitro_without_nitro_cli_names_the_tool(no_tools: Path, tmp_path: Path) -> None:
    eif = tmp_path / "blindinfer.eif"
    eif.write_bytes(b"\0" * 64)
    result = measure("nitro", "--eif", eif)
    assert result.exit_code == 1
    assert "nitro-cli not found on PATH" in result.stderr


def test_sgx_manifest_with_throwaway_key_pins_mrenclave_only(
    fake_bin: Path, tmp_path: Path
) -> None:
    log = tmp_path / "sign-args.json"
    _install_gramine(fake_bin, log)
    manifest = tmp_path / "blindinfer.manifest"
    manifest.write_text('libos.entrypoint = "/usr/bin/python3"\n')
    policy = tmp_path / "sgx.toml"
    result = measure("sgx", "--manifest", manifest, "--policy-out", policy, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["registers"] == {"mrenclave": MRENCLAVE}  # a throwaway key's MRSIGNER means nothing
    assert doc["inputs"]["isv_prod_id"] == 0 and doc["inputs"]["debug_enclave"] is False
    args = json.loads(log.read_text())
    assert args[args.index("--manifest") + 1] == str(manifest)
    assert "--key" in args and "--sigfile" in args
    assert tomllib.loads(policy.read_text())["sgx"]["mrenclave"] == [MRENCLAVE]
    assert "mrsigner" not in tomllib.loads(policy.read_text())["sgx"]


def test_sgx_with_release_key_or_sigstruct_pins_mrsigner_too(
    fake_bin: Path, tmp_path: Path
) -> None:
    log = tmp_path / "sign-args.json"
    _install_gramine(fake_bin, log)
    manifest = tmp_path / "blindinfer.manifest"
    manifest.write_text("")
    key = tmp_path / "enclave-key.pem"
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\n")
    result = measure("sgx", "--manifest", manifest, "--key", key, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["registers"] == {"mrenclave": MRENCLAVE, "mrsigner": MRSIGNER}
    args = json.loads(log.read_text())
    assert args[args.index("--key") + 1] == str(key)
    sig = tmp_path / "blindinfer.sig"
    sig.write_bytes(b"SIGSTRUCT")
    result = measure("sgx", "--sig", sig)
    assert result.exit_code == 0, result.stderr
    assert f"mrenclave: {MRENCLAVE}" in result.stdout and f"mrsigner: {MRSIGNER}" in result.stdout


def test_sgx_needs_exactly_one_input(tmp_path: Path) -> None:
    assert measure("sgx").exit_code == 2
    f = tmp_path / "x"
    f.write_text("")
    assert measure("sgx", "--manifest", f, "--sig", f).exit_code == 2


def test_failing_signer_is_reported(fake_bin: Path, tmp_path: Path) -> None:
    _install_gramine(fake_bin, tmp_path / "log")
    _tool(
        fake_bin,
        "gramine-sgx-sign",
        "sys.stderr.write('trusted file missing: /usr/lib/x\\n'); sys.exit(1)",
    )
    manifest = tmp_path / "m.manifest"
    manifest.write_text("")
    result = measure("sgx", "--manifest", manifest)
    assert result.exit_code == 1
    assert (
        "gramine-sgx-sign failed (exit 1)" in result.stderr
        and "trusted file missing" in result.stderr
    )


def test_nitro_documented_example_placeholders_are_refused(fake_bin: Path, tmp_path: Path) -> None:
    _tool(fake_bin, "nitro-cli", f"sys.stdout.write({NITRO_DOC_EXAMPLE!r})")
    eif = tmp_path / "image.eif"
    eif.write_bytes(b"eif")
    result = measure("nitro", "--eif", eif)
    assert result.exit_code == 1
    assert "PCR0" in result.stderr and "not 48 bytes of hex" in result.stderr


def test_nitro_pcrs_are_parsed_into_a_policy(fake_bin: Path, tmp_path: Path) -> None:
    _tool(
        fake_bin,
        "nitro-cli",
        "assert sys.argv[1:3] == ['describe-eif', '--eif-path'], sys.argv\n"
        f"sys.stdout.write({NITRO_HEX!r})",
    )
    eif = tmp_path / "image.eif"
    eif.write_bytes(b"eif")
    policy = tmp_path / "nitro.toml"
    result = measure("nitro", "--eif", eif, "--policy-out", policy, "--json")
    assert result.exit_code == 0, result.stderr
    regs = json.loads(result.stdout)["registers"]
    expected = json.loads(NITRO_HEX)["Measurements"]
    assert regs == {f"pcr{i}": expected[f"PCR{i}"] for i in (0, 1, 2)}
    table = tomllib.loads(policy.read_text())["nitro"]
    assert table["pcr0"] == [expected["PCR0"]] and table["allow_debug"] is False


def test_signed_eif_pins_pcr8(fake_bin: Path, tmp_path: Path) -> None:
    doc = json.loads(NITRO_HEX)
    doc["Measurements"]["PCR8"] = "12" * 48
    _tool(fake_bin, "nitro-cli", f"print(json.dumps({doc!r}, indent=2))")
    eif = tmp_path / "image.eif"
    eif.write_bytes(b"eif")
    result = measure("nitro", "--eif", eif, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["registers"]["pcr8"] == "12" * 48
