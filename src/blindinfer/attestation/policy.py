"""Client policy: which TEE kinds and which exact code a client accepts.

A policy file is TOML with one table per TEE kind (``[simulation]``, ``[sgx]``, ``[tdx]``,
``[snp]``, ``[nitro]``). Evidence of a kind the policy has no table for is refused. Each table's
schema belongs to that kind's verifier module (its ``KindPolicy`` class); this module only
routes, loads and writes files.

Every refusal names the field, the expected value(s) and the value found, so a user can tell a
misconfigured policy from an attack.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import tomli_w

from blindinfer import _kinds
from blindinfer.attestation.claims import Claims
from blindinfer.errors import ConfigError, PolicyError


class KindPolicy(Protocol):
    """The policy for one TEE kind. Implemented by each verifier module."""

    kind: ClassVar[str]

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> KindPolicy:
        """Build from a TOML table; unknown keys or bad values raise ConfigError."""
        ...

    @classmethod
    def from_claims(cls, claims: Claims) -> KindPolicy:
        """The strictest policy that these claims satisfy (for ``blindinfer policy``)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The TOML table (round-trips through from_dict)."""
        ...

    def check(self, claims: Claims) -> None:
        """Raise PolicyError naming the field and both values when the claims do not satisfy it."""
        ...


@dataclass(frozen=True)
class Policy:
    """A set of per-kind policies. ``Policy()`` accepts nothing."""

    kinds: Mapping[str, KindPolicy] = field(default_factory=dict)

    def check(self, claims: Claims) -> None:
        pol = self.kinds.get(claims.kind)
        if pol is None:
            have = ", ".join(sorted(self.kinds)) or "none"
            raise PolicyError(
                f"the server presented {claims.kind} evidence but the policy has no "
                f"[{claims.kind}] table (it has: {have}); create one with "
                f"`blindinfer policy URL` and review it"
            )
        pol.check(claims)

    def to_toml(self) -> str:
        return tomli_w.dumps({k: p.to_dict() for k, p in self.kinds.items()})

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> Policy:
        kinds: dict[str, KindPolicy] = {}
        for kind, table in doc.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"policy: [{kind}] must be a table")
            try:
                row = _kinds.kind(kind)
            except KeyError:
                raise ConfigError(
                    f"policy: unknown TEE kind [{kind}]; use one of {_kinds.names()}"
                ) from None
            kinds[kind] = row.verifier_module().KindPolicy.from_dict(table)
        return cls(kinds)

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy is not valid TOML: {exc}") from exc
        return cls.from_mapping(doc)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
        return cls.from_toml(text)

    @classmethod
    def from_claims(cls, claims: Claims) -> Policy:
        policy = _kinds.kind(claims.kind).verifier_module().KindPolicy
        return cls({claims.kind: policy.from_claims(claims)})


def expect_hex_in(name: str, allowed: list[str] | None, actual: str) -> None:
    """Shared helper: ``allowed`` None means 'not pinned'; otherwise ``actual`` must be listed."""
    if allowed is None:
        return
    if actual.lower() not in {a.lower() for a in allowed}:
        want = allowed[0] if len(allowed) == 1 else f"one of {allowed}"
        raise PolicyError(f"policy mismatch on {name}: expected {want}, evidence has {actual}")


def hex_list(table: Mapping[str, Any], key: str, nbytes: int | None = None) -> list[str] | None:
    """Read a policy value that may be one hex string or a list of them; validate the length."""
    raw = table.get(key)
    if raw is None:
        return None
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"policy: {key} must be a hex string or a list of hex strings")
    out = []
    for v in values:
        try:
            b = bytes.fromhex(v)
        except ValueError:
            raise ConfigError(f"policy: {key} value {v!r} is not hex") from None
        if nbytes is not None and len(b) != nbytes:
            raise ConfigError(f"policy: {key} must be {nbytes} bytes, {v!r} has {len(b)}")
        out.append(v.lower())
    return out


def reject_unknown_keys(kind: str, table: Mapping[str, Any], known: set[str]) -> None:
    unknown = set(table) - known
    if unknown:
        raise ConfigError(
            f"policy: unknown key(s) {sorted(unknown)} in [{kind}]; known: {sorted(known)}"
        )
