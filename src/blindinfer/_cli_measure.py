"""``blindinfer measure``: expected measurements from artefacts, release statements, policies.

Exit codes: 0 success; 1 the measurement could not be made (a tool missing or failing, an
artefact unreadable); 2 usage error (bad option, not a statement); 3 ``verify`` refused: an
artefact or a register does not match the statement.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from blindinfer import _measure
from blindinfer.errors import BlindInferError, ConfigError

app = typer.Typer(
    help="Recompute the measurements a deployment's artefacts give, and the matching policy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)

EXIT_ERROR, EXIT_USAGE, EXIT_MISMATCH = 1, 2, 3

PolicyOutOpt = Annotated[
    Path | None, typer.Option("--policy-out", help="write the policy pinning these registers")
]
StatementOpt = Annotated[
    Path | None,
    typer.Option(
        "--statement", help="add this kind to an in-toto statement file (created if absent)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


@contextmanager
def _errors() -> Iterator[None]:
    """Map errors onto the exit codes above with one readable line on stderr."""
    try:
        yield
    except _measure.StatementMismatch as exc:
        err.print(f"[red]statement refused:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_MISMATCH) from None
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except BlindInferError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None


def _emit(
    m: _measure.Measurement, policy_out: Path | None, statement: Path | None, as_json: bool
) -> None:
    """Print the registers; write the policy and the statement when asked."""
    if statement is not None:  # first: an unreadable or clashing statement leaves no policy
        _measure.write_statement(statement, [m])
        err.print(f"statement {statement}: {m.kind} recorded", markup=False)
    if policy_out is not None:
        policy_out.write_text(_measure.policy_text(m.policy(), f"the {m.kind} artefacts"))
        err.print(f"policy written to {policy_out}")
    if as_json:
        doc: dict[str, Any] = {"kind": m.kind, **m.to_json()}
        doc["subjects"] = [s.to_json() for s in m.subjects]
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return
    sys.stdout.write(f"kind: {m.kind}\n")
    for key, value in m.registers.items():
        sys.stdout.write(f"{key}: {value}\n")


@app.command()
def simulation(
    source: Annotated[
        Path | None,
        typer.Option(help="source tree (repo root or package dir) or wheel [installed package]"),
    ] = None,
    policy_out: PolicyOutOpt = None,
    statement: StatementOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The simulation TEE's code measurement: what a server of this code reports."""
    with _errors():
        m = _measure.simulation_measurement(source)
        _emit(m, policy_out, statement, as_json)


@app.command()
def snp(
    ovmf: Annotated[Path, typer.Option(help="OVMF firmware (.fd) the guest boots")],
    vcpus: Annotated[int, typer.Option(help="number of guest vCPUs")],
    vcpu_type: Annotated[str, typer.Option(help="QEMU CPU model, e.g. EPYC-v4, EPYC-Milan")],
    kernel: Annotated[Path | None, typer.Option(help="kernel (direct boot, measured)")] = None,
    initrd: Annotated[Path | None, typer.Option(help="initrd (with --kernel)")] = None,
    append: Annotated[str | None, typer.Option(help="kernel command line (with --kernel)")] = None,
    mode: Annotated[str, typer.Option(help="snp, or snp:svsm (Coconut-SVSM)")] = "snp",
    guest_features: Annotated[
        str, typer.Option(help="SEV_FEATURES of the VMSAs, hex (sev-snp-measure's default)")
    ] = "0x1",
    vmm_type: Annotated[str, typer.Option(help="QEMU, ec2 or gce")] = "QEMU",
    svsm: Annotated[Path | None, typer.Option(help="SVSM binary (mode snp:svsm)")] = None,
    ovmf_vars_size: Annotated[
        int, typer.Option(help="size of OVMF_VARS in bytes (mode snp:svsm)")
    ] = 0,
    policy_out: PolicyOutOpt = None,
    statement: StatementOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The SEV-SNP launch measurement (sev-snp-measure's arithmetic)."""
    with _errors():
        try:
            features = int(guest_features, 0)
        except ValueError:
            raise ConfigError(f"--guest-features {guest_features!r} is not an integer") from None
        m = _measure.snp_measurement(
            ovmf,
            kernel,
            initrd,
            append,
            vcpus,
            vcpu_type,
            mode,
            guest_features=features,
            vmm_type=vmm_type,
            svsm=svsm,
            ovmf_vars_size=ovmf_vars_size,
        )
        _emit(m, policy_out, statement, as_json)


@app.command()
def sgx(
    manifest: Annotated[
        Path | None, typer.Option(help="Gramine manifest rendered by gramine-manifest")
    ] = None,
    sig: Annotated[Path | None, typer.Option(help="read an existing SIGSTRUCT (.sig)")] = None,
    key: Annotated[
        Path | None,
        typer.Option(help="release signing key (pins MRSIGNER) [throwaway: MRENCLAVE only]"),
    ] = None,
    libpal: Annotated[Path | None, typer.Option(help="Gramine's libpal [Gramine's own]")] = None,
    policy_out: PolicyOutOpt = None,
    statement: StatementOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """MRENCLAVE (and MRSIGNER) from Gramine's signer; needs Gramine on PATH."""
    with _errors():
        m = _measure.sgx_mrenclave(manifest, sig=sig, key=key, libpal=libpal)
        _emit(m, policy_out, statement, as_json)


@app.command()
def nitro(
    eif: Annotated[Path, typer.Option(help="enclave image file (.eif)")],
    policy_out: PolicyOutOpt = None,
    statement: StatementOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """PCR0/1/2 (and PCR8 when signed) of an EIF; needs nitro-cli on PATH."""
    with _errors():
        m = _measure.nitro_pcrs(eif)
        _emit(m, policy_out, statement, as_json)


@app.command()
def policy(
    statement: Annotated[Path, typer.Argument(help="in-toto statement (or DSSE envelope)")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write here instead of stdout")
    ] = None,
    kind: Annotated[
        list[str] | None, typer.Option(help="only this TEE kind (repeatable) [all]")
    ] = None,
) -> None:
    """Write the policy a release's measurement statement pins (no live server asked).

    A DSSE envelope's signatures are not checked: verify them with the signer's tool first."""
    with _errors():
        text = _measure.policy_text(
            _measure.policy_from_statement(statement, kind), f"statement {statement}"
        )
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        err.print(f"policy written to {out}")


@app.command()
def verify(
    statement: Annotated[Path, typer.Argument(help="in-toto statement (or DSSE envelope)")],
    root: Annotated[
        list[Path] | None,
        typer.Option(help="folder holding the artefacts (repeatable; first match wins) [.]"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute a statement's subject digests and registers from the artefacts.

    Simulation and SNP registers are recomputed here; SGX and Nitro ones need their tools (run
    `blindinfer measure sgx|nitro` again). Exit 0 only if everything recomputed matches."""
    with _errors():
        checks = _measure.verify_statement(_measure.read_statement(statement), root or [Path()])
    if as_json:
        sys.stdout.write(json.dumps({"verified": True, "checks": checks}, indent=2) + "\n")
    else:
        for line in checks:
            sys.stdout.write(line + "\n")
        err.print("[green]verified[/green]: the artefacts match the statement")


def main() -> None:
    app()
