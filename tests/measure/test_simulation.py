"""`blindinfer measure simulation` equals what a real server of the same code reports; its policy
is accepted by that server and a policy one byte off is refused; source trees and wheels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

import blindinfer
from blindinfer import _measure
from blindinfer._client import attest, connect
from blindinfer._tee.simulation import code_measurement
from blindinfer.errors import PolicyError
from tests._server import ServerProcess, running_server
from tests.measure._helpers import PACKAGE, REPO, copy_package, measure

pytestmark = pytest.mark.filterwarnings("ignore::blindinfer.InsecureSimulationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("measure")) as srv:
        yield srv


def _flip_first_hex_digit(value: str) -> str:
    return ("1" if value[0] == "0" else "0") + value[1:]


def test_installed_package_equals_the_running_server(server: ServerProcess) -> None:
    claims, _ = attest(server.url, simulation_mode=True, judge_policy=False)
    result = measure("simulation", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "simulation"
    assert doc["registers"]["measurement"] == claims.measurements["measurement"]
    assert _measure.simulation_measurement().registers == {
        "measurement": claims.measurements["measurement"]
    }


def test_policy_out_is_accepted_and_one_byte_off_is_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    result = measure("simulation", "--policy-out", policy)
    assert result.exit_code == 0, result.stderr
    table = tomllib.loads(policy.read_text())
    assert set(table) == {"simulation"} and set(table["simulation"]) == {"measurement"}
    with connect(server.url, policy=policy, simulation_mode=True) as conn:
        assert conn.list_models()  # the demo model: the attested connection works

    table["simulation"]["measurement"] = [
        _flip_first_hex_digit(table["simulation"]["measurement"][0])
    ]
    flipped = tmp_path / "flipped.toml"
    flipped.write_text(tomli_w.dumps(table))
    with pytest.raises(PolicyError, match=r"simulation\.measurement"):
        connect(server.url, policy=flipped, simulation_mode=True)


def test_source_tree_equals_the_installed_package() -> None:
    # The .venv install is editable: the installed package IS this tree's src/blindinfer.
    assert Path(blindinfer.__file__).resolve().parent == PACKAGE
    installed = _measure.simulation_measurement().registers
    assert _measure.simulation_measurement(REPO).registers == installed
    assert _measure.simulation_measurement(PACKAGE).registers == installed
    assert _measure.simulation_measurement(REPO / "src").registers == installed
    assert installed["measurement"] == code_measurement().hex()


def test_one_byte_in_one_file_changes_the_measurement(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    before = _measure.simulation_measurement(package).registers["measurement"]
    assert before == code_measurement(package).hex()
    target = package / "_kinds.py"
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01
    target.write_bytes(bytes(data))
    after = _measure.simulation_measurement(package).registers["measurement"]
    assert after != before
    assert after == code_measurement(package).hex()  # the server of that tree would say so too


def test_an_added_module_changes_the_measurement(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    before = _measure.simulation_measurement(package).registers["measurement"]
    (package / "_extra.py").write_text("")
    assert _measure.simulation_measurement(package).registers["measurement"] != before


def test_a_wheel_measures_like_its_tree(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    wheel = tmp_path / "blindinfer-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path in sorted(package.rglob("*")):
            if path.is_file():
                z.write(path, "blindinfer/" + path.relative_to(package).as_posix())
        z.writestr("blindinfer-0.1.0.dist-info/METADATA", "Name: blindinfer\n")
    m = _measure.simulation_measurement(wheel)
    assert m.registers == _measure.simulation_measurement(package).registers
    assert [s.name for s in m.subjects] == [wheel.name]
    result = measure("simulation", "--source", wheel)
    assert result.exit_code == 0 and m.registers["measurement"] in result.stdout


def test_not_a_source_is_a_usage_error(tmp_path: Path) -> None:
    result = measure("simulation", "--source", tmp_path)
    assert result.exit_code == 2
    assert "not a blindinfer source" in result.stderr
    junk = tmp_path / "x.whl"
    junk.write_bytes(b"not a zip")
    result = measure("simulation", "--source", junk)
    assert result.exit_code == 1 and "cannot read wheel" in result.stderr


def test_a_built_wheel_measures_like_the_tree(tmp_path: Path) -> None:
    """The release artefact itself: `pip wheel` of a copy of this tree (offline, no isolation)."""
    pytest.importorskip("setuptools", reason="the build backend of pyproject.toml")
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    copy_package(tree / "src")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(tree)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("blindinfer-*.whl")
    assert (
        _measure.simulation_measurement(wheel).registers
        == _measure.simulation_measurement(tree).registers
    )
