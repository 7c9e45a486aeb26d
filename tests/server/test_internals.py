"""Loud failure when a uvicorn or Python upgrade moves an internal the server relies on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import uvicorn

from blindinfer._server import _internals

SERVER = Path(__file__).resolve().parents[2] / "src" / "blindinfer" / "server"


def test_nothing_the_server_relies_on_has_moved() -> None:
    assert _internals.problems() == [], f"uvicorn {uvicorn.__version__}: update server/_internals"


def test_the_check_sees_a_missing_member(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = (*_internals.PROTOCOL_METHODS, "no_such_hook")
    monkeypatch.setattr(_internals, "PROTOCOL_METHODS", hooks)
    assert any("no_such_hook" in p for p in _internals.problems())


def test_only_the_fence_imports_private_internals() -> None:
    """uvicorn.protocols.* and asyncio.sslproto are imported in _internals.py and nowhere else."""
    offenders = []
    for path in SERVER.rglob("*.py"):
        if path.name == "_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.startswith(("uvicorn.protocols", "asyncio.sslproto")) for n in names):
                offenders.append(path.name)
    assert offenders == []
