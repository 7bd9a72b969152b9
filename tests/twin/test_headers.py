"""Headers and exposure: no-store on answers that carry a token, a dashboard policy without inline script or
style, no framing, no cookies; /metrics and the API documentation open, behind a key, or off."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.twin.conftest import PASSWORD, with_user
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.dashboard.pages import STATIC
from twin.db import make_sessionmaker


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    return with_user(sqlite_engine, "ada", "admin")


@pytest.fixture
def keys(engine: Engine) -> dict[Role, dict[str, str]]:
    with make_sessionmaker(engine)() as s:
        return {role: {"Authorization": f"Bearer {create_key(s, role, role.value)}"} for role in Role}


def _client(engine: Engine, tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(TwinSettings(data_dir=tmp_path, **settings), engine))


def _csp(header: str) -> dict[str, str]:
    return {d.split(" ", 1)[0]: d.partition(" ")[2] for d in (p.strip() for p in header.split(";")) if d}


def test_answers_carrying_a_token_are_not_stored(engine: Engine, tmp_path: Path,
                                                 keys: dict[Role, dict[str, str]]) -> None:
    with _client(engine, tmp_path) as client:
        login = client.post("/api/v1/session", json={"username": "ada", "password": PASSWORD})
        created = client.post("/api/v1/keys", json={"role": "viewer", "name": "new"}, headers=keys[Role.ADMIN])
        failed = client.post("/api/v1/session", json={"username": "ada", "password": "wrong"})
        read = client.get("/api/v1/nodes", headers=keys[Role.VIEWER])
    assert login.status_code == 201
    assert created.status_code == 201
    for r in (login, created, failed, read):
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert _csp(r.headers["Content-Security-Policy"]) == {"default-src": "'none'", "frame-ancestors": "'none'"}
        assert "set-cookie" not in r.headers  # the token travels in Authorization, never in a cookie


def test_the_dashboard_policy_allows_nothing_inline_and_no_framing(engine: Engine, tmp_path: Path) -> None:
    with _client(engine, tmp_path) as client:
        page = client.get("/")
        script = client.get("/static/app.js")
    for r in (page, script):
        csp = _csp(r.headers["Content-Security-Policy"])
        assert csp["frame-ancestors"] == "'none'"
        assert csp["script-src"] == "'self'"
        assert csp["style-src"] == "'self'"
        assert "unsafe" not in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_the_dashboard_files_hold_no_inline_script_or_style() -> None:
    for path in STATIC.glob("*.html"):
        html = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path.name
        assert not re.search(r"<style\b", html), path.name
        assert not re.search(r"\sstyle\s*=", html), path.name
        assert not re.search(r"\son[a-z]+\s*=", html), path.name
    for path in STATIC.glob("*.js"):
        js = path.read_text()
        assert not re.search(r"innerHTML|insertAdjacentHTML|setAttribute\(\s*[\"']style|\beval\(|new Function",
                             js), path.name


def test_https_answers_ask_for_strict_transport(engine: Engine, tmp_path: Path) -> None:
    with TestClient(create_app(TwinSettings(data_dir=tmp_path), engine), base_url="https://twin") as client:
        assert client.get("/healthz").headers["Strict-Transport-Security"].startswith("max-age=")
    with _client(engine, tmp_path) as client:
        assert "Strict-Transport-Security" not in client.get("/healthz").headers


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/openapi.json", "/redoc"])
def test_metrics_and_docs_need_a_viewer_key_by_default(engine: Engine, tmp_path: Path, path: str,
                                                       keys: dict[Role, dict[str, str]]) -> None:
    with _client(engine, tmp_path) as client:
        anonymous = client.get(path)
        agent = client.get(path, headers=keys[Role.AGENT])
        wrong = client.get(path, headers={"Authorization": "Bearer ftk_0123456789ab_nope"})
        viewer = client.get(path, headers=keys[Role.VIEWER])
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert agent.status_code == 403
    assert wrong.status_code == 401
    assert viewer.status_code == 200


@pytest.mark.parametrize("which", ["metrics", "docs"])
def test_metrics_and_docs_can_be_open_or_off(engine: Engine, tmp_path: Path, which: str,
                                             keys: dict[Role, dict[str, str]]) -> None:
    paths = ["/metrics"] if which == "metrics" else ["/docs", "/openapi.json", "/redoc"]
    other = "/openapi.json" if which == "metrics" else "/metrics"
    with _client(engine, tmp_path, **{f"{which}_access": "open"}) as client:
        assert [client.get(p).status_code for p in paths] == [200] * len(paths)
        assert client.get(other).status_code == 401  # each has its own setting
    with _client(engine, tmp_path, **{f"{which}_access": "off"}) as client:
        assert [client.get(p, headers=keys[Role.ADMIN]).status_code for p in paths] == [404] * len(paths)
        assert client.get(other, headers=keys[Role.ADMIN]).status_code == 200


def test_the_older_metrics_switch_still_turns_them_off(engine: Engine, tmp_path: Path,
                                                       keys: dict[Role, dict[str, str]]) -> None:
    with _client(engine, tmp_path, api_metrics=False) as client:
        assert client.get("/metrics", headers=keys[Role.ADMIN]).status_code == 404


def test_the_demo_opens_the_docs_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from factory_twin.stack import _demo_docs_access

    monkeypatch.delenv("TWIN_DOCS_ACCESS", raising=False)
    assert _demo_docs_access("127.0.0.1") == "open"
    assert _demo_docs_access("0.0.0.0") == "key"
    monkeypatch.setenv("TWIN_DOCS_ACCESS", "off")
    assert _demo_docs_access("127.0.0.1") == "off"
