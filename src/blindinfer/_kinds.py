"""The one table of TEE kinds: evidence kind -> verifier, policy, collateral, producers.

Adding a TEE means a verifier module in ``attestation/``, a producer module in ``tee/`` and one
row here. The table holds module paths, not modules, so that importing it costs nothing and the
pure verifier side never imports a producer (or the network code behind collateral).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Kind:
    """One evidence kind.

    - ``verifier``: module with ``detect``, ``verify`` and ``KindPolicy`` (see ``attestation``);
    - ``backends``: ``serve --tee`` name -> producer module (with ``create(name, data_dir, **o)``);
    - ``collateral``: ``module:function`` building the default collateral provider, or None;
    - ``insecure``: no hardware behind it (simulation).
    """

    name: str
    verifier: str
    backends: dict[str, str] = field(default_factory=dict)
    collateral: str | None = None
    insecure: bool = False

    def verifier_module(self) -> ModuleType:
        return importlib.import_module(self.verifier)


_TABLE = (
    Kind(
        "simulation",
        "blindinfer.attestation._simulation",
        {"simulation": "blindinfer._tee.simulation"},
        insecure=True,
    ),
    Kind(
        "sgx",
        "blindinfer.attestation._sgx",
        {"gramine-sgx": "blindinfer._tee.gramine"},
        "blindinfer._collateral:dcap_provider",
    ),
    Kind(
        "tdx",
        "blindinfer.attestation._tdx",
        {"tdx": "blindinfer._tee.configfs_tsm", "coco-tdx": "blindinfer._tee.coco"},
        "blindinfer._collateral:dcap_provider",
    ),
    Kind(
        "snp",
        "blindinfer.attestation._snp",
        {"sev-snp": "blindinfer._tee.configfs_tsm"},
        "blindinfer._collateral:amd_provider",
    ),
    Kind("nitro", "blindinfer.attestation._nitro", {"nitro": "blindinfer._tee.nitro"}),
)

KINDS: dict[str, Kind] = {k.name: k for k in _TABLE}
# ``serve --tee`` name -> the kind of evidence that backend produces.
BACKENDS: dict[str, Kind] = {b: k for k in _TABLE for b in k.backends}


def kind(name: str) -> Kind:
    """The row for an evidence kind (KeyError for an unknown one)."""
    return KINDS[name]


def backend_module(backend: str) -> ModuleType:
    """The producer module for a ``serve --tee`` name (KeyError for an unknown one)."""
    return importlib.import_module(BACKENDS[backend].backends[backend])


def collateral_factory(name: str) -> Any | None:
    """The default collateral provider factory for a kind, or None when it needs none."""
    path = KINDS[name].collateral
    if path is None:
        return None
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def names() -> str:
    """The kinds, for messages: "simulation, sgx, tdx, snp, nitro"."""
    return ", ".join(KINDS)


def backend_names() -> str:
    return ", ".join(BACKENDS)
