"""The API's documentation pages, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, served with no internet.

FastAPI's own pages load their scripts, style sheet, favicon and fonts from CDNs, so on a plant network
without internet they stay blank. Here every asset comes from the platform itself: the files that the
``fastapi-offline`` package ships (its Swagger UI and ReDoc bundles, pinned in pyproject.toml), served by exact
name under ``/docs/assets/``. Swagger UI's validator badge, which calls an outside service, is switched off, and
the pages' Content-Security-Policy lets the browser load nothing from elsewhere (ReDoc's bundle names one outside
file, the Redocly logo under its menu; the browser refuses it and the page works without it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from twin.errors import NotFound

router = APIRouter(include_in_schema=False)

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
# name → content type: the only files served, whatever else the package holds
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# The browser itself refuses anything from elsewhere; the pages' small inline start-up scripts are allowed.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# no call to swagger.io's validator: it would leave the plant's network with the API's description
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}


def assets_dir() -> Path:
    """Where the packaged Swagger UI and ReDoc files are."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _openapi_url(request: Request) -> str:
    app: FastAPI = request.app
    return _root(request) + (app.openapi_url or "/openapi.json")


@router.get(DOCS_URL)
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: try the API from the browser."""
    root, app = _root(request), request.app
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{app.title} · Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
        swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **SWAGGER_UI_PARAMETERS},
    )
    page.headers.update(_HEADERS)
    return page


@router.get(OAUTH2_REDIRECT_URL)
def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """Where Swagger UI's OAuth2 flows come back to."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the API's reference to read."""
    root = _root(request)
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} · ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(_HEADERS)
    return page


@router.get(ASSETS_URL + "/{name}")
def asset(name: str) -> FileResponse:
    """One file of the documentation pages; 404 for any name not in ``ASSETS``."""
    media = ASSETS.get(name)
    path = assets_dir() / name
    if media is None or not path.is_file():
        raise NotFound(f"no documentation file {name!r}")
    return FileResponse(path, media_type=media, headers={**_HEADERS, "Cache-Control": "public, max-age=86400"})
