"""Server settings: defaults < TOML file < environment (BLINDINFER_*) < command-line flags.

All limits live here, in one object, so an operator can see and tune them in one place.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from blindinfer._engine.limits import default_run_memory
from blindinfer.errors import ConfigError

ENV_PREFIX = "BLINDINFER_"

_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
    "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


def parse_size(text: str) -> int:
    """'2GiB', '512MiB', '64k', '1000' -> bytes (binary and decimal units, case-insensitive)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: use e.g. 1048576, 512MiB, 2GiB or 64kB")
    return int(float(match.group(1)) * _UNITS[unit])


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "blindinfer"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = Field("127.0.0.1", description="address the native HTTPS API listens on")
    port: int = Field(8443, ge=0, le=65535, description="port of the native HTTPS API")
    data_dir: Path = Field(default_factory=default_data_dir, description="sealed models, keys")
    tee: str = Field("simulation", description="TEE backend: simulation, gramine-sgx, tdx, ...")
    tee_options: dict[str, str] = Field(
        default_factory=dict, description="backend options (device paths, collateral URLs)"
    )
    owner_token: str | None = Field(
        None,
        description="model owner's credential, simulation only (generated and printed once if "
        "unset); a real TEE refuses it: see owner_token_sha256",
    )
    owner_token_sha256: str | None = Field(
        None,
        description="sha256 (hex) of the owner token; on a real TEE only from measured "
        "configuration (Gramine manifest loader.env, Nitro image; SNP/TDX: must equal HOST_DATA/"
        "MRCONFIGID)",
    )
    owner_resource: str | None = Field(
        None, description="key broker resource whose released bytes are the owner token's sha256"
    )
    key_broker: str | None = Field(
        None,
        description="where the sealing key comes from after attestation: a Trustee KBS URL or "
        "'cdh' (Confidential Containers data hub); unset: the backend's own key",
    )
    key_resource: str = Field(
        "default/blindinfer/sealing-key",
        description="the key broker resource (repository/type/tag) holding the sealing key",
    )
    key_broker_ca_file: Path | None = Field(
        None, description="CA certificate(s) the KBS's TLS certificate must chain to"
    )
    owner_initdata: Path | None = Field(
        None,
        description="CoCo initdata document measured into HOST_DATA/MRCONFIGID whose [data] "
        "entry 'blindinfer-owner' is the owner token's sha256",
    )
    store_dir: Path | None = Field(
        None,
        description="the sealed model store, shared by replicas: STORE_DIR/models/ and "
        "STORE_DIR/store-manifest.sealed [DATA_DIR]",
    )
    migrate_store: bool = Field(
        False,
        description="adopt sealed models found without a store manifest (once; automatic in "
        "simulation)",
    )
    store_poll_seconds: float = Field(
        2.0, ge=0, description="how often replicas re-read the shared store manifest (0: never)"
    )
    store_anchor: str | None = Field(
        None,
        description="a monotonic anchor for the store manifest version: tpm:<NV index>[@device] "
        "(a (v)TPM NV counter, e.g. tpm:0x01800010@/dev/tpmrm0)",
    )
    store_anchor_file: Path | None = Field(
        None,
        description="TESTS ONLY: a file as the store's version anchor (the host can roll a file "
        "back; use a broker or vTPM anchor in production)",
    )
    run_token: str | None = Field(
        None, description="if set, running models also needs this token (or the owner's)"
    )
    hostnames: list[str] = Field(default_factory=list, description="extra certificate SANs")
    ratls_evidence: bool = Field(
        True,
        description="carry the TEE's evidence inside the TLS certificate (interoperable RA-TLS "
        "extension 2.23.133.5.4.9); costs one more evidence request at start-up",
    )
    demo_model: bool = Field(True, description="preload the small demo model")
    examples: bool = Field(
        False, description="preload the example pipelines (whisper-tiny-en, face-embed, ocr, ...)"
    )
    examples_dir: Path = Field(
        Path(".cache/examples"),
        description="where `make examples` wrote the example bundles (manifest.json + folders)",
    )
    max_model_size: int = Field(512 * 1024**2, gt=0, description="largest model upload (bytes)")
    max_request_size: int = Field(64 * 1024**2, gt=0, description="largest inference request")
    max_models: int = Field(32, gt=0, description="most models held at once")
    max_json_request_size: int = Field(
        8 * 1024**2, gt=0, description="largest JSON part of an inference request (bytes)"
    )
    max_run_seconds: float = Field(60.0, gt=0, description="a run past this is stopped (503)")
    max_run_memory: int = Field(
        default_factory=default_run_memory,
        gt=0,
        description="onnxruntime working memory for all runs together; past it a run is stopped",
    )
    max_load_seconds: float = Field(
        120.0, gt=0, description="a model load past this is abandoned (422)"
    )
    idle_timeout: float = Field(
        30.0, gt=0, description="idle, header and body timeout of a connection (seconds)"
    )
    max_connections: int = Field(4096, gt=0, description="most open connections per port")
    spin_us: int = Field(
        500,
        ge=0,
        le=10_000,
        description="after answering the only client on the port, poll its socket this long "
        "for the next request before sleeping (microseconds; 0: off)",
    )
    max_header_size: int = Field(
        64 * 1024, gt=0, description="largest request head (request line + headers), else 431"
    )
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime threads per inference")
    inference_workers: int = Field(
        default_factory=lambda: max(2, os.cpu_count() or 2),
        gt=0,
        description="concurrent inferences (worker threads)",
    )
    blindai_compat: bool = Field(False, description="serve the BlindAI 0.6 ports too")
    blindai_ports: tuple[int, int, int] = Field(
        (9923, 9924, 9925), description="BlindAI unattested, attested, management ports"
    )
    blindai_host: str = Field("127.0.0.1", description="address of the BlindAI ports")
    blindai_management_host: str = Field(
        "127.0.0.1", description="address of the BlindAI management port (no auth there!)"
    )
    log_level: str = Field("info", description="debug, info, warning, error")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Prometheus metrics on plain HTTP, unattested by design (off if unset)",
    )
    metrics_host: str = Field("127.0.0.1", description="address of the metrics port")

    @field_validator(
        "max_model_size", "max_request_size", "max_json_request_size", "max_run_memory",
        "max_header_size", mode="before",
    )  # fmt: skip
    @classmethod
    def _sizes(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v

    @field_validator("owner_token_sha256")
    @classmethod
    def _sha256_hex(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 hex digits: the sha256 of the owner token")
        return v

    @field_validator("tee")
    @classmethod
    def _known_tee(cls, v: str) -> str:
        from blindinfer import _kinds

        if v not in _kinds.BACKENDS:
            raise ValueError(f"unknown TEE backend {v!r}; choose one of {_kinds.backend_names()}")
        return v


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fld in Settings.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if fld.annotation in (bool, bool | None):
            out[name] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif name in ("hostnames",):
            out[name] = [h for h in raw.split(",") if h]
        elif name == "blindai_ports":
            out[name] = tuple(int(p) for p in raw.split(","))
        else:
            out[name] = raw
    return out


def load_settings(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers; any invalid value raises ConfigError naming the setting."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        try:
            merged.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    merged.update(_env_overrides(os.environ if environ is None else environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
