"""Expected measurements, recomputed from a deployment's artefacts (``blindinfer measure``).

A client should pin what the code it trusts *will* measure to, not what a server shows today.
Each function here takes the artefacts of one TEE kind and returns a :class:`Measurement`: the
registers a genuine server of those artefacts reports (named by that kind's policy keys, so they
become a policy table as they are), the artefacts themselves as in-toto subjects, and the other
inputs of the computation. A release publishes them as one in-toto Statement v1
(https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md) so anyone can make a
policy from the release, and recompute it, without asking a live server.

- simulation: the software TEE's code measurement over the package's ``.py`` files (the formula
  of ``blindinfer._tee.simulation.code_measurement``), from the installed package, a source tree
  or a wheel;
- snp: the SEV-SNP launch digest (SNP ABI spec, 8.17 SNP_LAUNCH_UPDATE) computed by the PyPI
  ``sev-snp-measure`` package from OVMF, kernel, initrd, command line, vCPU count and type;
- sgx: MRENCLAVE (and MRSIGNER) from Gramine's own signer (``gramine-sgx-sign`` then
  ``gramine-sgx-sigstruct-view``): the enclave layout depends on Gramine's loader, so only its
  tool computes it faithfully;
- nitro: PCR0/1/2 (PCR8 when signed) from ``nitro-cli describe-eif``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blindinfer._version import __version__
from blindinfer.attestation._policy import Policy
from blindinfer.errors import BlindInferError, ConfigError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://blindinfer.dev/measurements/v1"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
# The domain prefix of blindinfer._tee.simulation.code_measurement (same formula, see there).
SIMULATION_DOMAIN = b"blindinfer-code-measurement-v1\x00"
PACKAGE = "blindinfer"
TOOL_TIMEOUT_S = 600

GRAMINE_HOWTO = (
    "install Gramine >= 1.8 (https://gramine.readthedocs.io/en/stable/installation.html, e.g. "
    "`apt-get install gramine` from packages.gramineproject.io) on the build machine, or read the "
    "value with `make mrenclave` in src/blindinfer/deploy/gramine (docs/deploy-sgx-gramine.md)"
)
NITRO_HOWTO = (
    "install the AWS Nitro Enclaves CLI (`dnf install aws-nitro-enclaves-cli` on Amazon Linux, or "
    "build github.com/aws/aws-nitro-enclaves-cli); `nitro-cli build-enclave` prints the same "
    "PCRs (docs/deploy-nitro.md)"
)


class MeasureError(BlindInferError):
    """A measurement could not be computed (a tool missing or failing, an artefact unreadable)."""


class StatementMismatch(MeasureError):
    """A statement does not match its artefacts: a subject digest or a register differs."""


@dataclass(frozen=True)
class Subject:
    """One in-toto ResourceDescriptor: an artefact by name and sha256."""

    name: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.sha256}}


@dataclass(frozen=True)
class Measurement:
    """The registers one TEE kind's server of these artefacts reports, and how they were made.

    ``registers`` maps policy keys of ``[kind]`` (``measurement``, ``mrenclave``, ``pcr0`` ...) to
    lower-case hex; ``inputs`` are the other (JSON) parameters of the computation."""

    kind: str
    registers: Mapping[str, str]
    subjects: tuple[Subject, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def policy(self) -> Policy:
        return Policy.from_mapping({self.kind: {k: [v] for k, v in self.registers.items()}})

    def to_json(self) -> dict[str, Any]:
        return {
            "registers": dict(self.registers),
            "inputs": dict(self.inputs),
            "subjects": [s.name for s in self.subjects],
        }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise MeasureError(f"cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


def _subject(path: Path) -> Subject:
    return Subject(path.name, sha256_file(path))


# --- simulation ----------------------------------------------------------------------------------


def simulation_fold(files: Iterable[tuple[str, str]]) -> str:
    """The simulation measurement of (relative path, sha256 hex) pairs, in path order.

    Same arithmetic as ``blindinfer._tee.simulation.code_measurement`` (which hashes the files
    itself); kept here over digests so a statement's subjects alone recompute it."""
    h = hashlib.sha256(SIMULATION_DOMAIN)
    for rel, digest in sorted(files):
        h.update(rel.encode() + b"\x00" + bytes.fromhex(digest))
    return h.hexdigest()


