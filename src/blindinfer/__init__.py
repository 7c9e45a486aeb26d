"""blindinfer: confidential inference on ONNX models behind attested TLS."""

from __future__ import annotations

from blindinfer._version import __version__
from blindinfer.errors import (
    AttestationError,
    BackendUnavailable,
    BindingError,
    BlindInferError,
    CollateralError,
    ConfigError,
    Conflict,
    ConnectError,
    EvidenceError,
    InsufficientStorage,
    InvalidInput,
    InvalidModel,
    LimitExceeded,
    ModelNotFound,
    PayloadTooLarge,
    PolicyError,
    ReceiptError,
    ReceiptMismatch,
    ReceiptSignatureError,
    ReceiptTimeError,
    ServerError,
    StoreError,
    Unauthorized,
)

__all__ = [
    "AttestationError",
    "BackendUnavailable",
    "BindingError",
    "BlindInferError",
    "CollateralError",
    "ConfigError",
    "Conflict",
    "ConnectError",
    "Connection",
    "EvidenceError",
    "InsecureSimulationWarning",
    "InsufficientStorage",
    "InvalidInput",
    "InvalidModel",
    "LimitExceeded",
    "ModelNotFound",
    "PayloadTooLarge",
    "Policy",
    "PolicyError",
    "ReceiptError",
    "ReceiptMismatch",
    "ReceiptSignatureError",
    "ReceiptTimeError",
    "ServerError",
    "StoreError",
    "Unauthorized",
    "__version__",
    "connect",
    "verify_receipt",
]


def __getattr__(name: str) -> object:
    # The SDK and policy are imported lazily so that `import blindinfer` stays light for the
    # server process (which never imports the client) and for tools that only need errors.
    if name in ("connect", "Connection", "InsecureSimulationWarning"):
        from blindinfer import _client as client

        return getattr(client, name)
    if name == "Policy":
        from blindinfer.attestation._policy import Policy

        return Policy
    if name == "verify_receipt":
        from blindinfer._receipts import verify_receipt

        return verify_receipt
    raise AttributeError(name)
