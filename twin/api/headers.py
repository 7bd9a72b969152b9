"""Security headers on every response of the API and dashboard.

- ``Cache-Control: no-store`` on every ``/api/`` response: session tokens, new API keys and the twin's data
  must not stay in a browser's or proxy's cache. A route that sets its own Cache-Control keeps it, except the
  login and key routes, which always say ``no-store``.
- ``Content-Security-Policy``: the dashboard's pages set their own (twin/dashboard/pages.py: scripts and
  styles from the platform only, nothing inline); every other response gets ``default-src 'none'`` (an API
  answer is never a page to run) with ``frame-ancestors 'none'``. The interactive API documentation keeps
  the policy of whoever serves it, framing always refused.
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY`` for older
  browsers, and ``Strict-Transport-Security`` when the request came over HTTPS.

The platform sets no cookies: the dashboard keeps its session token in the tab's sessionStorage and sends it
as ``Authorization: Bearer``, so there is nothing for a cross-site request to ride on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CSP = b"default-src 'none'; frame-ancestors 'none'"
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_TOKEN_PATHS = ("/api/v1/session", "/api/v1/keys")  # answers that carry a token or a new key
_DOCS_PATHS = ("/docs", "/redoc")
_HSTS = b"max-age=31536000"


class SecurityHeaders:
    """ASGI middleware adding the security headers above to every HTTP response.

    Args:
        app: the wrapped application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        https = scope.get("scheme") == "https"

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = headers_for(path, list(message.get("headers", [])), https=https)
            await send(message)

        await self.app(scope, receive, sending)


def headers_for(path: str, headers: list[tuple[bytes, bytes]], *, https: bool = False) -> list[tuple[bytes, bytes]]:
    """``headers`` of a response to ``path`` with the security headers added."""
    present = {name.lower() for name, _value in headers}
    out = [*headers, *((n, v) for n, v in _ALWAYS if n not in present)]
    if path.startswith(_TOKEN_PATHS):
        out = [(n, v) for n, v in out if n.lower() != b"cache-control"]
        out.append((b"cache-control", b"no-store"))
    elif path.startswith("/api/") and b"cache-control" not in present:
        out.append((b"cache-control", b"no-store"))
    if b"content-security-policy" not in present:
        docs = path.startswith(_DOCS_PATHS)
        out.append((b"content-security-policy", b"frame-ancestors 'none'" if docs else API_CSP))
    if https and b"strict-transport-security" not in present:
        out.append((b"strict-transport-security", _HSTS))
    return out
