"""The ``blindinfer`` command line.

Exit codes: 0 success; 1 other error; 2 usage error; 3 attestation refused (evidence, policy,
binding, collateral); 4 the server refused the request (4xx); 5 cannot reach the server.
"""

from __future__ import annotations

import base64
import binascii
import json
import string
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from blindinfer import _kinds
from blindinfer._cli_measure import app as measure_app
from blindinfer.errors import (
    AttestationError,
    BackendUnavailable,
    BlindInferError,
    ConfigError,
    ConnectError,
    ServerError,
)

app = typer.Typer(
    help="Confidential inference: serve ONNX models inside a TEE, verify and query them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(measure_app, name="measure")
err = Console(stderr=True, soft_wrap=True)

EXIT_ERROR, EXIT_ATTESTATION, EXIT_SERVER, EXIT_UNREACHABLE = 1, 3, 4, 5

PolicyOpt = Annotated[
    Path | None, typer.Option("--policy", "-p", help="policy TOML file the server must satisfy")
]
SimOpt = Annotated[
    bool,
    typer.Option("--simulation", help="accept the INSECURE simulation TEE (development only)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="BLINDINFER_OWNER_TOKEN", help="model owner token"),
]


@contextmanager
def _errors() -> Iterator[None]:
    """Map the error tree onto exit codes with one readable line on stderr."""
    try:
        yield
    except AttestationError as exc:
        err.print(f"[red]attestation refused ({type(exc).__name__}):[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ATTESTATION) from None
    except ServerError as exc:
        err.print(f"[red]server refused ({exc.status}):[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_SERVER if exc.status < 500 else EXIT_ERROR) from None
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except ConnectError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except BackendUnavailable as exc:
        err.print(f"[red]TEE backend unavailable:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except BlindInferError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


# --- serve -------------------------------------------------------------------------------------


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    host: Annotated[str | None, typer.Option(help="listen address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="HTTPS port [8443]")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="sealed models and keys [~/.local/share/blindinfer]")
    ] = None,
    tee: Annotated[
        str | None,
        typer.Option(help=f"TEE backend: {_kinds.backend_names()}"),
    ] = None,
    tee_option: Annotated[
        list[str] | None, typer.Option(help="backend option KEY=VALUE (repeatable)")
    ] = None,
    owner_token: Annotated[
        str | None,
        typer.Option(
            help="model owner token (env BLINDINFER_OWNER_TOKEN); generated once if unset"
        ),
    ] = None,
    owner_token_sha256: Annotated[
        str | None,
        typer.Option(help="sha256 (hex) of the owner token; real TEEs: measured config only"),
    ] = None,
    owner_resource: Annotated[
        str | None, typer.Option(help="key broker resource holding the owner token's sha256")
    ] = None,
    key_broker: Annotated[
        str | None,
        typer.Option(help="sealing key from a Trustee KBS URL or 'cdh', after attestation"),
    ] = None,
    key_resource: Annotated[
        str | None,
        typer.Option(
            help="key broker resource of the sealing key [default/blindinfer/sealing-key]"
        ),
    ] = None,
    key_broker_ca_file: Annotated[
        Path | None, typer.Option(help="CA the KBS's TLS certificate must chain to")
    ] = None,
    owner_initdata: Annotated[
        Path | None, typer.Option(help="CoCo initdata measured in HOST_DATA/MRCONFIGID")
    ] = None,
    store_dir: Annotated[
        Path | None, typer.Option(help="model store, shareable by replicas [DATA_DIR]")
    ] = None,
    migrate_store: Annotated[
        bool | None,
        typer.Option("--migrate-store", help="adopt sealed models found without a manifest"),
    ] = None,
    store_poll_seconds: Annotated[
        float | None, typer.Option(help="re-read the shared store every N s, 0: never [2]")
    ] = None,
    store_anchor: Annotated[
        str | None, typer.Option(help="manifest version anchor: tpm:<NV index>[@/dev/tpmrm0]")
    ] = None,
    store_anchor_file: Annotated[
        Path | None, typer.Option(help="TESTS ONLY: a file as the store's version anchor")
    ] = None,
    run_token: Annotated[
        str | None, typer.Option(help="require this token (or the owner's) to run models")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics on plain HTTP (unattested) [off]")
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="address of the metrics port [127.0.0.1]")
    ] = None,
    hostname: Annotated[
        list[str] | None, typer.Option(help="extra name for the certificate SAN (repeatable)")
    ] = None,
    demo_model: Annotated[
        bool | None, typer.Option("--demo-model/--no-demo-model", help="preload the demo model")
    ] = None,
    examples: Annotated[
        bool | None,
        typer.Option("--examples", help="preload the example pipelines built by `make examples`"),
    ] = None,
    examples_dir: Annotated[
        Path | None, typer.Option(help="where the example bundles are [.cache/examples]")
    ] = None,
    max_model_size: Annotated[
        str | None, typer.Option(help="largest model (bytes or 512MiB) [512MiB]")
    ] = None,
    max_request_size: Annotated[
        str | None, typer.Option(help="largest inference request [64MiB]")
    ] = None,
    max_json_request_size: Annotated[
        str | None, typer.Option(help="largest JSON part of an inference request [8MiB]")
    ] = None,
    max_models: Annotated[int | None, typer.Option(help="most models held")] = None,
    max_run_seconds: Annotated[
        float | None, typer.Option(help="a run past this many seconds is stopped [60]")
    ] = None,
    max_run_memory: Annotated[
        str | None,
        typer.Option(help="onnxruntime working memory for all runs, e.g. 2GiB [1/4 of RAM]"),
    ] = None,
    max_load_seconds: Annotated[
        float | None, typer.Option(help="a model load past this is abandoned [120]")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="idle/header/body timeout of a connection, s [30]")
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="most open connections per port [4096]")
    ] = None,
    spin_us: Annotated[
        int | None,
        typer.Option(help="poll a lone client's socket this long after a reply, us; 0: off [500]"),
    ] = None,
    intra_op_threads: Annotated[
        int | None, typer.Option(help="onnxruntime threads per inference [1]")
    ] = None,
    inference_workers: Annotated[
        int | None, typer.Option(help="concurrent inferences [cores, at least 2]")
    ] = None,
    blindai_compat: Annotated[
        bool | None, typer.Option("--blindai-compat", help="serve the BlindAI 0.6 ports too")
    ] = None,
    blindai_ports: Annotated[
        str | None, typer.Option(help="UNATTESTED,ATTESTED,MANAGEMENT [9923,9924,9925]")
    ] = None,
    blindai_host: Annotated[
        str | None, typer.Option(help="address of the BlindAI ports [127.0.0.1]")
    ] = None,
    blindai_management_host: Annotated[
        str | None,
        typer.Option(help="address of the unauthenticated BlindAI management port [127.0.0.1]"),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None,
) -> None:
    """Start the server (defaults: simulation TEE, local sealed store, demo model).

    Settings come from defaults < --config TOML < BLINDINFER_* environment < flags."""
    from blindinfer._server.config import load_settings
    from blindinfer._server.runner import serve as run_server

    flags: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "tee": tee,
        "owner_token": owner_token,
        "owner_token_sha256": owner_token_sha256,
        "owner_resource": owner_resource,
        "key_broker": key_broker,
        "key_resource": key_resource,
        "key_broker_ca_file": key_broker_ca_file,
        "owner_initdata": owner_initdata,
        "store_dir": store_dir,
        "migrate_store": migrate_store,
        "store_poll_seconds": store_poll_seconds,
        "store_anchor": store_anchor,
        "store_anchor_file": store_anchor_file,
        "run_token": run_token,
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
        "hostnames": hostname or None,
        "demo_model": demo_model,
        "examples": examples,
        "examples_dir": examples_dir,
        "max_model_size": max_model_size,
        "max_request_size": max_request_size,
        "max_models": max_models,
        "max_json_request_size": max_json_request_size,
        "max_run_seconds": max_run_seconds,
        "max_run_memory": max_run_memory,
        "max_load_seconds": max_load_seconds,
        "idle_timeout": idle_timeout,
        "max_connections": max_connections,
        "spin_us": spin_us,
        "intra_op_threads": intra_op_threads,
        "inference_workers": inference_workers,
        "blindai_compat": blindai_compat,
        "blindai_host": blindai_host,
        "blindai_management_host": blindai_management_host,
        "log_level": log_level,
    }
    with _errors():
        if tee_option:
            pairs = [o.partition("=") for o in tee_option]
            if any(not sep for _, sep, _ in pairs):
                raise ConfigError("--tee-option takes KEY=VALUE")
            flags["tee_options"] = {k: v for k, _, v in pairs}
        if blindai_ports:
            try:
                flags["blindai_ports"] = tuple(int(p) for p in blindai_ports.split(","))
            except ValueError:
                raise ConfigError("--blindai-ports takes three ports: 9923,9924,9925") from None
        settings = load_settings(config, flags)
        run_server(settings)


# --- attestation -------------------------------------------------------------------------------


def _claims_table(claims: Any) -> None:
    doc = claims.to_json()
    if doc["insecure"]:
        err.print("[bold red]INSECURE: simulation evidence, no hardware protection[/bold red]")
    rows = {k: doc[k] for k in ("kind", "debug", "tcb_status", "advisory_ids", "report_data")}
    for name, value in {**rows, **doc["measurements"], **doc["fields"]}.items():
        sys.stdout.write(f"{name}: {value}\n")


@app.command()
def attest(
    url: str,
    policy: PolicyOpt = None,
    simulation: SimOpt = False,
    save_cert: Annotated[
        Path | None,
        typer.Option(help="write the attested certificate (PEM) here, to pin in other clients"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a server's evidence, verify it (and its TLS binding) and print the claims."""
    from blindinfer._client import attest as do_attest

    with _errors():
        claims, cert = do_attest(url, policy, simulation_mode=simulation)
    if save_cert is not None:
        import ssl

        save_cert.write_text(ssl.DER_cert_to_PEM_cert(cert))
    from blindinfer.attestation._ratls import extension_value

    # attest() verified the certificate's own evidence too when it carries it (RA-TLS).
    in_cert = extension_value(cert) is not None
    if as_json:
        _print_json({"verified": True, "certificate_evidence": in_cert, "claims": claims.to_json()})
    else:
        _claims_table(claims)
        err.print("[green]verified[/green]: evidence authentic, bound to this TLS certificate")
        if in_cert:
            err.print(
                "[green]verified[/green]: the certificate's own evidence (RA-TLS extension "
                "2.23.133.5.4.9) binds its key, same TEE and measurements"
            )


def _decode_text(data: bytes) -> bytes:
    """Evidence files come raw, as hex text or as base64 text (see ../shared/vectors)."""
    text = data.strip()
    if not text or any(b > 127 for b in text):
        return data
    ascii_text = text.decode("ascii")
    if all(c in string.hexdigits for c in ascii_text) and len(ascii_text) % 2 == 0:
        return bytes.fromhex(ascii_text)
    try:
        return base64.b64decode("".join(ascii_text.split()), validate=True)
    except (binascii.Error, ValueError):
        return data


def _collateral_items(paths: list[Path]) -> dict[str, bytes]:
    """Name each collateral file by its content: DCAP JSON, a PEM chain, or one certificate."""
    items: dict[str, bytes] = {}
    for path in paths:
        data = path.read_bytes()
        stripped = data.lstrip()
        if stripped.startswith(b"{"):
            items["dcap"] = data
        elif stripped.count(b"-----BEGIN CERTIFICATE-----") > 1:
            items["chain"] = data
        else:
            items["vcek"] = data
    return items


def _cert_der(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def _parse_time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--at {value!r} is not an RFC 3339 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _offline_claims(
    evidence: Path,
    collateral: list[Path],
    kind: str | None,
    at: str | None,
    cert: Path | None,
    policy: Path | None,
) -> Any:
    from blindinfer.attestation import Evidence, Policy, detect_kind, verify_evidence

    raw = _decode_text(evidence.read_bytes())
    ev = Evidence(kind or detect_kind(raw), raw, _collateral_items(collateral))
    return verify_evidence(
        ev,
        at=_parse_time(at),
        policy=Policy.load(policy) if policy else None,
        certificate_der=_cert_der(cert) if cert else None,
    )


CollateralOpt = Annotated[
    list[Path] | None,
    typer.Option(help="collateral file (repeatable): DCAP JSON, SNP VCEK, or ASK/ARK PEM chain"),
]


@app.command()
def verify(
    evidence: Annotated[Path, typer.Option(help="evidence file: raw, hex or base64")],
    collateral: CollateralOpt = None,
    cert: Annotated[Path | None, typer.Option(help="certificate the evidence must bind")] = None,
    policy: PolicyOpt = None,
    at: Annotated[str | None, typer.Option(help="verify as of this RFC 3339 time [now]")] = None,
    kind: Annotated[str | None, typer.Option(help=f"{_kinds.names()} [detected]")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify evidence offline. Without --policy: authenticity only (TCB status reported, not
    judged); with --policy the policy is judged too. Exit 0 only if every check passed."""
    with _errors():
        claims = _offline_claims(evidence, collateral or [], kind, at, cert, policy)
    checks = ["authenticity"] + (["binding"] if cert else []) + (["policy"] if policy else [])
    if as_json:
        _print_json({"verified": True, "checks": checks, "claims": claims.to_json()})
    else:
        _claims_table(claims)
        err.print(f"[green]verified[/green]: {', '.join(checks)}")


@app.command()
def policy(
    url: Annotated[str | None, typer.Argument(help="server to read the evidence from")] = None,
    evidence: Annotated[
        Path | None, typer.Option(help="read evidence from a file instead of a server")
    ] = None,
    collateral: CollateralOpt = None,
    at: Annotated[str | None, typer.Option(help="verify the file as of this time")] = None,
    kind: Annotated[str | None, typer.Option(help="evidence kind [detected]")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here instead of stdout")
    ] = None,
    simulation: SimOpt = False,
) -> None:
    """Write a policy pinning exactly what a server's (or a file's) verified evidence shows.

    Review it before use: it trusts whatever the server runs now."""
    from blindinfer.attestation import Policy

    with _errors():
        if (url is None) == (evidence is None):
            raise ConfigError("give either a server URL or --evidence FILE")
        if evidence is not None:
            claims = _offline_claims(evidence, collateral or [], kind, at, None, None)
        else:
            from blindinfer._client import attest as do_attest

            claims, _ = do_attest(url or "", None, simulation_mode=simulation, judge_policy=False)
        text = Policy.from_claims(claims).to_toml()
    header = f"# blindinfer policy generated {datetime.now(UTC).isoformat(timespec='seconds')}"
    header += f" from {url or evidence}\n# Review every value before trusting it.\n"
    if output is None:
        sys.stdout.write(header + text)
    else:
        output.write_text(header + text)
        err.print(f"policy written to {output}")


# --- models ------------------------------------------------------------------------------------


def _connect(url: str, policy: Path | None, simulation: bool, token: str | None) -> Any:
    from blindinfer._client import connect

    return connect(url, policy, simulation_mode=simulation, token=token)


def _progress_callback() -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    if not err.is_terminal:
        return None, lambda: None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
    )
    task = bar.add_task("uploading", total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
        if done >= total:  # the server now validates and loads the model
            bar.update(task, description="sent; server validating and loading")

    return update, bar.stop


@app.command()
def upload(
    url: str,
    model: Annotated[
        Path, typer.Argument(help="ONNX file, or a pipeline bundle folder", exists=True)
    ],
    name: Annotated[
        str | None, typer.Option(help="model name [file stem, or the folder's name]")
    ] = None,
    replace: Annotated[bool, typer.Option(help="replace a model of the same name")] = False,
    restricted: Annotated[
        bool, typer.Option(help="only the owner (or run token) may run it")
    ] = False,
    token: TokenOpt = None,
    policy: PolicyOpt = None,
    simulation: SimOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload a model (streamed raw bytes; needs the owner token)."""
    with _errors():
        conn = _connect(url, policy, simulation, token)
        update, stop = _progress_callback()
        try:
            info = conn.upload_model(
                model, name, replace=replace, restricted=restricted, progress=update
            )
        finally:
            stop()
            conn.close()
    if as_json:
        _print_json(info.__dict__)
    else:
        sys.stdout.write(f"{info.name} {info.model_id} sha256:{info.sha256} {info.size} bytes\n")


@app.command()
def run(
    url: str,
    model: Annotated[str, typer.Argument(help="model id, name or sha256")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="JSON tensor, or NAME=JSON, or @file.npy / NAME=@file.npy"
        ),
    ] = None,
    file: Annotated[
        list[str] | None,
        typer.Option(
            "--file", "-f", help="a file sent as a BYTES input: PATH (input 'input') or NAME=PATH"
        ),
    ] = None,
    token: TokenOpt = None,
    policy: PolicyOpt = None,
    simulation: SimOpt = False,
    receipt: Annotated[
        Path | None,
        typer.Option(help="ask for a signed receipt of this run and write it here"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a model on inputs given as JSON (cast to the model's types), .npy files or whole
    files (a WAV, a photo, a page: BYTES inputs of the example pipelines). With --receipt, the
    server signs a receipt of the run (check it with `blindinfer receipt verify`)."""
    import numpy as np

    def value(text: str) -> Any:
        if text.startswith("@"):
            return np.load(text[1:], allow_pickle=False)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--input is not JSON: {exc}") from None

    with _errors():
        if not input and not file:
            raise ConfigError("give at least one --input or --file")
        inputs: Any = _file_inputs(file or [])
        if input:
            named = [i.partition("=") for i in input]
            if all(sep and not k.lstrip().startswith(("[", "{", "@")) for k, sep, _ in named):
                inputs.update({k: value(v) for k, _, v in named})
            elif file:
                raise ConfigError("with --file, give other inputs as NAME=JSON")
            elif len(input) == 1:
                inputs = value(input[0])
            else:
                inputs = [value(i) for i in input]
        with _connect(url, policy, simulation, token) as conn:
            if receipt is None:
                outputs = conn.run_model(model, inputs)
            else:
                outputs = signed = conn.run_model(model, inputs, receipt=True)
                receipt.write_bytes(signed.receipt)
                err.print(f"receipt written to {receipt}")
    if as_json:
        _print_json(
            {
                k: {"datatype": _datatype(v), "shape": list(v.shape), "data": _listed(v)}
                for k, v in outputs.items()
            }
        )
    else:
        for k, v in outputs.items():
            sys.stdout.write(f"{k} {_datatype(v)} {list(v.shape)}: {_listed(v)}\n")


def _file_inputs(specs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            name, path = "input", spec
        try:
            out[name] = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--file {path}: {exc.strerror or exc}") from None
    return out


def _datatype(array: Any) -> str:
    """numpy's dtype name, as the CLI has always printed it; BYTES for files and text."""
    return "BYTES" if array.dtype == object else str(array.dtype)


def _listed(array: Any) -> Any:
    """Output values for printing: BYTES as text where they are UTF-8 (else base64)."""
    if array.dtype != object:
        return array.tolist()

    def text(item: bytes) -> str:
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(item).decode()

    flat = [text(bytes(x)) for x in array.reshape(-1)]
    return flat


@app.command()
def delete(
    url: str,
    model: Annotated[str, typer.Argument(help="model id, name or sha256")],
    token: TokenOpt = None,
    policy: PolicyOpt = None,
    simulation: SimOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a model (needs the owner token)."""
    with _errors(), _connect(url, policy, simulation, token) as conn:
        info = conn.delete_model(model)
    if as_json:
        _print_json(info.__dict__)
    else:
        sys.stdout.write(f"deleted {info.name} {info.model_id}\n")


@app.command()
def models(
    url: str,
    token: TokenOpt = None,
    policy: PolicyOpt = None,
    simulation: SimOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the server's models."""
    with _errors(), _connect(url, policy, simulation, token) as conn:
        infos = conn.list_models()
    if as_json:
        _print_json([i.__dict__ for i in infos])
        return
    for i in infos:
        ins = ", ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in i.inputs)
        sys.stdout.write(f"{i.name}\t{i.model_id}\tsha256:{i.sha256[:16]}…\t{ins}\n")


# --- receipts ----------------------------------------------------------------------------------

receipt_app = typer.Typer(
    help="Signed inference receipts (docs/receipts.md).", no_args_is_help=True
)
app.add_typer(receipt_app, name="receipt")


def _load_npz(path: Path, what: str) -> dict[str, Any]:
    """Named tensors from an .npz (no pickles): text or fixed-width bytes arrays become BYTES."""
    import numpy as np

    from blindinfer._wire.tensors import bytes_array

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--{what} {path}: not a readable .npz without pickles ({exc})") from None
    for name, array in arrays.items():
        if array.dtype.kind in "SU":
            arrays[name] = bytes_array(array.reshape(-1).tolist(), array.shape)
    return arrays


@receipt_app.command("verify")
def receipt_verify(
    file: Annotated[Path, typer.Argument(help="receipt file (from run --receipt)", exists=True)],
    policy: PolicyOpt = None,
    at: Annotated[
        str | None, typer.Option(help="verify as of this RFC 3339 time [the receipt's time]")
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option(help=".npz of the inputs the receipt must sign")
    ] = None,
    outputs: Annotated[
        Path | None, typer.Option(help=".npz of the outputs the receipt must sign")
    ] = None,
    model_sha256: Annotated[
        str | None, typer.Option(help="sha256 (hex) of the model the receipt must name")
    ] = None,
    as_json: JsonOpt = False,
    simulation: SimOpt = False,
) -> None:
    """Verify a receipt offline: signature, its key's binding to the evidence, the evidence and
    collateral at the receipt's time (or --at), the policy, and the given inputs, outputs and
    model. Exit 0 only if every check passed; 3 with the reason when one failed."""
    from blindinfer._receipts import verify_receipt
    from blindinfer.attestation import Policy

    with _errors():
        try:
            verified = verify_receipt(
                file.read_bytes(),
                policy=Policy.load(policy) if policy else None,
                at=_parse_time(at) if at is not None else None,
                simulation=simulation,
                inputs=_load_npz(inputs, "inputs") if inputs else None,
                outputs=_load_npz(outputs, "outputs") if outputs else None,
                model_sha256=model_sha256,
            )
        except AttestationError as exc:
            if as_json:
                _print_json({"verified": False, "reason": type(exc).__name__, "message": str(exc)})
            raise
    if as_json:
        _print_json(verified.to_json())
        return
    if verified.claims.insecure:
        err.print("[bold red]INSECURE: simulation evidence, no hardware protection[/bold red]")
    for name, value in verified.payload.to_json().items():
        if name != "claims":
            sys.stdout.write(f"{name}: {value}\n")
    err.print(f"[green]verified[/green]: {', '.join(verified.checks)}")


def main() -> None:
    import warnings

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        err.print(f"[bold yellow]warning:[/bold yellow] {message}", highlight=False)

    warnings.showwarning = show
    app()


if __name__ == "__main__":
    main()
