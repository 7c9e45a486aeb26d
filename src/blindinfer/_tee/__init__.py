"""Evidence producers, one per TEE backend, selected with ``blindinfer serve --tee NAME``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blindinfer import _kinds
from blindinfer._tee.base import TeeBackend
from blindinfer.errors import BackendUnavailable

__all__ = ["BackendUnavailable", "TeeBackend", "create_backend"]


def create_backend(name: str, data_dir: Path, **options: Any) -> TeeBackend:
    """Instantiate a backend by its ``--tee`` name; BackendUnavailable if the device is absent."""
    try:
        mod = _kinds.backend_module(name)
    except KeyError:
        raise BackendUnavailable(
            f"unknown TEE backend {name!r}; choose one of {_kinds.backend_names()}"
        ) from None
    backend: TeeBackend = mod.create(name, data_dir, **options)
    return backend
