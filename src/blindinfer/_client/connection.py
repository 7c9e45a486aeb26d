"""The SDK: connect() verifies the server's attestation, then sends requests only on connections
whose peer certificate was verified by attestation.

One server or many replicas behind an L4 (TCP passthrough) balancer work the same way: each
replica has its own TLS key and evidence, so every new TLS connection whose certificate is not
yet verified is attested on that very connection (fresh nonce, same policy and options as
``connect()``, evidence bound to that connection's peer certificate) before any request byte;
the verified certificate is remembered (sha256 of its DER, bounded set), so later connections
to the same replica, and every request on a kept-alive connection, cost nothing more.

A replica whose evidence fails is refused: its connection is closed before any request byte
(no token, no input), the refusal is logged (logger ``blindinfer.client``) and counted, and a new
connection is tried, since the balancer may route it to a good replica, up to
``attest_attempts`` connections in all (default 3); past that the last PolicyError, BindingError
or EvidenceError is raised. ``attest_attempts=1`` raises on the first refusal.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import quote, urlencode, urlsplit

import numpy as np

from blindinfer._client.tensors import to_named_arrays
from blindinfer._client.tls import VerifiedCertificates, evidence_context, pinned_context
from blindinfer._client.transport import SPIN_NS, Exchange, Reply, Transport
from blindinfer._wire import oip
from blindinfer._wire.attestation import AttestationDocument
from blindinfer._wire.models import ModelInfo
from blindinfer.attestation import Claims, Evidence, Policy, verify_evidence
from blindinfer.attestation._ratls import extension_value, verify_certificate
from blindinfer.attestation._simulation import KindPolicy as SimulationPolicy
from blindinfer.errors import (
    AttestationError,
    BindingError,
    BlindInferError,
    EvidenceError,
    PolicyError,
    ServerError,
    error_for_status,
)

TOKEN_ENV = "BLINDINFER_OWNER_TOKEN"
DEFAULT_PORT = 8443
UPLOAD_CHUNK = 1 << 20
# Evidence plus collateral (DCAP: quote, PCK chain, TCB info, QE identity, CRLs) is a few tens of
# KiB; AMD certificate chains similar. 8 MiB leaves room and bounds an unverified peer.
EVIDENCE_MAX_BODY = 8 * 1024 * 1024
# New connections tried per request (and by connect()) while replicas refuse attestation.
ATTEST_ATTEMPTS = 3
SPIN_US = SPIN_NS // 1000


# Returns the collateral to verify a piece of evidence with (instead of the server's).
CollateralSource = Callable[[Evidence], Mapping[str, bytes]]


class InsecureSimulationWarning(UserWarning):
    """Emitted whenever a client accepts simulation evidence: there is NO hardware protection."""


def _base_url(url: str) -> str:
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise BlindInferError(f"blindinfer speaks HTTPS only, got {url!r}")
    if not parts.hostname:
        raise BlindInferError(f"no host in {url!r}")
    port = parts.port or DEFAULT_PORT
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port}"


def _resolve_policy(policy: Policy | str | Path | Mapping[str, Any] | None, sim: bool) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str | Path):
        return Policy.load(policy)
    if isinstance(policy, Mapping):
        return Policy.from_mapping(policy)
    # No policy: only a simulation server can be accepted (with the explicit opt-in).
    return Policy({"simulation": SimulationPolicy()} if sim else {})


def _raise_for(reply: Reply) -> None:
    if 200 <= reply.status < 300:
        return
    if reply.status < 400:
        # blindinfer never redirects: a 1xx/3xx is someone else answering (a proxy, a portal).
        raise error_for_status(
            reply.status,
            f"unexpected HTTP {reply.status} from the server (redirects are not followed)",
        )
    try:
        message = str(json.loads(reply.body)["error"])
    except (ValueError, KeyError, TypeError):
        message = reply.body[:500].decode(errors="replace") or f"HTTP {reply.status}"
    raise error_for_status(reply.status, message)


def fetch_evidence(base_url: str, nonce: bytes | None, timeout: float) -> tuple[Evidence, bytes]:
    """Evidence from the attestation endpoint and the certificate the TLS handshake showed."""
    path = "/blindinfer/v1/attestation" + (f"?nonce={nonce.hex()}" if nonce is not None else "")
    transport = Transport(base_url, evidence_context(), timeout)
    try:
        # The peer is not verified yet: take no more than evidence and collateral can need.
        reply = transport.request("GET", path, peer_certificate=True, max_body=EVIDENCE_MAX_BODY)
    finally:
        transport.close()
    _raise_for(reply)
    if not reply.peer_certificate:
        raise BindingError("the attestation response did not come over TLS")
    return _parse_evidence(reply.body), reply.peer_certificate


def _parse_evidence(body: bytes | bytearray) -> Evidence:
    try:
        doc = json.loads(body)
    except ValueError:
        raise EvidenceError("the attestation endpoint did not return JSON") from None
    return AttestationDocument.from_json(doc).evidence


@dataclass(frozen=True)
class VerifyOptions:
    """How a client judges a server's evidence: built once by ``attest``/``connect``.

    ``policy`` None skips only the policy (used to write a policy from a server).
    ``trust_roots`` maps a kind to DER roots that replace the vendor roots pinned in the package
    (private PKIs and tests only). ``collateral_source(evidence)`` returns collateral to use
    instead of what the server sent (your own PCCS or AMD KDS cache). ``at`` None means now."""

    policy: Policy | None
    simulation_mode: bool = False
    timeout: float = 30.0
    at: datetime | None = None
    trust_roots: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    collateral_source: CollateralSource | None = None


def attest(
    url: str,
    policy: Policy | str | Path | Mapping[str, Any] | None = None,
    *,
    simulation_mode: bool = False,
    timeout: float = 30.0,
    at: datetime | None = None,
    judge_policy: bool = True,
    trust_roots: Mapping[str, Sequence[bytes]] | None = None,
    collateral_source: CollateralSource | None = None,
) -> tuple[Claims, bytes]:
    """Fetch fresh evidence, verify it (authenticity, binding to the TLS certificate this very
    handshake showed, freshness nonce, policy) and return the claims and that certificate.

    ``judge_policy=False`` skips only the policy; the other options: see ``VerifyOptions``."""
    opts = VerifyOptions(
        _resolve_policy(policy, simulation_mode) if judge_policy else None,
        simulation_mode,
        timeout,
        at,
        trust_roots or {},
        collateral_source,
    )
    return _attest(_base_url(url), opts)


def _attest(base: str, opts: VerifyOptions) -> tuple[Claims, bytes]:
    nonce = secrets.token_bytes(32)
    evidence, cert = fetch_evidence(base, nonce, opts.timeout)
    claims = _verify(base, opts, evidence, cert, nonce)
    if claims.insecure:
        warnings.warn(
            f"connected to {base} in SIMULATION mode: there is NO hardware protection, the "
            "operator of that machine can read your inputs and outputs",
            InsecureSimulationWarning,
            stacklevel=4,
        )
    return claims, cert


def _verify(
    base: str, opts: VerifyOptions, evidence: Evidence, cert: bytes, nonce: bytes
) -> Claims:
    """Authenticity, binding to ``cert`` (the peer certificate of the connection the evidence
    came over), freshness (``nonce``), policy and the simulation opt-in."""
    if evidence.kind == "simulation" and not opts.simulation_mode:
        raise PolicyError(
            f"{base} runs the SIMULATION TEE: its evidence is signed by a software key and gives "
            "no hardware protection. Refusing to send data. For development only, pass "
            "simulation_mode=True (CLI: --simulation)"
        )
    if opts.collateral_source is not None:
        collateral = dict(opts.collateral_source(evidence))
        evidence = Evidence(evidence.kind, evidence.evidence, collateral)
    claims = verify_evidence(
        evidence,
        at=opts.at or datetime.now(UTC),
        policy=opts.policy,
        certificate_der=cert,
        nonce=nonce,
        roots=opts.trust_roots.get(evidence.kind),
    )
    _check_certificate_evidence(opts, evidence, cert, claims)
    return claims


def _check_certificate_evidence(
    opts: VerifyOptions, evidence: Evidence, cert: bytes, claims: Claims
) -> None:
    """A certificate that carries RA-TLS evidence (attestation/_ratls.py) must carry valid
    evidence of its own key, from the same TEE as the endpoint's: checked with the same roots,
    collateral, time and policy. A certificate without the extension relies on the endpoint's
    evidence alone (BlindAI's convention; servers started with ratls_evidence = false)."""
    if extension_value(cert) is None:
        return
    from_cert = verify_certificate(
        cert,
        at=opts.at or datetime.now(UTC),
        collateral=evidence.collateral,
        policy=opts.policy,
        roots=opts.trust_roots.get(evidence.kind),
    )
    if from_cert.kind != claims.kind or from_cert.measurements != claims.measurements:
        raise BindingError(
            "the evidence inside the TLS certificate comes from another TEE or other code than "
            "the server's attestation endpoint shows; no data was sent"
        )


class _ConnectionAttestor:
    """Attests a new TLS connection on itself (the transport's Attestor): a fresh nonce, the
    evidence fetched over that connection, verified against its own peer certificate with the
    options ``connect()`` used; on success the certificate joins the verified set."""

    def __init__(self, base: str, opts: VerifyOptions, verified: VerifiedCertificates) -> None:
        self._base = base
        self._opts = opts
        self._verified = verified

    def __call__(self, exchange: Exchange, peer_der: bytes) -> None:
        nonce = secrets.token_bytes(32)
        reply = exchange(f"/blindinfer/v1/attestation?nonce={nonce.hex()}", EVIDENCE_MAX_BODY)
        try:
            _raise_for(reply)
        except ServerError as exc:
            msg = f"{self._base} returned no evidence on a new connection: {exc}"
            raise EvidenceError(msg) from exc
        _verify(self._base, self._opts, _parse_evidence(reply.body), peer_der, nonce)
        self._verified.add(peer_der)


class Outputs(dict[str, np.ndarray]):
    """A model's outputs by name (a dict) with the ``receipt`` the server signed for this run:
    a receipt bundle, verifiable offline with ``blindinfer.verify_receipt`` (docs/receipts.md).
    """

    receipt: bytes

    def __init__(self, outputs: Mapping[str, np.ndarray], receipt: bytes) -> None:
        super().__init__(outputs)
        self.receipt = receipt


class Connection:
    """An attested connection. A request only ever leaves on a TLS connection whose peer
    certificate was verified by attestation: the one ``connect()`` attested, or, behind a
    balancer, another replica's, attested on that new connection first (with ``verify``, the
    options ``connect()`` used). Without ``verify`` only ``certificate_der`` is accepted.

    Use as a context manager, or call close()."""

    def __init__(
        self,
        base_url: str,
        claims: Claims,
        certificate_der: bytes,
        token: str | None,
        timeout: float,
        *,
        verify: VerifyOptions | None = None,
        attest_attempts: int = ATTEST_ATTEMPTS,
        spin_us: int = SPIN_US,
    ) -> None:
        self.url = base_url
        self.claims = claims
        self.certificate_der = certificate_der
        self._auth = {"authorization": f"Bearer {token}"} if token else {}
        self._verified = VerifiedCertificates([certificate_der])
        attestor = None if verify is None else _ConnectionAttestor(base_url, verify, self._verified)
        # The handshake accepts any certificate; the transport checks the verified set on every
        # new connection before any request byte (and attests the connection when it can).
        self._transport = Transport(
            base_url,
            evidence_context(),
            timeout,
            verified=self._verified,
            attestor=attestor,
            attest_attempts=attest_attempts,
            spin_ns=max(0, spin_us) * 1000,
        )
        self._meta: dict[str, dict[str, Any]] = {}
        # JSON headers of requests written and replies read before (per connection, bounded).
        self._headers = oip.HeaderCache(size=64, max_header=4096)

    @property
    def verified_certificates(self) -> frozenset[str]:
        """sha256 (hex) of every server certificate this connection has verified (one per
        replica reached behind a balancer; bounded, least recently seen forgotten first)."""
        return self._verified.digests()

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that completes a handshake only with the certificate attested by
        ``connect()`` (compared byte for byte before any request byte leaves), for other HTTP
        clients on the same attested channel, e.g. ``httpx.Client(verify=conn.ssl_context())``
        under the ``openai`` client. Host names are not checked: the identity is the attested
        key. Behind a balancer of replicas it reaches only the attested one's certificate."""
        return pinned_context(self.certificate_der)

    # --- plumbing ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        idempotent: bool = False,
    ) -> Reply:
        reply = self._transport.request(
            method, path, body, {**self._auth, **(headers or {})}, idempotent=idempotent
        )
        _raise_for(reply)
        return reply

    def _json(self, method: str, path: str) -> Any:
        # Reads may be sent again on another connection if theirs is lost; DELETE may not.
        return json.loads(self._request(method, path, idempotent=method == "GET").body)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models --------------------------------------------------------------------------------

    def upload_model(
        self,
        model: str | Path | bytes,
        name: str | None = None,
        *,
        replace: bool = False,
        restricted: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> ModelInfo:
        """Stream a model's raw ONNX bytes to the server (owner token needed). A folder is a
        pipeline bundle (``pipeline.json`` + its files): packed into one archive and uploaded as
        one unit, whose sha256 covers every file."""
        if name is None and not isinstance(model, bytes | bytearray):
            name = Path(model).stem if not Path(model).is_dir() else Path(model).name
        data = _model_bytes(model)
        total = len(data)

        class Chunks:
            """Re-iterable, so a retry on a fresh connection can send the model again. Pieces
            are views (of the model in memory, or of the file's read buffer), never copies."""

            def __iter__(self) -> Iterator[memoryview]:
                sent = 0
                for piece in _pieces(data):
                    yield piece
                    sent += len(piece)
                    if progress is not None:
                        progress(min(sent, total), total)

        params = {"replace": str(replace).lower(), "restricted": str(restricted).lower()}
        if name:
            params["name"] = name
        reply = self._request(
            "POST",
            f"/blindinfer/v1/models?{urlencode(params)}",
            Chunks(),  # type: ignore[arg-type]
            {"content-length": str(total), "content-type": "application/octet-stream"},
        )
        info = ModelInfo.from_json(json.loads(reply.body))
        self._meta.pop(info.name, None)
        return info

    def list_models(self) -> list[ModelInfo]:
        doc = self._json("GET", "/blindinfer/v1/models")
        return [ModelInfo.from_json(m) for m in doc["models"]]

    def model_metadata(self, model: str) -> dict[str, Any]:
        doc: dict[str, Any] = self._json("GET", f"/v2/models/{quote(model, safe='')}")
        return doc

    def delete_model(self, model: str) -> ModelInfo:
        info = ModelInfo.from_json(
            self._json("DELETE", f"/blindinfer/v1/models/{quote(model, safe='')}")
        )
        for key in [k for k, v in self._meta.items() if v["model_id"] == info.model_id]:
            del self._meta[key]
        return info

    def _inputs_of(self, model: str) -> list[dict[str, Any]]:
        meta = self._meta.get(model)
        if meta is None:
            meta = self._meta[model] = self.model_metadata(model)
        return list(meta["inputs"])

    @overload
    def run_model(
        self,
        model: str,
        inputs: Any,
        *,
        dtype: Any = None,
        shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
        outputs: Sequence[str] | None = None,
        receipt: Literal[False] = False,
    ) -> dict[str, np.ndarray]: ...

    @overload
    def run_model(
        self,
        model: str,
        inputs: Any,
        *,
        dtype: Any = None,
        shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
        outputs: Sequence[str] | None = None,
        receipt: Literal[True],
    ) -> Outputs: ...

    def run_model(
        self,
        model: str,
        inputs: Any,
        *,
        dtype: Any = None,
        shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
        outputs: Sequence[str] | None = None,
        receipt: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` (id, name or sha256) and return its outputs by name.

        ``inputs``: a numpy array or torch tensor; a list of them in the model's input order; a
        dict name -> array; or flat/nested lists with ``dtype`` and ``shape`` (per input when
        the model has several). Tensors travel as raw bytes (OIP binary extension).
        ``receipt=True``: the server also signs a receipt of this run, returned as the
        ``.receipt`` bytes of the outputs (``Outputs``, a dict)."""
        arrays = to_named_arrays(inputs, self._inputs_of(model), dtype, shape)
        chunks, header_len = oip.encode_infer_request(
            arrays, outputs, {"receipt": True} if receipt else None, self._headers
        )
        size = sum(len(c) for c in chunks)
        # Small requests go out as one buffer (one TLS record); large tensors are sent from
        # their own memory, without first copying them into one body.
        body: bytes | list[bytes | memoryview] = b"".join(chunks) if size < 65536 else chunks
        reply = self._request(
            "POST",
            f"/v2/models/{quote(model, safe='')}/infer",
            body,  # type: ignore[arg-type]
            {
                oip.HEADER_LENGTH: str(header_len),
                "content-type": oip.BINARY_CONTENT_TYPE,
                "content-length": str(size),
            },
            idempotent=True,  # a run changes nothing on the server: safe to send again
        )
        raw_len = reply.headers.get(oip.HEADER_LENGTH)
        header_len_out = int(raw_len) if raw_len else None
        if not receipt:
            return oip.parse_infer_response(reply.body, header_len_out, self._headers)
        result, params = oip.parse_infer_response_parameters(reply.body, header_len_out)
        try:
            bundle = base64.b64decode(params["receipt"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise BlindInferError("the server sent no receipt (or a malformed one)") from exc
        return Outputs(result, bundle)


class _FileBody:
    """A model file sent as it is read: one reused buffer of ``UPLOAD_CHUNK`` (the transport
    sends each piece before asking for the next), never a copy of the whole model in memory.
    Re-iterable, so a retry on a fresh connection reads it again; a file whose size changes
    meanwhile ends the request on a length mismatch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[memoryview]:
        buf = bytearray(min(UPLOAD_CHUNK, max(self.size, 1)))
        with open(self.path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                yield memoryview(buf)[:n]


def _pieces(data: bytes | bytearray | _FileBody) -> Iterable[memoryview]:
    if isinstance(data, _FileBody):
        return data
    view = memoryview(data)
    return (view[i : i + UPLOAD_CHUNK] for i in range(0, len(view), UPLOAD_CHUNK))


def _model_bytes(model: str | Path | bytes | bytearray) -> bytes | bytearray | _FileBody:
    """The bytes to upload: as given, a packed pipeline folder, or a file read as it is sent."""
    if isinstance(model, bytes | bytearray):
        return model
    path = Path(model)
    if path.is_dir():
        from blindinfer._pipelines.bundle import pack_dir

        return pack_dir(path)
    return _FileBody(path)


def connect(
    url: str,
    policy: Policy | str | Path | Mapping[str, Any] | None = None,
    *,
    simulation_mode: bool = False,
    token: str | None = None,
    timeout: float = 60.0,
    trust_roots: Mapping[str, Sequence[bytes]] | None = None,
    collateral_source: CollateralSource | None = None,
    attest_attempts: int = ATTEST_ATTEMPTS,
    spin_us: int = SPIN_US,
) -> Connection:
    """Verify the server at ``url`` against ``policy`` and return an attested Connection.

    ``policy``: a Policy, a path to a TOML policy file, or a mapping of its tables. Simulation
    evidence is refused unless ``simulation_mode=True``. The owner token (for uploads and
    deletes) comes from ``token`` or the BLINDINFER_OWNER_TOKEN environment variable.
    ``trust_roots`` and ``collateral_source``: see ``attest``. Behind a balancer every new
    connection is attested the same way before use; ``attest_attempts`` bounds the connections
    tried while replicas refuse attestation (module docstring). ``spin_us``: a reply is
    waited for by polling its socket from ``spin_us`` microseconds before it is due (when the
    last reply on that connection came) to ``spin_us`` after, and by sleeping otherwise (a
    sleeping thread wakes later than a fast reply comes); 0: always sleep."""
    base = _base_url(url)
    opts = VerifyOptions(
        _resolve_policy(policy, simulation_mode),
        simulation_mode,
        timeout,
        None,
        trust_roots or {},
        collateral_source,
    )
    attempts = max(1, attest_attempts)
    for attempt in range(attempts):
        try:
            claims, cert = _attest(base, opts)
            break
        except AttestationError:
            # Each try is a new TCP connection: a balancer may route it to a good replica.
            if attempt + 1 == attempts:
                raise
    return Connection(
        base,
        claims,
        cert,
        token or os.environ.get(TOKEN_ENV),
        timeout,
        verify=opts,
        attest_attempts=attempts,
        spin_us=spin_us,
    )


__all__ = [
    "Connection",
    "InsecureSimulationWarning",
    "ModelInfo",
    "Outputs",
    "ServerError",
    "VerifyOptions",
    "attest",
    "connect",
]
