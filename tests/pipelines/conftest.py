"""Fixtures for the pipeline tests: converted bundles (cached by ``convert``) and in-process
pipelines built from them exactly as the server builds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from convert._driver import ensure

from blindinfer._pipelines.bundle import load_dir

_pipelines: dict[str, Any] = {}


@pytest.fixture(scope="session")
def bundle_dir() -> Callable[[str], Path]:
    """``bundle_dir("ocr")``: the converted bundle folder of a served model name."""
    return ensure


@pytest.fixture(scope="session")
def pipeline() -> Callable[[str], Any]:
    """``pipeline("ocr")``: that bundle loaded in process (one instance per test session)."""

    def get(name: str) -> Any:
        if name not in _pipelines:
            _pipelines[name] = load_dir(ensure(name))
        return _pipelines[name]

    return get


@pytest.fixture
def with_config(bundle_dir: Callable[[str], Path], tmp_path: Path) -> Callable[..., Path]:
    """``with_config("ocr", {"rec_batch": 0})``: a copy of that bundle folder whose manifest
    ``config`` has those keys changed (to check what a bad manifest gets)."""
    import json
    import shutil

    def make(name: str, config: dict[str, Any]) -> Path:
        folder = tmp_path / f"{name}-edited"
        shutil.copytree(bundle_dir(name), folder)
        doc = json.loads((folder / "pipeline.json").read_text())
        doc["config"].update(config)
        (folder / "pipeline.json").write_text(json.dumps(doc))
        return folder

    return make