def _package_dir(source: Path) -> Path:
    """The package directory of a source: the package itself, a repo root, or a folder above."""
    for candidate in (source, source / "src" / PACKAGE, source / PACKAGE):
        if (candidate / "__init__.py").is_file() and (candidate / "_tee").is_dir():
            return candidate
    raise ConfigError(
        f"{source} is not a blindinfer source: give the package directory, a repository root "
        f"(with src/{PACKAGE}), a folder holding {PACKAGE}/, or a wheel"
    )


def _tree_files(package: Path) -> list[tuple[str, str]]:
    # rglob("*.py") and posix relative paths: exactly the files code_measurement hashes.
    return [
        (p.relative_to(package).as_posix(), sha256_file(p)) for p in sorted(package.rglob("*.py"))
    ]


def _wheel_files(wheel: Path) -> list[tuple[str, str]]:
    prefix = PACKAGE + "/"
    try:
        with zipfile.ZipFile(wheel) as z:
            return [
                (n[len(prefix) :], hashlib.sha256(z.read(n)).hexdigest())
                for n in sorted(z.namelist())
                if n.startswith(prefix) and n.endswith(".py")
            ]
    except (OSError, zipfile.BadZipFile) as exc:
        raise MeasureError(f"cannot read wheel {wheel}: {exc}") from None


def simulation_measurement(source: Path | None = None) -> Measurement:
    """The simulation TEE measurement of the installed package (``source`` None), of a source
    tree (the package directory or a repository root) or of a wheel.

    Subjects: each ``.py`` file as ``blindinfer/<path>`` (for a tree) or the wheel file."""
    if source is not None and source.is_file():
        files = _wheel_files(source)
        if not files:
            raise ConfigError(f"{source} holds no {PACKAGE}/*.py files: not a blindinfer wheel")
        subjects: tuple[Subject, ...] = (_subject(source),)
        origin = "wheel"
    else:
        package = _package_dir(source) if source is not None else Path(__file__).resolve().parent
        files = _tree_files(package)
        subjects = tuple(Subject(f"{PACKAGE}/{rel}", digest) for rel, digest in files)
        origin = "installed" if source is None else "tree"
    return Measurement(
        kind="simulation",
        registers={"measurement": simulation_fold(files)},
        subjects=subjects,
        inputs={"source": origin, "files": len(files), "version": __version__},
    )


# --- SEV-SNP -------------------------------------------------------------------------------------

SNP_MODES = ("snp", "snp:svsm")


def _sevsnpmeasure() -> Any:
    try:
        from sevsnpmeasure import guest, sev_mode, vcpu_types, vmm_types
    except ImportError:
        raise MeasureError(
            "the SEV-SNP launch digest needs the sev-snp-measure package: "
            "pip install sev-snp-measure==0.0.13"
        ) from None
    return guest, sev_mode, vcpu_types, vmm_types


def snp_vcpu_types() -> list[str]:
    _, _, vcpu_types, _ = _sevsnpmeasure()
    return list(vcpu_types.CPU_SIGS)


