"""One exception tree for the whole package, shared by the server and the SDK.

Every message says what went wrong and, where it can, what to do next. Server-side errors carry
the HTTP status they map to, so the server and the SDK agree on the meaning of each status.
"""

from __future__ import annotations


class BlindInferError(Exception):
    """Base of every error blindinfer raises on purpose."""


# --- attestation -------------------------------------------------------------------------------


class AttestationError(BlindInferError):
    """The server's evidence could not be trusted; no data was sent."""


class EvidenceError(AttestationError):
    """The evidence is malformed, or a signature or certificate chain in it does not verify."""


class CollateralError(AttestationError):
    """Collateral (TCB info, CRLs, vendor certificates) is missing, malformed or expired."""


class PolicyError(AttestationError):
    """The evidence is authentic but does not satisfy the client's policy."""


class BindingError(AttestationError):
    """The TLS certificate in use is not the one the evidence binds (possible man in the middle)."""


# --- configuration -----------------------------------------------------------------------------


class ConfigError(BlindInferError):
    """A setting, policy file or command-line value is invalid."""


# --- the client's side of the network ----------------------------------------------------------


class ConnectError(BlindInferError):
    """The server could not be reached (DNS, refused connection, TLS handshake, time-out)."""


# --- the server's own machinery ----------------------------------------------------------------


class BackendUnavailable(BlindInferError):
    """The TEE backend cannot produce evidence or keys here (device absent, wrong platform)."""


class GenerationConflict(BackendUnavailable):
    """Another writer raced this one on a configfs-tsm report entry; the request may be retried."""


class StoreError(BlindInferError):
    """A stored file could not be read or unsealed (wrong key, corruption, tampering)."""


# --- server-side failures, shared with the SDK -------------------------------------------------


class ServerError(BlindInferError):
    """The server answered with an error. ``status`` is the HTTP status, ``message`` its text."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServerError):
    """The request (tensors, body, parameters) does not match what the model or API expects."""

    status = 400


class InvalidModel(ServerError):
    """The uploaded model was refused (not ONNX, external data, unsupported...)."""

    status = 422


class Unauthorized(ServerError):
    """The model owner's credential is missing (401) or wrong (403)."""

    status = 401


class ModelNotFound(ServerError):
    """No model with that id, name or sha256 is loaded."""

    status = 404


class PayloadTooLarge(ServerError):
    """A model or request is bigger than the server's configured limit."""

    status = 413


class Conflict(ServerError):
    """The request conflicts with the current state (a name already in use, model limit reached)."""

    status = 409


class LimitExceeded(ServerError):
    """A run passed one of the server's run limits (time, memory) and was stopped."""

    status = 503


class InsufficientStorage(ServerError):
    """The server's disk is full: nothing was stored, and nothing already stored was lost."""

    status = 507


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text, capped: what a 4xx may quote from a library's
    error (onnx, onnxruntime) without dumping a whole graph or stack into the reply."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def error_for_status(status: int, message: str) -> ServerError:
    """Rebuild the most specific ServerError subclass for a status the server sent."""
    cls: type[ServerError] = {
        400: InvalidInput,
        401: Unauthorized,
        403: Unauthorized,
        404: ModelNotFound,
        409: Conflict,
        413: PayloadTooLarge,
        422: InvalidModel,
        503: LimitExceeded,
        507: InsufficientStorage,
    }.get(status, ServerError)
    return cls(message, status)


# --- receipts (blindinfer._receipts) ------------------------------------------------------------


class ReceiptError(AttestationError):
    """A receipt could not be trusted: malformed, or one of its checks failed."""


class ReceiptSignatureError(ReceiptError):
    """The receipt's COSE_Sign1 does not verify under its certificate's key."""


class ReceiptMismatch(ReceiptError):
    """What the receipt signs (certificate, evidence, collateral, claims, model, inputs,
    outputs) is not what was given to check it against."""


class ReceiptTimeError(ReceiptError):
    """The receipt's time is outside its certificate's validity."""
