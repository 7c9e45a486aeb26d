"""blindinfer: confidential inference on ONNX models behind attested TLS."""

from __future__ import annotations

from blindinfer._version import __version__
from blindinfer.errors import (
    AttestationError,
    BindingError,
    BlindInferError,
    CollateralError,
    ConfigError,
    EvidenceError,
    InvalidInput,
    InvalidModel,
    ModelNotFound,
    PayloadTooLarge,
    PolicyError,
    ServerError,
    Unauthorized,
)

__all__ = [
    "AttestationError",
    "BindingError",
    "BlindInferError",
    "CollateralError",
    "ConfigError",
    "Connection",
    "EvidenceError",
    "InvalidInput",
    "InvalidModel",
    "ModelNotFound",
    "PayloadTooLarge",
    "Policy",
    "PolicyError",
    "ServerError",
    "Unauthorized",
    "__version__",
    "connect",
]


def __getattr__(name: str) -> object:
    # The SDK and policy are imported lazily so that `import blindinfer` stays light for the
    # server process (which never imports the client) and for tools that only need errors.
    if name in ("connect", "Connection"):
        from blindinfer import client

        return getattr(client, name)
    if name == "Policy":
        from blindinfer.attestation.policy import Policy

        return Policy
    raise AttributeError(name)
