"""Who may read ``GET /metrics`` and the API's documentation, each by its own setting.

``TWIN_METRICS_ACCESS`` (``/metrics``) and ``TWIN_DOCS_ACCESS`` (``/docs``, ``/redoc``, ``/openapi.json`` and
what lies under them) are each one of:

- ``open``: anyone who reaches the port;
- ``key`` (the default): a key of at least the viewer role, as ``Authorization: Bearer <key>`` (Prometheus:
  ``authorization.credentials_file``); unknown keys count against the address like any other
  (twin/throttle.py);
- ``off``: 404, as if there were nothing there.

An ASGI middleware decides before routing, so the rule holds however the pages are served.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from twin.auth import Principal, Role, SessionLimits, authenticate
from twin.errors import AuthError, Forbidden, TooManyAttempts, Unauthenticated
from twin.throttle import Kind

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from twin.config import Access, TwinSettings

DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")
METRICS_PATH = "/metrics"


def guarded(path: str) -> str | None:
    """Which setting guards ``path``: ``metrics``, ``docs`` or None."""
    if path == METRICS_PATH:
        return "metrics"
    if any(path == p or path.startswith(p + "/") for p in DOCS_PATHS):
        return "docs"
    return None


class Exposure:
    """ASGI middleware applying TWIN_METRICS_ACCESS and TWIN_DOCS_ACCESS.

    Args:
        app: the wrapped application (its ``state`` holds the sessionmaker and the throttle).
        settings: the access settings and session lifetimes.
    """

    def __init__(self, app: ASGIApp, settings: TwinSettings) -> None:
        self.app = app
        self.access: dict[str, Access] = {"metrics": settings.metrics_access, "docs": settings.docs_access}
        self.limits = SessionLimits(settings.session_idle_s, settings.session_max_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        which = guarded(scope["path"]) if scope["type"] == "http" else None
        access = self.access[which] if which else "open"
        if access == "off":
            await _answer(send, 404, "Not Found", f"{scope['path']} is turned off here", {})
            return
        if access == "key":
            try:
                await run_in_threadpool(self._check, scope)
            except (AuthError, SQLAlchemyError) as exc:
                await refuse_unauthorised(send, exc)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> None:
        """Raise unless the request carries a key of at least the viewer role."""
        check_bearer(scope, self.limits).require(Role.VIEWER)


def check_bearer(scope: Scope, limits: SessionLimits) -> Principal:
    """The principal behind the request's bearer key, checked (and counted, twin/throttle.py) before routing;
    raises AuthError. Blocking: call it in a thread."""
    app = scope["app"]
    scheme, _, key = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("this needs an API key: 'Authorization: Bearer <key>'")
    address = scope["client"][0] if scope.get("client") else "unknown"
    with app.state.throttle.attempt(Kind.KEY, address), app.state.sessionmaker() as session:
        principal = authenticate(session, key.strip(), limits)
        session.commit()
    return principal


async def refuse_unauthorised(send: Send, exc: Exception) -> None:
    """Answer a failed check_bearer: 401, 403 or 429 (with Retry-After), or 503 when the database failed."""
    if isinstance(exc, AuthError):
        await _refuse(send, exc)
    else:
        await _answer(send, 503, "Service Unavailable", "the database is unavailable", {})


async def _refuse(send: Send, exc: AuthError) -> None:
    if isinstance(exc, TooManyAttempts):
        retry = str(max(1, math.ceil(exc.retry_after)))
        await _answer(send, 429, "Too Many Requests", str(exc), {"retry-after": retry})
    elif isinstance(exc, Forbidden):
        await _answer(send, 403, "Forbidden", str(exc), {})
    else:
        await _answer(send, 401, "Unauthorized", str(exc), {"www-authenticate": "Bearer"})


async def _answer(send: Send, status: int, title: str, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    raw = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