def snp_measurement(
    ovmf: Path,
    kernel: Path | None,
    initrd: Path | None,
    append: str | None,
    vcpus: int,
    vcpu_type: str,
    mode: str = "snp",
    *,
    guest_features: int = 0x1,
    vmm_type: str = "QEMU",
    svsm: Path | None = None,
    ovmf_vars_size: int = 0,
) -> Measurement:
    """The SEV-SNP launch measurement (48 bytes) of a direct-boot (or firmware-only) guest.

    The arithmetic is sev-snp-measure's (``guest.calc_launch_digest``), with the same defaults as
    its CLI (guest features 0x1, QEMU). ``mode`` "snp:svsm" measures a Coconut-SVSM launch and
    needs ``svsm`` and ``ovmf_vars_size``."""
    guest, sev_mode, vcpu_types, vmm_types = _sevsnpmeasure()
    if mode not in SNP_MODES:
        raise ConfigError(f"--mode must be one of {list(SNP_MODES)}, got {mode!r}")
    if vcpus < 1:
        raise ConfigError(f"--vcpus must be at least 1, got {vcpus}")
    if vcpu_type not in vcpu_types.CPU_SIGS:
        raise ConfigError(f"unknown vCPU type {vcpu_type!r}; known: {list(vcpu_types.CPU_SIGS)}")
    if kernel is None and (initrd is not None or append):
        raise ConfigError("--initrd and --append are measured only with --kernel (direct boot)")
    if vmm_type not in vmm_types.VMMType.__members__:
        raise ConfigError(
            f"unknown VMM type {vmm_type!r}; known: {list(vmm_types.VMMType.__members__)}"
        )
    if mode == "snp:svsm" and (svsm is None or ovmf_vars_size <= 0):
        raise ConfigError("mode snp:svsm needs --svsm FILE and --ovmf-vars-size BYTES")
    files = [p for p in (ovmf, kernel, initrd, svsm) if p is not None]
    subjects = tuple(_subject(p) for p in files)  # also: every file exists and is readable
    try:
        digest = guest.calc_launch_digest(
            sev_mode.SevMode.from_str(mode),
            vcpus,
            vcpu_types.CPU_SIGS[vcpu_type],
            str(ovmf),
            str(kernel) if kernel else None,
            str(initrd) if initrd else None,
            append,
            guest_features,
            "",
            vmm_types.VMMType[vmm_type],
            False,
            str(svsm) if svsm else "",
            ovmf_vars_size,
        )
    except (RuntimeError, ValueError, AssertionError, OSError) as exc:
        raise MeasureError(
            f"sev-snp-measure refused the launch: {exc or type(exc).__name__}"
        ) from None
    inputs: dict[str, Any] = {
        "mode": mode,
        "vcpus": vcpus,
        "vcpu_type": vcpu_type,
        "guest_features": guest_features,
        "vmm_type": vmm_type,
        "ovmf": ovmf.name,
        "kernel": kernel.name if kernel else None,
        "initrd": initrd.name if initrd else None,
        "append": append,
        "svsm": svsm.name if svsm else None,
        "ovmf_vars_size": ovmf_vars_size,
        "tool": "sev-snp-measure",
    }
    return Measurement("snp", {"measurement": bytes(digest).hex()}, subjects, inputs)


# --- external tools (Gramine, nitro-cli) ---------------------------------------------------------


