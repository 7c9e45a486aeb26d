"""Confidential Containers ``api-server-rest`` double, following guest-components@8246e5e
api-server-rest/src/router.rs and utils.rs byte for byte (paths, status codes, bodies):

- loopback only (403 "Forbidden"); ``GET /info`` -> JSON {version, tee?, additional_tees?,
  feature} (405 "Method Not Allowed" otherwise);
- ``/aa/token`` GET ``token_type`` -> octet-stream token (400 "BAD REQUEST" without it);
- ``/aa/evidence`` GET ``runtime_data`` [``encoding=base64``: URL-safe, no padding; none: the
  UTF-8 bytes] -> octet-stream evidence JSON; 400 on a bad encoding; 500 with the error text when
  the attester fails (TDX attester: more than 64 bytes of report data);
- ``/cdh/resource/<path>`` -> octet-stream plaintext, 500 with the error text on failure;
- a root without its feature -> 404 "Attestation Feature Not Enabled" / "Resource Feature Not
  Enabled"; anything else 404 "URL NOT FOUND".

The attester behind ``/aa/evidence`` is ``evidence(report_data) -> JSON value`` (the AA pads the
runtime data to 64 bytes with zeros and passes it as report_data, unhashed); the CDH behind
``/cdh/resource`` is ``resource(path) -> bytes`` (raising for failure).
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.keys._http_double import ServerThread

OCTET = {"Content-Type": "application/octet-stream"}


class ApiServerRestDouble:
    def __init__(
        self,
        *,
        tee: str | None = None,
        evidence: Callable[[bytes], Any] | None = None,
        resource: Callable[[str], bytes] | None = None,
        token: Callable[[str], bytes] | None = None,
        features: str = "all",
    ) -> None:
        self.tee = tee
        self.evidence = evidence
        self.resource = resource
        self.token = token
        self.features = features
        self.requests: list[str] = []
        self._server = ServerThread(self._handle)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> ApiServerRestDouble:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    @property
    def aa_enabled(self) -> bool:
        return self.features in ("attestation", "all")

    @property
    def cdh_enabled(self) -> bool:
        return self.features in ("resource", "all")

    def _handle(
        self, req: BaseHTTPRequestHandler, method: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(req.path)
        if req.client_address[0] != "127.0.0.1":
            return 403, {}, b"Forbidden"
        parts = urllib.parse.urlsplit(req.path)
        path = parts.path
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        if path == "/info":
            if method != "GET":
                return 405, {}, b"Method Not Allowed"
            info: dict[str, Any] = {"version": "v0.0.0-double"}
            if self.aa_enabled and self.tee is not None:
                info["tee"] = self.tee
            info["feature"] = self.features
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        # split_nth_slash(path, 2): "/aa/evidence" -> ("/aa", "/evidence")
        segs = path.split("/")
        if len(segs) < 3:
            return 404, {}, b"URL NOT FOUND"
        root, rest = "/" + segs[1], "/" + "/".join(segs[2:])
        if root == "/aa":
            if not self.aa_enabled:
                return 404, {}, b"Attestation Feature Not Enabled"
            if rest == "/token" and method == "GET":
                if "token_type" not in params:
                    return 400, {}, b"BAD REQUEST"
                assert self.token is not None
                try:
                    return 200, OCTET, self.token(params["token_type"])
                except Exception as exc:
                    return 500, {}, str(exc).encode()
            if rest == "/evidence" and method == "GET":
                if "runtime_data" not in params:
                    return 400, {}, b"BAD REQUEST"
                value, encoding = params["runtime_data"], params.get("encoding")
                if encoding is None:
                    runtime = value.encode()
                elif encoding == "base64":
                    if "=" in value:
                        return 400, {}, b"BAD REQUEST"
                    try:
                        runtime = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
                    except (binascii.Error, ValueError):
                        return 400, {}, b"BAD REQUEST"
                else:
                    return 400, {}, b"BAD REQUEST"
                if len(runtime) > 64:
                    return 500, {}, b"TDX Attester: Report data must be no more than 64 bytes"
                assert self.evidence is not None
                try:
                    doc = self.evidence(runtime + bytes(64 - len(runtime)))
                except Exception as exc:
                    return 500, {}, str(exc).encode()
                return 200, OCTET, json.dumps(doc).encode()
            return 404, {}, b"URL NOT FOUND"
        if root == "/cdh":
            if not self.cdh_enabled:
                return 404, {}, b"Resource Feature Not Enabled"
            # split_nth_slash(url_path, 2): "/resource/a/b/c" -> ("/resource", "/a/b/c")
            sub = rest.split("/")
            if len(sub) >= 3 and "/" + sub[1] == "/resource":
                resource_path = "/" + "/".join(sub[2:])
                assert self.resource is not None
                try:
                    return 200, OCTET, self.resource(resource_path.lstrip("/"))
                except Exception as exc:
                    return 500, {}, str(exc).encode()
            return 404, {}, b"URL NOT FOUND"
        return 404, {}, b"URL NOT FOUND"
