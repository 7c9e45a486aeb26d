"""Confidential Containers guest components over their local REST API (``api-server-rest``).

In a Confidential Containers pod (Kata + CoCo guest components) the confidential data hub (CDH)
and the attestation agent (AA) run inside the TEE and are exposed to the workload by
``api-server-rest`` (guest-components ``api-server-rest/src``), which listens on
``127.0.0.1:8006`` by default and answers only loopback clients (403 otherwise):

- ``GET /cdh/resource/<repository>/<type>/<tag>``: the CDH fetches ``kbs:///<path>`` from the
  KBS configured in the pod's init-data, doing the whole RCAR attestation with AA's evidence
  itself, and answers 200 ``application/octet-stream`` with the PLAINTEXT resource (500 with
  the error text when the KBS refused; 404 "Resource Feature Not Enabled" when the server runs
  without the ``resource`` feature). The attestation, the policy and the TEE key are the CDH's
  business; blindinfer only sees the result.
- ``GET /aa/evidence?runtime_data=<value>[&encoding=base64]``: the AA's primary attester's
  evidence (its JSON, as bytes) over ``runtime_data``. With ``encoding=base64`` the value is
  URL-safe base64 without padding and decodes to the raw bytes; without it the UTF-8 bytes of
  the query value are used (older servers know only that form).
- ``GET /aa/token?token_type=<type>``: an attestation token (``kbs`` -> the KBS token JSON).
- ``GET /info``: ``{"version", "tee", "additional_tees", "feature"}`` (``tee`` only with the
  ``attestation`` feature).

How the AA turns runtime_data into report_data: the attester takes the bytes AS IS as
report_data, zero-padding them to 64 bytes (TDX: tsm report inblob; SNP: REPORT_DATA) and
failing above 64 (attestation-agent/attester/src/{tdx,snp}/mod.rs). It does not hash them. So
blindinfer's binding works unchanged: ``AttestationAgentEvidence.get_evidence(report_data)``
sends exactly the 64 bytes (base64 encoding) and checks that the returned quote carries them.
Requires an api-server-rest new enough to honour ``encoding=base64``; an older one would hash
nothing but take the base64 text as bytes, which the check here catches (BackendUnavailable).

Evidence decoding per AA tee: ``tdx`` -> ``{"cc_eventlog", "quote": base64}``, ``sgx`` ->
``{"quote": base64}``: the quote is the blindinfer evidence (collateral: none; the verifier's
collateral provider fetches it). ``snp``: the AA returns the report as the ``sev`` crate's serde
structure, not the signed bytes, so it cannot be turned back into evidence blindinfer verifies:
refused (use the CDH resource path, which does not need blindinfer evidence at all).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any

from blindinfer._keys._http import exchange
from blindinfer._keys.kbs import parse_resource
from blindinfer.attestation import _sgx, _tdx
from blindinfer.attestation._claims import Evidence
from blindinfer.errors import BackendUnavailable, EvidenceError

__all__ = ["CDH_DEFAULT_BASE", "AttestationAgentEvidence", "fetch_resource_cdh"]

CDH_DEFAULT_BASE = "http://127.0.0.1:8006"
_AA_KINDS = {"tdx": "tdx", "sgx": "sgx"}


def fetch_resource_cdh(
    resource: str, *, base: str = CDH_DEFAULT_BASE, timeout: float = 30.0
) -> bytes:
    """The plaintext of ``resource`` from the confidential data hub's REST API at ``base``."""
    path = parse_resource(resource)
    reply = exchange(
        "GET",
        f"{base.rstrip('/')}/cdh/resource/{path}",
        step="confidential data hub resource request",
        timeout=timeout,
        headers={"Accept": "application/octet-stream"},
    )
    if reply.status == 200:
        return reply.body
    if reply.status == 404:
        raise BackendUnavailable(
            f"confidential data hub at {base} does not serve resources: {reply.brief()}"
        )
    if reply.status == 403:
        raise BackendUnavailable(
            f"confidential data hub at {base} refused this client: {reply.brief()}"
        )
    raise BackendUnavailable(
        f"confidential data hub could not get the resource {path} (its KBS attestation or the"
        f" broker's policy failed): {reply.brief()}"
    )


class AttestationAgentEvidence:
    """The TeeBackend evidence side, produced by the CoCo attestation agent (``/aa/evidence``).

    ``kind``: the blindinfer evidence kind ("tdx" or "sgx"); None asks ``/info`` for the AA's tee.
    It has no sealing key: that is what ``release_key`` is for.
    """

    insecure = False

    def __init__(
        self, kind: str | None = None, *, base: str = CDH_DEFAULT_BASE, timeout: float = 30.0
    ) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout
        if kind is None:
            kind = self._aa_tee()
        if kind not in _AA_KINDS:
            if kind == "snp":
                raise BackendUnavailable(
                    "attestation agent SNP evidence is the sev crate's serde form of the report,"
                    " not the signed report bytes blindinfer verifies; use the sev-snp backend"
                    " (configfs-tsm) for evidence and broker 'cdh' for the key"
                )
            raise BackendUnavailable(
                f"attestation agent tee {kind!r} has no blindinfer evidence kind"
            )
        self.kind = _AA_KINDS[kind]
        self.name = f"coco-aa-{self.kind}"

    def _aa_tee(self) -> str:
        reply = exchange(
            "GET", f"{self.base}/info", step="attestation agent info", timeout=self.timeout
        )
        if reply.status != 200:
            raise BackendUnavailable(f"attestation agent info request failed: {reply.brief()}")
        try:
            tee = json.loads(reply.body).get("tee")
        except (ValueError, AttributeError):
            tee = None
        if not isinstance(tee, str):
            raise BackendUnavailable(
                "the guest components' /info names no tee (is the attestation feature enabled?)"
            )
        return tee

    def get_evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report_data must be exactly 64 bytes")
        value = base64.urlsafe_b64encode(report_data).rstrip(b"=").decode("ascii")
        query = urllib.parse.urlencode({"runtime_data": value, "encoding": "base64"})
        reply = exchange(
            "GET",
            f"{self.base}/aa/evidence?{query}",
            step="attestation agent evidence request",
            timeout=self.timeout,
            headers={"Accept": "application/octet-stream"},
        )
        if reply.status != 200:
            raise BackendUnavailable(
                f"attestation agent refused the evidence request: {reply.brief()}"
            )
        try:
            doc: Any = json.loads(reply.body)
            quote = base64.b64decode(doc["quote"], validate=True)
        except (ValueError, KeyError, TypeError):
            raise BackendUnavailable(
                f"attestation agent {self.kind} evidence is not the expected JSON"
                " with a base64 quote"
            ) from None
        # The verifier's own layout parse locates REPORTDATA (and refuses another TEE's quote).
        parse = _tdx.quote_report_data if self.kind == "tdx" else _sgx.quote_report_data
        try:
            found = parse(quote)
        except EvidenceError as exc:
            raise BackendUnavailable(
                f"attestation agent returned an unusable {self.kind} quote: {exc}"
            ) from exc
        if found != report_data:
            raise BackendUnavailable(
                "attestation agent's quote does not carry the requested report_data (an"
                " api-server-rest without encoding=base64 support takes the text, not the bytes)"
            )
        return Evidence(kind=self.kind, evidence=quote)

    def sealing_key(self) -> bytes:
        raise BackendUnavailable(
            "the attestation agent has no sealing key;"
            " release one with blindinfer._keys.release_key"
        )
