"""Bounded requests: bodies refused by size (413) and slowness (408) before routing and before any database
session, the limits larger with a key than without, and validation errors cut to a few KiB."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from tests.api_server import serve_api
from twin.api import create_app
from twin.api.app import MAX_ERRORS
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker

JUNK_LOGIN = json.dumps({f"k{i:06d}": i for i in range(200_000)}).encode()  # 3.7 MB of unknown keys


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    return sqlite_engine


@pytest.fixture
def checkouts(engine: Engine) -> list[int]:
    """Connections taken from the engine's pool: a refusal before the database leaves it empty."""
    taken: list[int] = []
    event.listen(engine, "checkout", lambda *_: taken.append(1))
    return taken


def _client(engine: Engine, tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(TwinSettings(data_dir=tmp_path, **settings), engine))


def test_a_200000_key_login_is_refused_by_its_length_before_the_database(
    engine: Engine, tmp_path: Path, checkouts: list[int]
) -> None:
    with _client(engine, tmp_path) as client:
        checkouts.clear()
        r = client.post("/api/v1/session", content=JUNK_LOGIN, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert len(r.content) < 512
    assert r.headers["content-type"] == "application/problem+json"
    assert "16384 bytes" in r.json()["detail"]
    assert checkouts == []


def test_a_chunked_body_is_counted_and_refused_past_the_limit(
    engine: Engine, tmp_path: Path, checkouts: list[int]
) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: only counting the bytes finds the size
        yield b'{"username": "a", "password": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    with _client(engine, tmp_path) as client:
        checkouts.clear()
        r = client.post("/api/v1/session", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert checkouts == []


def test_a_request_with_a_key_may_send_more_but_not_without_bound(engine: Engine, tmp_path: Path) -> None:
    with make_sessionmaker(engine)() as s:
        admin = {"Authorization": f"Bearer {create_key(s, Role.ADMIN, 'admin')}"}
    body = {"role": "viewer", "name": "k", "pad": "x" * (100 << 10)}  # 100 KiB: over the public limit
    with _client(engine, tmp_path) as client:
        assert client.post("/api/v1/keys", json=body).status_code == 413  # no key: 16 KiB
        # with one, the body reaches the route, whose schema refuses the unknown field
        assert client.post("/api/v1/keys", json=body, headers=admin).status_code == 422
        body["pad"] = "x" * (2 << 20)
        assert client.post("/api/v1/keys", json=body, headers=admin).status_code == 413
        # the login's limit is the small one, key or not
        big_login = {"username": "a", "password": "b", "pad": "x" * (20 << 10)}
        assert client.post("/api/v1/session", json=big_login, headers=admin).status_code == 413
    with _client(engine, tmp_path, api_body_limit=4096) as client:
        assert client.post("/api/v1/keys", json={"name": "x" * 5000}, headers=admin).status_code == 413


def test_a_body_over_the_public_limit_is_not_read_until_its_key_is_checked(
    engine: Engine, tmp_path: Path
) -> None:
    junk = b"{" * (100 << 10)  # parsed, this would be a 422 (malformed JSON) before the key is looked at
    made_up = {"Authorization": "Bearer ftk_0123456789ab_made-up", "Content-Type": "application/json"}
    with _client(engine, tmp_path, auth_address_failures=3) as client:
        answers = [client.post("/api/v1/keys", content=junk, headers=made_up) for _ in range(4)]
        small = client.post("/api/v1/keys", content=b"{" * 100, headers=made_up)  # within the public limit
    assert [r.status_code for r in answers] == [401, 401, 401, 429]
    assert answers[0].headers["WWW-Authenticate"] == "Bearer"
    assert int(answers[3].headers["Retry-After"]) >= 1
    assert small.status_code in (422, 429)  # small bodies are parsed as before: FastAPI reads them first


def test_validation_errors_are_cut_to_a_few_kib_saying_field_and_why(engine: Engine, tmp_path: Path) -> None:
    body = {"username": "a", "password": "b", **{f"junk{i}": i for i in range(1000)}}  # 15 KiB: under the limit
    with _client(engine, tmp_path) as client:
        r = client.post("/api/v1/session", json=body)
    assert r.status_code == 422
    assert len(r.content) < 4096
    problem = r.json()
    assert len(problem["errors"]) == MAX_ERRORS
    assert problem["errors"][0] == {"loc": ["body", "junk0"], "msg": "Extra inputs are not permitted",
                                    "type": "extra_forbidden"}
    assert "body.junk0: Extra inputs are not permitted" in problem["detail"]
    assert f"and {1000 - MAX_ERRORS} more errors" in problem["detail"]


def test_a_long_field_name_is_cut_in_the_error(engine: Engine, tmp_path: Path) -> None:
    with _client(engine, tmp_path) as client:
        r = client.post("/api/v1/session", json={"username": "a", "password": "b", "k" * 10_000: 1})
    assert r.status_code == 422
    assert len(r.content) < 1024
    assert r.json()["errors"][0]["loc"][1].endswith("…")


def test_a_slow_body_is_refused_with_408(engine: Engine, tmp_path: Path) -> None:
    settings = TwinSettings(data_dir=tmp_path, api_body_timeout_s=0.5)
    with serve_api(create_app(settings, engine)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /api/v1/session HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"username\":")
            start = time.monotonic()
            reply = b""
            while chunk := sock.recv(4096):  # the server answers and closes the connection
                reply += chunk
            waited = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"did not arrive within 0.5 s" in reply
    assert waited < 5


def test_bodies_within_the_limits_still_work(engine: Engine, tmp_path: Path) -> None:
    with _client(engine, tmp_path) as client:
        r = client.post("/api/v1/session", json={"username": "nobody", "password": "wrong password"})
    assert r.status_code == 401
