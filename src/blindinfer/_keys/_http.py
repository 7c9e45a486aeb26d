"""One HTTP/1.1 exchange on the standard library (http.client), no redirects followed."""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from dataclasses import dataclass

from blindinfer.errors import BackendUnavailable

MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def brief(self) -> str:
        """The status and a short, printable piece of the body (error details, never secrets:
        only called on error replies)."""
        text = self.body[:300].decode("utf-8", "replace").replace("\n", " ").strip()
        return f"{self.status} {text}".strip()


def exchange(
    method: str,
    url: str,
    *,
    step: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float,
) -> Reply:
    """Send one request; BackendUnavailable naming ``step`` when the server cannot be reached."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendUnavailable(f"{step}: {url!r} is not an http(s) URL")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname,
            parts.port,
            timeout=timeout,
            context=context or ssl.create_default_context(),
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    hdrs = {"Accept": "application/json", **(headers or {})}
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise BackendUnavailable(f"{step}: the reply is larger than {MAX_BODY} bytes")
        return Reply(resp.status, resp.headers, data)
    except (OSError, http.client.HTTPException) as exc:
        raise BackendUnavailable(
            f"{step}: cannot reach {parts.scheme}://{parts.netloc}: {exc}"
        ) from exc
    finally:
        conn.close()
