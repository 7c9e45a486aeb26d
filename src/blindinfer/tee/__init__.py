"""Evidence producers, one per TEE backend, selected with ``blindinfer serve --tee NAME``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from blindinfer.tee.base import BackendUnavailable, TeeBackend

__all__ = ["BACKENDS", "BackendUnavailable", "TeeBackend", "create_backend"]

# name -> (module, factory). Each factory takes the data directory and keyword options.
BACKENDS = {
    "simulation": "blindinfer.tee.simulation",
    "gramine-sgx": "blindinfer.tee.gramine",
    "tdx": "blindinfer.tee.configfs_tsm",
    "sev-snp": "blindinfer.tee.configfs_tsm",
    "nitro": "blindinfer.tee.nitro",
}


def create_backend(name: str, data_dir: Path, **options: Any) -> TeeBackend:
    """Instantiate a backend by its ``--tee`` name; BackendUnavailable if the device is absent."""
    try:
        modname = BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(
            f"unknown TEE backend {name!r}; choose one of {', '.join(BACKENDS)}"
        ) from None
    mod = importlib.import_module(modname)
    backend: TeeBackend = mod.create(name, data_dir, **options)
    return backend
