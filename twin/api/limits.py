"""Bounded request bodies: refused by size or slowness before routing, so before any database session.

An ASGI middleware reads each request's body in full before the application sees it:

- A body larger than the limit is refused with 413, by its ``Content-Length`` without reading it, or once the
  bytes counted so far pass the limit (a chunked body). The limit is ``TWIN_API_PUBLIC_BODY_LIMIT`` (16 KiB)
  for a request without an ``Authorization`` header and for the login (``POST /api/v1/session``), and
  ``TWIN_API_BODY_LIMIT`` (1 MiB) for the others.
- A body that has not arrived within ``TWIN_API_BODY_TIMEOUT_S`` (plus a second per 64 KiB it declares) is
  refused with 408: a client trickling a byte at a time holds no worker and no connection for long.
- A body larger than the public limit is read only after its key has been checked (401, or 429 for an
  address that keeps sending unknown keys): junk sent with a made-up key is never parsed.
- Model archives (``POST /api/v1/models``) with a key are streamed to their route, which authenticates the
  uploader before it reads a byte and counts them against ``TWIN_MODEL_MAX_BYTES`` (422 past it).

Refusals are small problem documents (RFC 9457) and close the connection, whose unread rest is not wanted.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from twin.api.exposure import check_bearer, refuse_unauthorised
from twin.auth import SessionLimits
from twin.errors import AuthError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from twin.config import TwinSettings

LOGIN_PATH = "/api/v1/session"
STREAMED = frozenset({("POST", "/api/v1/models")})  # routes that read their own (large) bodies
_RATE = 64 << 10  # bytes a second a declared body is given on top of the timeout


class BodyLimits:
    """ASGI middleware bounding request bodies in size and in time.

    Args:
        app: the wrapped application.
        settings: the limits (``api_body_limit``, ``api_public_body_limit``, ``api_body_timeout_s``).
    """

    def __init__(self, app: ASGIApp, settings: TwinSettings) -> None:
        self.app = app
        self.limit = settings.api_body_limit
        self.public_limit = settings.api_public_body_limit
        self.timeout_s = settings.api_body_timeout_s
        self.sessions = SessionLimits(settings.session_idle_s, settings.session_max_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # lower-case names; a repeated header keeps its last value
        declared = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if declared is None and not chunked:  # no body
            await self.app(scope, receive, send)
            return
        size = int(declared) if declared is not None and declared.isdigit() else None
        if (scope["method"], scope["path"].rstrip("/")) in STREAMED and b"authorization" in headers:
            await self.app(scope, receive, send)  # the route checks the key, then counts against its own limit
            return
        limit = self.limit_for(scope["path"], b"authorization" in headers)
        if size is not None and size > limit:
            await _refuse(send, 413, _too_large(limit))
            return
        if limit > self.public_limit and (size is None or size > self.public_limit):
            # more than anyone may send: only a real key may, so check it before reading (and parsing) a byte
            try:
                await run_in_threadpool(check_bearer, scope, self.sessions)
            except (AuthError, SQLAlchemyError) as exc:
                await refuse_unauthorised(send, exc)
                return
        body = await self._read(receive, send, limit, size or 0)
        if body is None:
            return
        await self.app(scope, _replay(body, receive), send)

    def limit_for(self, path: str, has_key: bool) -> int:
        """The largest body a request to ``path`` may send, with or without an Authorization header."""
        if not has_key or path.rstrip("/") == LOGIN_PATH:
            return self.public_limit
        return self.limit

    async def _read(self, receive: Receive, send: Send, limit: int, declared: int) -> bytes | None:
        """The whole body; None once a refusal was sent (or the client left)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s + declared / _RATE):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await _refuse(send, 413, _too_large(limit))
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            await _refuse(send, 408, f"the request body did not arrive within {self.timeout_s:g} s")
            return None


def _too_large(limit: int) -> str:
    return f"request body over the limit of {limit} bytes for this request"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable giving ``body`` once, then whatever the client sends next (its disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_TITLES = {408: "Request Timeout", 413: "Content Too Large"}


async def _refuse(send: Send, status: int, detail: str) -> None:
    """Answer with a small problem document and close the connection."""
    body = json.dumps({"type": "about:blank", "title": _TITLES[status], "status": status, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