def _tool(name: str, howto: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MeasureError(f"{name} not found on PATH: {howto}")
    return path


def _run_tool(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MeasureError(f"{Path(argv[0]).name} could not run: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise MeasureError(
            f"{Path(argv[0]).name} failed (exit {done.returncode}): {' / '.join(tail)}"
        )
    return done.stdout


def _hex_field(doc: Mapping[str, Any], key: str, size: int, tool: str) -> str:
    value = doc.get(key)
    try:
        ok = isinstance(value, str) and len(bytes.fromhex(value)) == size
    except ValueError:
        ok = False
    if not ok:
        raise MeasureError(f"{tool} printed {key} = {value!r}, not {size} bytes of hex")
    return str(value).lower()


def _throwaway_sgx_key(path: Path) -> None:
    """An RSA-3072 key with exponent 3 (what SGX SIGSTRUCT demands): MRENCLAVE does not depend
    on the signer, so anyone can recompute it without the vendor's key (MRSIGNER then means
    nothing and is not pinned)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=3, key_size=3072)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def _sigstruct_view(sig: Path) -> dict[str, Any]:
    """``gramine-sgx-sigstruct-view --output-format json``: a JSON object with ``mr_enclave``,
    ``mr_signer`` (hex), ``isv_prod_id``, ``isv_svn`` (ints), ``debug_enclave`` (bool)."""
    view = _tool("gramine-sgx-sigstruct-view", GRAMINE_HOWTO)
    out = _run_tool([view, "--output-format", "json", str(sig)])
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise MeasureError(f"gramine-sgx-sigstruct-view printed no JSON: {out[:200]!r}") from None
    if not isinstance(doc, dict):
        raise MeasureError("gramine-sgx-sigstruct-view printed JSON that is not an object")
    return doc


def sgx_mrenclave(
    manifest: Path | None = None,
    *,
    sig: Path | None = None,
    key: Path | None = None,
    libpal: Path | None = None,
) -> Measurement:
    """MRENCLAVE (and MRSIGNER) of a Gramine enclave.

    With ``manifest`` (rendered by ``gramine-manifest``): ``gramine-sgx-sign`` hashes its trusted
    files and lays out the enclave in a temporary folder, then ``gramine-sgx-sigstruct-view`` reads
    the result; signed with ``key`` (the release key: MRSIGNER is pinned too) or with a throwaway
    key (MRENCLAVE only). With ``sig``: read an existing SIGSTRUCT (MRENCLAVE and MRSIGNER)."""
    if (manifest is None) == (sig is None):
        raise ConfigError(
            "give either --manifest FILE (recompute) or --sig FILE (read a SIGSTRUCT)"
        )
    inputs: dict[str, Any] = {"tool": "gramine"}
    if sig is not None:
        subjects: tuple[Subject, ...] = (_subject(sig),)
        doc = _sigstruct_view(sig)
        pin_signer = True
        inputs["sig"] = sig.name
    else:
        assert manifest is not None
        subjects = (_subject(manifest),)
        sign = _tool("gramine-sgx-sign", GRAMINE_HOWTO)
        _tool("gramine-sgx-sigstruct-view", GRAMINE_HOWTO)  # refuse before the long signing step
        with tempfile.TemporaryDirectory(prefix="blindinfer-sgx-") as tmp:
            work = Path(tmp)
            signing_key = key
            if signing_key is None:
                signing_key = work / "throwaway-key.pem"
                _throwaway_sgx_key(signing_key)
            out_sig = work / "enclave.sig"
            argv = [
                sign,
                "--manifest",
                str(manifest),
                "--output",
                str(work / "enclave.manifest.sgx"),
            ]
            argv += ["--key", str(signing_key), "--sigfile", str(out_sig)]
            if libpal is not None:
                argv += ["--libpal", str(libpal)]
            _run_tool(argv)
            doc = _sigstruct_view(out_sig)
        pin_signer = key is not None
        inputs["manifest"] = manifest.name
    registers = {"mrenclave": _hex_field(doc, "mr_enclave", 32, "gramine-sgx-sigstruct-view")}
    if pin_signer:
        registers["mrsigner"] = _hex_field(doc, "mr_signer", 32, "gramine-sgx-sigstruct-view")
    for name in ("isv_prod_id", "isv_svn", "debug_enclave"):
        if name in doc:
            inputs[name] = doc[name]
    return Measurement("sgx", registers, subjects, inputs)


NITRO_PCRS = ("PCR0", "PCR1", "PCR2")  # always printed by describe-eif
NITRO_SIGNED_PCR = "PCR8"  # printed only for a signed EIF


def nitro_pcrs(eif: Path) -> Measurement:
    """PCR0 (image), PCR1 (kernel and bootstrap), PCR2 (application) and, for a signed EIF, PCR8
    (signing certificate), as ``nitro-cli describe-eif --eif-path`` prints them."""
    cli = _tool("nitro-cli", NITRO_HOWTO)
    subjects = (_subject(eif),)
    out = _run_tool([cli, "describe-eif", "--eif-path", str(eif)])
    try:
        doc = json.loads(out)
        found = doc["Measurements"]
        if not isinstance(found, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise MeasureError(
            f"nitro-cli describe-eif printed no Measurements object: {out[:200]!r}"
        ) from None
    names = [*NITRO_PCRS, *([NITRO_SIGNED_PCR] if NITRO_SIGNED_PCR in found else [])]
    registers = {n.lower(): _hex_field(found, n, 48, "nitro-cli describe-eif") for n in names}
    inputs = {"tool": "nitro-cli", "eif": eif.name, "hash_algorithm": found.get("HashAlgorithm")}
    return Measurement("nitro", registers, subjects, inputs)


# --- policy --------------------------------------------------------------------------------------


def policy_of(measurements: Iterable[Measurement]) -> Policy:
    """One policy pinning every measurement's registers (one table per kind)."""
    tables: dict[str, dict[str, list[str]]] = {}
    for m in measurements:
        table = tables.setdefault(m.kind, {})
        for key, value in m.registers.items():
            values = table.setdefault(key, [])
            if value not in values:
                values.append(value)
    return Policy.from_mapping(tables)


def policy_text(policy: Policy, source: str) -> str:
    """The policy file: ``Policy.to_toml`` (what ``blindinfer policy`` writes) under a header."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    header = f"# blindinfer policy generated {stamp} by `blindinfer measure` from {source}\n"
    header += "# Pins the measurements recomputed from the artefacts; review before trusting it.\n"
    return header + policy.to_toml()


# --- in-toto statement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """An in-toto Statement v1 whose predicate lists each TEE kind's expected registers."""

    measurements: Mapping[str, Measurement]

    @property
    def subjects(self) -> list[Subject]:
        by_name: dict[str, Subject] = {}
        for m in self.measurements.values():
            for s in m.subjects:
                old = by_name.setdefault(s.name, s)
                if old.sha256 != s.sha256:
                    raise ConfigError(
                        f"two artefacts named {s.name!r} with different sha256 in one statement "
                        f"({old.sha256} and {s.sha256}); rename one"
                    )
        return [by_name[n] for n in sorted(by_name)]

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [s.to_json() for s in self.subjects],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "generator": {"name": PACKAGE, "version": __version__},
                "measurements": {k: m.to_json() for k, m in sorted(self.measurements.items())},
            },
        }

    def dumps(self) -> str:
        """Deterministic JSON: sorted keys, two-space indent, one final newline."""
        return json.dumps(self.to_json(), sort_keys=True, indent=2) + "\n"

    def merged(self, measurements: Iterable[Measurement]) -> Statement:
        """This statement with these kinds added (a kind measured again replaces the old one)."""
        out = dict(self.measurements)
        for m in measurements:
            out[m.kind] = m
        result = Statement(out)
        result.subjects  # noqa: B018 - refuses name clashes now, not when written
        return result

    def policy(self, kinds: Sequence[str] | None = None) -> Policy:
        chosen = list(kinds) if kinds else sorted(self.measurements)
        missing = [k for k in chosen if k not in self.measurements]
        if missing:
            raise ConfigError(
                f"the statement has no measurement for {missing}; "
                f"it has {sorted(self.measurements)}"
            )
        return policy_of(self.measurements[k] for k in chosen)


