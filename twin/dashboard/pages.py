"""The dashboard's pages and static files: ``/`` is the single-page app, ``/static/<file>`` its assets.

Only files in the package's ``static/`` directory are served, by exact name (no directory walking), with
their content type and a short cache lifetime; the page itself is never cached, so a new release shows at
once. The Content-Security-Policy allows nothing from outside the platform.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from twin.errors import NotFound
from twin.fields import Key

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
# Everything from the platform itself: no CDN, no inline script or style (the scripts set styles through the
# DOM, which the policy allows), never framed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@router.get("/")
def index() -> FileResponse:
    """The dashboard."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={**_HEADERS, "Cache-Control": "no-cache"})


@router.get("/dashboard")
def dashboard_alias() -> RedirectResponse:
    """The dashboard under its name, for bookmarks."""
    return RedirectResponse("/", status_code=308)


@router.get("/static/{name}")
def static(name: Key) -> Response:
    """One asset of the dashboard; 404 for anything not shipped in ``static/``."""
    path = STATIC / name
    media = _TYPES.get(path.suffix)
    if "/" in name or "\\" in name or name.startswith(".") or media is None or not path.is_file():
        raise NotFound(f"no dashboard file {name!r}")
    return FileResponse(path, media_type=media, headers={**_HEADERS, "Cache-Control": "public, max-age=300"})
