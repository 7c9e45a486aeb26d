"""Shared helpers of the measure tests: the sub-app through typer's CliRunner."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner, Result

from blindinfer._cli_measure import app

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "blindinfer"


def measure(*args: str | Path) -> Result:
    """``blindinfer measure ARGS`` in process (stdout and stderr kept apart)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def copy_package(dest: Path) -> Path:
    """A copy of the package's sources (what the simulation measurement covers) under dest."""
    out = dest / "blindinfer"
    shutil.copytree(PACKAGE, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out
