"""BlindAI 0.6 compatibility: the unmodified ``blindai==0.6.3`` Python client works against us.

Three listeners, as the 0.6.3 client expects them (ports from ``settings.blindai_ports``):

- unattested (9923): ``GET /`` -> CBOR byte string holding our TLS certificate (DER), with a
  ``Server`` header that contains "mock" when the TEE is simulated (the client refuses a mock
  unless it runs in simulation mode); ``GET /quote`` and ``GET /collateral`` -> the SGX quote and
  its collateral (a map with the fields of the client's ``Collateral`` dataclass). The client
  speaks plain HTTP here with ``hazmat_http_on_unattested_port=True`` and HTTPS otherwise: one port
  serves both by looking at the first byte of each connection (0x16 starts a TLS handshake record,
  RFC 8446 section 5.1), see :func:`sniffing_protocol`.
- attested (9924, HTTPS): ``POST /run``.
- management (9925, HTTPS, no authentication in BlindAI 0.6, so loopback only by default):
  ``POST /upload`` and ``POST /delete``.

Bodies are CBOR (RFC 8949). The upload carries the model as an *array of small unsigned
integers*; :class:`UploadDecoder` decodes that shape incrementally, with numpy, into one
preallocated buffer, so a 100 MB model never becomes 100 million Python ints. Errors are CBOR text
bodies with the status of the matching :class:`~blindinfer.errors.ServerError` (4xx for the
client's mistakes; the 0.6.3 client raises ``requests.HTTPError`` for any of them).

The model registry is the one the native API uses: a model uploaded through either interface can
be run or deleted through either.
"""

from __future__ import annotations

from blindinfer._server.compat.app import build_compat_apps, build_compat_listeners, server_header
from blindinfer._server.compat.codec import (
    DATUM_NAMES,
    DATUM_TYPES,
    UploadDecoder,
    UploadRequest,
    decode_delete,
    decode_run,
    encode_run_reply,
    encode_upload_reply,
)
from blindinfer._server.compat.collateral import COLLATERAL_FIELDS, blindai_collateral
from blindinfer._server.compat.sniff import sniffing_protocol

__all__ = [
    "COLLATERAL_FIELDS",
    "DATUM_NAMES",
    "DATUM_TYPES",
    "UploadDecoder",
    "UploadRequest",
    "blindai_collateral",
    "build_compat_apps",
    "build_compat_listeners",
    "decode_delete",
    "decode_run",
    "encode_run_reply",
    "encode_upload_reply",
    "server_header",
    "sniffing_protocol",
]
