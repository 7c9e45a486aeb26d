"""The kind registry: every row points at modules that exist and have the right shape."""

from __future__ import annotations

import pytest

from blindinfer import _kinds
from blindinfer.attestation import Policy
from blindinfer.errors import BackendUnavailable, ConfigError


@pytest.mark.parametrize("name", list(_kinds.KINDS))
def test_each_kind_has_a_verifier_and_a_policy(name: str) -> None:
    mod = _kinds.kind(name).verifier_module()
    assert callable(mod.detect) and callable(mod.verify)
    assert mod.KindPolicy.kind == name
    assert _kinds.kind(name).backends, f"{name} has no producer"


@pytest.mark.parametrize("backend", list(_kinds.BACKENDS))
def test_each_backend_has_a_producer(backend: str) -> None:
    assert callable(_kinds.backend_module(backend).create)


def test_collateral_only_where_the_kind_needs_it() -> None:
    needs = {n for n in _kinds.KINDS if _kinds.collateral_factory(n) is not None}
    assert needs == {"sgx", "tdx", "snp"}


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="use one of simulation, sgx, tdx, snp, nitro"):
        Policy.from_mapping({"sev": {}})
    from blindinfer._tee import create_backend

    with pytest.raises(BackendUnavailable, match="gramine-sgx"):
        create_backend("sgx-typo", __import__("pathlib").Path("/nonexistent"))
