"""Request plumbing shared by every API surface: bearer tokens and size-limited bodies.

Written against raw ASGI (scope headers, ``receive``) so the framework-free inference endpoint
and the Starlette routes use the very same checks.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from blindinfer._server.state import ServerState
from blindinfer.errors import InvalidInput, PayloadTooLarge, Unauthorized

if TYPE_CHECKING:
    from starlette.requests import Request

    from blindinfer._server.protocol import DirectBody

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require_owner(state: ServerState, authorization: str | None) -> None:
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized(
            "this operation needs the model owner's token: send 'Authorization: Bearer TOKEN' "
            "(SDK: connect(..., token=...) or BLINDINFER_OWNER_TOKEN)",
            401,
        )
    if not state.is_owner(token):
        raise Unauthorized("the owner token is wrong", 403)


def check_run_access(state: ServerState, authorization: str | None, restricted: bool) -> None:
    """Running is open unless the server has a run token or the model is restricted."""
    run_token = state.settings.run_token
    if run_token is None and not restricted:
        return
    token = bearer_token(authorization)
    if token is not None and (
        state.is_owner(token)
        or (run_token is not None and hmac.compare_digest(token.encode(), run_token.encode()))
    ):
        return
    what = "this model is restricted by its owner" if restricted else "this server needs a token"
    raise Unauthorized(f"{what}: send 'Authorization: Bearer TOKEN'", 401 if token is None else 403)


def content_length(raw: str | bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput("Content-Length is not a number") from None


# A declared Content-Length is only a claim: at most this much is allocated before the bytes
# arrive (a silent peer declaring 64 MiB used to cost 64 MiB, zero-filled, for as long as it
# stayed connected). Requests up to this size still land in one buffer with no growing copy.
PREALLOCATE_MAX = 1024 * 1024


async def read_limited(receive: Receive, declared: int | None, limit: int, what: str) -> bytearray:
    """Read a body, refusing it as soon as it passes ``limit``. Memory follows the bytes that
    arrived, never the length the peer declared (see ``PREALLOCATE_MAX``)."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the {what} is {declared} bytes, over the server limit of {limit}")
    if declared is not None and declared < 0:
        raise InvalidInput("Content-Length is negative")
    buf = bytearray(min(declared or 0, PREALLOCATE_MAX))
    pos = 0
    more = True
    while more:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise InvalidInput("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        end = pos + len(chunk)
        if declared is None:
            if end > limit:
                raise PayloadTooLarge(f"the {what} is over the server limit of {limit} bytes")
        elif end > declared:
            raise InvalidInput("the body is longer than its Content-Length")
        if end <= len(buf):
            buf[pos:end] = chunk
        else:
            del buf[pos:]
            buf += chunk
        pos = end
        more = message.get("more_body", False)
    if declared is not None and pos != declared:
        raise InvalidInput(f"the body ended after {pos} of {declared} bytes")
    return buf


async def read_direct(direct: DirectBody, receive: Receive, limit: int, what: str) -> bytearray:
    """A body the protocol wrote into place (``protocol.DirectBody``): wait for its end."""
    declared = direct.declared
    if declared > limit:
        raise PayloadTooLarge(f"the {what} is {declared} bytes, over the server limit of {limit}")
    more = True
    while more:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise InvalidInput("the client went away before sending the whole body")
        more = message.get("more_body", False)
    if direct.pos != declared:
        raise InvalidInput(f"the body ended after {direct.pos} of {declared} bytes")
    return direct.body()


async def read_body(request: Request, limit: int, what: str) -> bytearray:
    """A Starlette request's body, size-limited (see ``read_limited``)."""
    declared = content_length(request.headers.get("content-length"))
    return await read_limited(request.receive, declared, limit, what)
