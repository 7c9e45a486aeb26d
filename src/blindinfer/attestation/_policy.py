"""Client policy: which TEE kinds and which exact code a client accepts.

A policy file is TOML with one table per TEE kind (``[simulation]``, ``[sgx]``, ``[tdx]``,
``[snp]``, ``[nitro]``). Evidence of a kind the policy has no table for is refused. Each table's
schema belongs to that kind's verifier module (its ``KindPolicy`` class, a ``TablePolicy``
that declares each key once with its parser); this module routes, loads and writes files and
derives parsing and writing from those declarations.

Every refusal names the field, the expected value(s) and the value found, so a user can tell a
misconfigured policy from an attack.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, Self, get_origin, get_type_hints

import tomli_w

from blindinfer import _kinds
from blindinfer.attestation._claims import Claims
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


# --- policy tables, declared once ----------------------------------------------------------------
#
# Each kind's ``KindPolicy`` is a frozen dataclass whose fields are annotated with their TOML
# parser: ``name: Annotated[type, parser or Spec] = default``. ``TablePolicy`` derives from that
# one declaration the known key set, ``from_dict`` (unknown keys refused with the known ones
# listed, each bad value refused as ``[kind] key <problem>``) and ``to_dict`` (every set value,
# so it round-trips through ``from_dict``). The dataclass default is the value of an absent key.


class _Invalid(Exception):
    """A parser's complaint about one value: ``problem`` completes "``[kind] key`` ..."."""

    def __init__(self, problem: str, sub: str | None = None) -> None:
        super().__init__(problem)
        self.problem, self.sub = problem, sub


Parser = Callable[[Any], Any]


@dataclass(frozen=True)
class Spec:
    """How one TOML key is read, when more than a parser is needed.

    ``requires``: the key is meaningless without that other key (a mask without its value);
    ``implied``: the value taken when ``requires`` is set and this key is not (mask: all ones).
    """

    parse: Parser
    requires: str | None = None
    implied: Any = None


_SPECS: dict[type, dict[str, Spec]] = {}


class TablePolicy:
    """Base of every ``KindPolicy``: parsing and writing derived from the field annotations."""

    kind: ClassVar[str]

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        """Key -> Spec, in declaration order (the order ``to_dict`` writes)."""
        found = _SPECS.get(cls)
        if found is None:
            found = {}
            for name, hint in get_type_hints(cls, include_extras=True).items():
                if get_origin(hint) is Annotated:
                    (meta,) = hint.__metadata__
                    found[name] = meta if isinstance(meta, Spec) else Spec(meta)
            _SPECS[cls] = found
        return found

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> Self:
        """Build from a TOML table; unknown keys or bad values raise ConfigError."""
        specs = cls.specs()
        unknown = set(table) - set(specs)
        if unknown:
            raise ConfigError(
                f"policy: unknown key(s) {sorted(unknown)} in [{cls.kind}]; known: {sorted(specs)}"
            )
        values: dict[str, Any] = {}
        for key, sp in specs.items():
            raw = table.get(key)
            if raw is None:
                if sp.requires is not None and table.get(sp.requires) is not None:
                    values[key] = sp.implied
                continue  # the dataclass default
            if sp.requires is not None and table.get(sp.requires) is None:
                raise ConfigError(f"policy: [{cls.kind}] {key} is set but {sp.requires} is not")
            try:
                values[key] = sp.parse(raw)
            except _Invalid as bad:
                name = f"{key}.{bad.sub}" if bad.sub else key
                raise ConfigError(f"policy: [{cls.kind}] {name} {bad.problem}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The TOML table: every value that is set (round-trips through ``from_dict``)."""
        out: dict[str, Any] = {}
        for key in self.specs():
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


# Parsers. Each returns the Python value or raises _Invalid with the problem.


def hex_values(*sizes: int) -> Parser:
    """One hex string or a list of them, lower-cased; each ``sizes`` bytes long (any if none)."""

    def parse(raw: Any) -> list[str]:
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _Invalid(f"must be a hex string or a list of hex strings, got {raw!r}")
        for v in values:
            try:
                n = len(bytes.fromhex(v))
            except ValueError:
                raise _Invalid(f"value {v!r} is not hex") from None
            if sizes and n not in sizes:
                want = " or ".join(map(str, sizes)).replace(" or ", ", ", len(sizes) - 2)
                raise _Invalid(f"must be {want} bytes, {v!r} has {n}")
        return [v.lower() for v in values]

    return parse


def hex_bytes(nbytes: int) -> Parser:
    """Exactly one hex string of ``nbytes`` bytes, lower-cased."""

    def parse(raw: Any) -> str:
        try:
            ok = isinstance(raw, str) and len(bytes.fromhex(raw)) == nbytes
        except ValueError:
            ok = False
        if not ok:
            raise _Invalid(f"must be {nbytes} bytes of hex, got {raw!r}")
        return str(raw).lower()

    return parse


def flag(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise _Invalid(f"must be true or false, got {raw!r}")
    return raw


def uint(bits: int | None = None, *, hex_ok: bool = False) -> Parser:
    """A non-negative integer below 2**bits (unbounded if None); ``hex_ok``: "0x1f" / "1f" too."""

    def parse(raw: Any) -> int:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif hex_ok and isinstance(raw, str):
            try:
                value = int(raw, 16)
            except ValueError:
                value = None
        if value is None or value < 0 or (bits is not None and value >= 1 << bits):
            size = f"an integer of {bits} bits" if bits is not None else "a non-negative integer"
            raise _Invalid(f"must be {size}{' (or hex)' if hex_ok else ''}, got {raw!r}")
        return value

    return parse


def names(allowed: Sequence[str] | None = None, what: str = "names") -> Parser:
    """A string or a list of non-empty strings, each in ``allowed`` when given."""

    def parse(raw: Any) -> list[str]:
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise _Invalid(f"must be a list of strings, got {raw!r}")
        unknown = [v for v in values if allowed is not None and v not in allowed]
        if unknown:
            raise _Invalid(f"has unknown value(s) {unknown}; the {what} are {list(allowed or ())}")
        return list(values)

    return parse


def uint_table(keys: Sequence[str]) -> Parser:
    """A sub-table of non-negative integers under the given keys (each optional)."""
    item = uint()

    def parse(raw: Any) -> dict[str, int]:
        if not isinstance(raw, Mapping):
            raise _Invalid(f"must be a table {{{', '.join(f'{k}=' for k in keys)}}}, got {raw!r}")
        unknown = set(raw) - set(keys)
        if unknown:
            raise _Invalid(f"has unknown key(s) {sorted(unknown)}; known: {list(keys)}")
        out: dict[str, int] = {}
        for key in keys:
            if key in raw:
                try:
                    out[key] = item(raw[key])
                except _Invalid as bad:
                    raise _Invalid(bad.problem, sub=key) from None
        return out

    return parse
