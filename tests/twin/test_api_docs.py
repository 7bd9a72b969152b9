"""The API's documentation pages work with no internet: /docs and /redoc and every file they load come from the
platform itself, and nothing they reference points at another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from twin.api import create_app
from twin.api.docs import ASSETS, assets_dir
from twin.config import TwinSettings
from twin.db import make_engine

# every place an HTML page names a URL to load: attributes, the spec URL in Swagger UI's start-up script, CSS url()
_REFERENCES = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl\s*:\s*|\burl\()\s*["']?([^"')\s>]+)""", re.I)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    engine = make_engine(f"sqlite:///{tmp_path / 'twin.db'}")
    app = create_app(TwinSettings(data_dir=tmp_path, docs_access="open"), engine)
    with TestClient(app, base_url="http://twin.plant.local") as c:
        yield c
    engine.dispose()


def _references(html: str) -> list[str]:
    return _REFERENCES.findall(html)


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"/docs/assets/swagger-ui.css", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/favicon.png"}),
        ("/redoc", {"/docs/assets/redoc.standalone.js", "/docs/assets/favicon.png"}),
    ],
)
def test_a_docs_page_and_every_file_it_references_come_from_the_app(
    client: TestClient, page: str, expected: set[str]
) -> None:
    r = client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    refs = _references(r.text)
    assert expected <= set(refs), refs
    assert "/openapi.json" in refs
    off_host = [u for u in refs if urlsplit(u).netloc or urlsplit(u).scheme or u.startswith("//")]
    assert not off_host, f"{page} references other hosts: {off_host}"
    assert not re.search(r"https?://|//cdn|fonts\.googleapis", r.text), f"{page} names an outside address"
    for url in refs:
        got = client.get(url)
        assert got.status_code == 200, url
        assert got.content, url
    # and the browser is told to load nothing from elsewhere
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "http" not in csp


def test_the_assets_are_the_packaged_files_with_their_types(client: TestClient) -> None:
    for name, media in ASSETS.items():
        r = client.get(f"/docs/assets/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"] == media
        assert r.content == (assets_dir() / name).read_bytes()
    bundle = client.get("/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle  # a real Swagger UI, not an empty stand-in
    assert "Redoc" in client.get("/docs/assets/redoc.standalone.js").text


@pytest.mark.parametrize(
    "name", ["core.py", "..%2Fcore.py", "%2E%2E%2Fcore.py", "swagger-ui-bundle.js.map", "", "redoc.standalone.js%00"]
)
def test_only_the_listed_files_are_served(client: TestClient, name: str) -> None:
    r = client.get(f"/docs/assets/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/")  # a problem or FastAPI's 404, never a file


def test_swagger_ui_calls_no_outside_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs").text


def test_the_docs_are_not_part_of_the_api_description(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