def _bad(problem: str) -> ConfigError:
    return ConfigError(f"not a blindinfer measurement statement: {problem}")


def _unwrap_dsse(doc: Any) -> Any:
    """Accept a DSSE envelope (what cosign / GitHub attestations sign) around the statement.

    Its signatures are NOT checked here: verify them with the signer's tool first."""
    if isinstance(doc, dict) and "payloadType" in doc and "payload" in doc:
        if doc["payloadType"] != DSSE_PAYLOAD_TYPE:
            raise _bad(f"DSSE payloadType is {doc['payloadType']!r}, not {DSSE_PAYLOAD_TYPE}")
        try:
            return json.loads(base64.b64decode(doc["payload"], validate=True))
        except (ValueError, TypeError):
            raise _bad("the DSSE payload is not base64 JSON") from None
    return doc


def _parse_measurement(kind: str, entry: Any, subjects: Mapping[str, Subject]) -> Measurement:
    if not isinstance(entry, dict) or not isinstance(entry.get("registers"), dict):
        raise _bad(f"predicate.measurements.{kind} has no registers object")
    registers = entry["registers"]
    if not all(isinstance(v, str) for v in registers.values()):
        raise _bad(f"predicate.measurements.{kind}.registers values must be hex strings")
    names = entry.get("subjects", [])
    if not isinstance(names, list) or any(n not in subjects for n in names):
        raise _bad(f"predicate.measurements.{kind}.subjects names artefacts missing from subject")
    inputs = entry.get("inputs", {})
    if not isinstance(inputs, dict):
        raise _bad(f"predicate.measurements.{kind}.inputs must be an object")
    m = Measurement(kind, dict(registers), tuple(subjects[n] for n in names), inputs)
    m.policy()  # unknown kind, unknown key or bad hex: refused here with the policy's message
    return m


