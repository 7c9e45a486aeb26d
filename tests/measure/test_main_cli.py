"""`blindinfer measure` through the main command line, as a user runs it (a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer.main

from blindinfer import _measure
from blindinfer._cli import app


def _registered() -> bool:
    group = typer.main.get_command(app)
    return "measure" in getattr(group, "commands", {})


@pytest.mark.skipif(not _registered(), reason="`measure` is not registered in _cli.py yet")
def test_main_cli_measures_the_installed_package() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
    done = subprocess.run(
        [sys.executable, "-m", "blindinfer", "measure", "simulation", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["registers"] == _measure.simulation_measurement().registers
