"""The package's shape: a lean client install, one error tree, a small public surface."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import blindinfer
from blindinfer.errors import BlindInferError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "blindinfer"
# What the server extra brings; a client process must never import any of it.
SERVER_ONLY = ("onnx", "onnxruntime", "starlette", "uvicorn", "pydantic", "httpx", "google")
# Import name -> distribution, for the client-side modules' third-party imports.
DISTRIBUTIONS = {
    "numpy": "numpy",
    "cbor2": "cbor2",
    "cryptography": "cryptography",
    "dcap_qvl": "dcap-qvl",
    "httptools": "httptools",
    "tomli_w": "tomli-w",
    "typer": "typer",
    "rich": "rich",
}


def _client_modules() -> list[Path]:
    """Modules a `pip install blindinfer` (no extras) must be able to import."""
    skip = ("server", "engine", "storage", "tee", "collateral", "keys")
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0].lstrip("_") not in skip
    ]


def _top_level_imports(path: Path) -> set[str]:
    """Third-party names imported at module level (function-level imports are lazy on purpose)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n != "blindinfer" and n not in sys.stdlib_module_names}


def _core_dependencies() -> set[str]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = doc["project"]["dependencies"]
    return {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for d in deps}


def test_client_modules_import_only_core_dependencies() -> None:
    core = _core_dependencies()
    for path in _client_modules():
        for name in _top_level_imports(path):
            assert DISTRIBUTIONS.get(name) in core, f"{path.name} imports {name} at module level"


def test_core_dependencies_have_no_server_packages() -> None:
    core = _core_dependencies()
    assert not core & {"onnx", "onnxruntime", "starlette", "uvicorn", "pydantic", "httpx"}


def test_client_process_never_imports_the_server_stack() -> None:
    code = (
        "import sys, blindinfer, blindinfer.attestation\n"
        "from blindinfer import connect, Connection, Policy\n"
        "from blindinfer.attestation import verify_evidence, Evidence, Claims\n"
        "import blindinfer._cli\n"
        f"print(','.join(m for m in {SERVER_ONLY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def _all_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(blindinfer.__path__, "blindinfer.")]


def test_every_exception_is_in_the_one_tree() -> None:
    strays = []
    for name in _all_modules():
        if name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ != name or not issubclass(obj, Exception):
                continue
            if issubclass(obj, Warning):  # warnings are not errors
                continue
            if obj.__name__.startswith("_"):  # control flow inside one module, never raised out
                continue
            if not issubclass(obj, BlindInferError):
                strays.append(f"{name}.{obj.__name__}")
    assert strays == []


def test_public_errors_are_exported() -> None:
    from blindinfer import errors

    for name, obj in inspect.getmembers(errors, inspect.isclass):
        if issubclass(obj, BlindInferError) and name != "GenerationConflict":  # server-internal
            assert name in blindinfer.__all__, name


@pytest.mark.parametrize(
    "name",
    ["connect", "Connection", "Policy", "BlindInferError", "AttestationError", "ServerError"],
)
def test_public_surface(name: str) -> None:
    assert name in blindinfer.__all__
    assert getattr(blindinfer, name) is not None


def test_internals_are_private() -> None:
    """Everything below `blindinfer` but `attestation` (public) is an `_`-module."""
    public = {
        m.name
        for m in pkgutil.iter_modules(blindinfer.__path__)
        if not m.name.startswith("_") and m.name != "errors"
    }
    assert public == {"attestation"}
    from blindinfer import attestation

    assert set(attestation.__all__) >= {"verify_evidence", "Evidence", "Claims"}
    subs = {m.name for m in pkgutil.iter_modules(attestation.__path__)}
    assert {s for s in subs if not s.startswith("_")} == set()