def parse_statement(text: str) -> Statement:
    try:
        doc = _unwrap_dsse(json.loads(text))
    except json.JSONDecodeError as exc:
        raise _bad(f"invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise _bad(f"_type is not {STATEMENT_TYPE}")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise _bad(f"predicateType is {doc.get('predicateType')!r}, not {PREDICATE_TYPE}")
    subjects: dict[str, Subject] = {}
    for item in doc.get("subject") or []:
        try:
            subjects[item["name"]] = Subject(str(item["name"]), str(item["digest"]["sha256"]))
        except (KeyError, TypeError):
            raise _bad("every subject needs a name and a digest.sha256") from None
    measurements = (doc.get("predicate") or {}).get("measurements")
    if not isinstance(measurements, dict) or not measurements:
        raise _bad("predicate.measurements is empty")
    return Statement({k: _parse_measurement(k, v, subjects) for k, v in measurements.items()})


def read_statement(path: Path) -> Statement:
    try:
        return parse_statement(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read statement {path}: {exc.strerror or exc}") from None


def write_statement(
    path: Path, measurements: Iterable[Measurement], *, merge: bool = True
) -> Statement:
    """Write (or, with ``merge`` and an existing file, update) the statement at ``path``."""
    base = read_statement(path) if merge and path.exists() else Statement({})
    statement = base.merged(measurements)
    path.write_text(statement.dumps())
    return statement


def policy_from_statement(path: Path, kinds: Sequence[str] | None = None) -> Policy:
    return read_statement(path).policy(kinds)


# --- verification --------------------------------------------------------------------------------


def _find(name: str, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _recompute(m: Measurement, found: Mapping[str, Path]) -> Measurement | None:
    """Recompute a kind's registers from its artefacts where that needs no outside tool."""
    if m.kind == "simulation":
        if m.inputs.get("source") == "wheel":
            return simulation_measurement(found[m.subjects[0].name])
        prefix = PACKAGE + "/"
        files = [(s.name[len(prefix) :], s.sha256) for s in m.subjects if s.name.startswith(prefix)]
        return Measurement("simulation", {"measurement": simulation_fold(files)})
    if m.kind == "snp":
        i = m.inputs

        def path(key: str) -> Path | None:
            return found[i[key]] if i.get(key) else None

        ovmf = path("ovmf")
        if ovmf is None:
            return None
        return snp_measurement(
            ovmf,
            path("kernel"),
            path("initrd"),
            i.get("append"),
            int(i["vcpus"]),
            str(i["vcpu_type"]),
            str(i.get("mode", "snp")),
            guest_features=int(i.get("guest_features", 1)),
            vmm_type=str(i.get("vmm_type", "QEMU")),
            svsm=path("svsm"),
            ovmf_vars_size=int(i.get("ovmf_vars_size", 0)),
        )
    return None  # sgx / nitro: their tools compute the registers (run `blindinfer measure` again)


def verify_statement(statement: Statement, roots: Sequence[Path]) -> list[str]:
    """Recompute every subject's sha256 from the files under ``roots`` (first match wins) and,
    where no outside tool is needed (simulation, snp), every register; raise StatementMismatch on
    the first difference or missing artefact. Returns the checks made, one line each."""
    found: dict[str, Path] = {}
    for s in statement.subjects:
        path = _find(s.name, roots)
        if path is None:
            raise StatementMismatch(
                f"artefact {s.name!r} not found under {', '.join(map(str, roots))}"
            )
        actual = sha256_file(path)
        if actual != s.sha256:
            raise StatementMismatch(
                f"artefact {s.name!r} ({path}) has sha256 {actual}, the statement says {s.sha256}"
            )
        found[s.name] = path
    checks = [f"{len(found)} subject digest(s) match"]
    for kind, m in sorted(statement.measurements.items()):
        try:
            again = _recompute(m, found)
        except (KeyError, ValueError, TypeError) as exc:
            raise StatementMismatch(
                f"{kind}: the statement's inputs cannot be recomputed ({type(exc).__name__}: "
                f"{exc}); it names artefacts or values that are not there"
            ) from None
        if again is None:
            checks.append(f"{kind}: registers not recomputed here (needs {m.inputs.get('tool')})")
            continue
        for key, value in m.registers.items():
            if again.registers.get(key) != value:
                raise StatementMismatch(
                    f"{kind}.{key}: the artefacts measure {again.registers.get(key)}, the "
                    f"statement says {value}"
                )
        checks.append(f"{kind}: {', '.join(sorted(m.registers))} recomputed and equal")
    return checks
