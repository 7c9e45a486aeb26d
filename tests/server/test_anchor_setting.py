"""serve --store-anchor: the spec picks a TPM NV counter anchor; bad specs are refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindinfer._server.config import Settings
from blindinfer._server.runner import _anchor
from blindinfer._storage.tpm_anchor import TpmCounterAnchor
from blindinfer._tee import create_backend
from blindinfer.errors import ConfigError


def test_tpm_spec_gives_a_counter_anchor(tmp_path: Path) -> None:
    backend = create_backend("simulation", tmp_path)
    conf = Settings(data_dir=tmp_path, store_anchor="tpm:0x01800010@/dev/tpmrm7")
    anchor = _anchor(conf, backend)
    assert isinstance(anchor, TpmCounterAnchor)
    assert anchor.index == 0x01800010 and anchor.device == "/dev/tpmrm7"


@pytest.mark.parametrize("spec", ["tpm:", "tpm:zz", "file:/x", "0x01800010"])
def test_bad_specs_are_refused(tmp_path: Path, spec: str) -> None:
    backend = create_backend("simulation", tmp_path)
    with pytest.raises(ConfigError, match="store anchor"):
        _anchor(Settings(data_dir=tmp_path, store_anchor=spec), backend)


def test_one_anchor_only(tmp_path: Path) -> None:
    backend = create_backend("simulation", tmp_path)
    conf = Settings(data_dir=tmp_path, store_anchor="tpm:1", store_anchor_file=tmp_path / "a")
    with pytest.raises(ConfigError, match="not both"):
        _anchor(conf, backend)
