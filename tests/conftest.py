"""Shared fixtures: the location of ../shared (real attestation vectors) beside the clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    env = os.environ.get("BLINDINFER_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """Directory of real attestation evidence (../shared/vectors); see its README."""
    path = shared_dir() / "vectors"
    if not path.is_dir():
        pytest.fail(f"attestation vectors not found at {path}; set BLINDINFER_SHARED")
    return path
