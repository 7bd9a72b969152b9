"""Who may call what: 401 without a valid key, 403 with too low a role, and key management through the API."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from plant.wire import now_us
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.tables import ApiKey, HistoryRow, TwinNode, TwinProperty

READS = [
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/nodes/m1"),
    ("GET", "/api/v1/nodes/m1/properties/temp"),
    ("GET", "/api/v1/nodes/m1/properties/temp/history"),
    ("GET", "/api/v1/nodes/m1/frames"),
]
ADMIN = [
    ("GET", "/api/v1/keys"),
    ("POST", "/api/v1/keys"),
    ("DELETE", "/api/v1/keys/ftk_000000000000"),
]


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    engine = empty_engine
    with make_sessionmaker(engine)() as s:
        s.add(TwinNode(id="m1", parent_id=None, path="/m1/", kind="machine", name="Machine 1"))
        s.flush()
        prop = TwinProperty(node_id="m1", name="temp", unit="°C", value_num=20.5, ts=now_us(), quality=0)
        s.add(prop)
        s.flush()
        s.add(HistoryRow(property_id=prop.id, ts=prop.ts, value_num=20.5, quality=0))
        s.commit()
    return engine


@pytest.fixture
def keys(engine: Engine) -> dict[Role, str]:
    with make_sessionmaker(engine)() as s:
        return {role: create_key(s, role, f"{role.value} key") for role in Role}


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    # these tests send wrong keys by the dozen on purpose; the lock-out they would earn is tested on its own
    app = create_app(TwinSettings(data_dir=tmp_path, auth_address_failures=10_000), engine)
    with TestClient(app) as c:
        yield c


def _call(client: TestClient, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": key if key is None or " " in key else f"Bearer {key}"} if key else {}
    if method == "POST":
        kw.setdefault("json", {"role": "viewer", "name": "made in a test"})
    return client.request(method, path, headers=headers, **kw)


def test_no_valid_key_is_401(client: TestClient, keys: dict[Role, str]) -> None:
    admin = keys[Role.ADMIN]
    bad = {
        "missing": None,
        "not bearer": f"Basic {admin}",
        "garbage": "Bearer nonsense",
        "unknown key, well formed": "Bearer ftk_0123456789ab_" + "x" * 43,
        "known prefix, wrong secret": f"Bearer {admin[:17]}{'y' * 43}",
        "truncated": f"Bearer {admin[:-1]}",
    }
    for method, path in READS + ADMIN:
        for why, header in bad.items():
            r = _call(client, method, path, header)
            assert r.status_code == 401, (method, path, why, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["status"] == 401


def test_role_matrix(client: TestClient, keys: dict[Role, str]) -> None:
    for method, path in READS + ADMIN:
        needed = Role.ADMIN if path.startswith("/api/v1/keys") else Role.VIEWER
        for role, key in keys.items():
            r = _call(client, method, path, key)
            if role >= needed:
                expected = 404 if "ftk_000000000000" in path else 201 if method == "POST" else 200
                assert r.status_code == expected, (method, path, role, r.text)
            else:
                assert r.status_code == 403, (method, path, role, r.text)
                assert needed.value in r.json()["detail"]


def test_create_use_revoke(client: TestClient, keys: dict[Role, str]) -> None:
    admin = {"Authorization": f"Bearer {keys[Role.ADMIN]}"}
    r = client.post("/api/v1/keys", json={"role": "technician", "name": "tablet 3"}, headers=admin)
    assert r.status_code == 201
    made = r.json()
    new_key = made["key"]
    assert new_key.startswith(made["prefix"] + "_")
    assert (made["role"], made["name"], made["revoked"]) == ("technician", "tablet 3", False)

    mine = {"Authorization": f"Bearer {new_key}"}
    assert client.get("/api/v1/nodes/m1", headers=mine).status_code == 200
    assert client.get("/api/v1/keys", headers=mine).status_code == 403

    listed = client.get("/api/v1/keys", headers=admin).json()
    assert listed["count"] == len(Role) + 1
    entry = next(k for k in listed["items"] if k["prefix"] == made["prefix"])
    assert set(entry) == {"prefix", "name", "role", "created_at", "last_used_at", "revoked", "expires_at", "owner",
                          "rotated_to", "state", "sites"}
    assert entry["last_used_at"] is not None
    assert new_key not in str(listed)

    revoked = client.delete(f"/api/v1/keys/{made['prefix']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    r = client.get("/api/v1/nodes/m1", headers=mine)
    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]
    assert client.delete(f"/api/v1/keys/{made['prefix']}", headers=admin).status_code == 200  # idempotent
    assert client.delete("/api/v1/keys/ftk_ffffffffffff", headers=admin).status_code == 404


def test_create_key_bad_body_is_422(client: TestClient, keys: dict[Role, str]) -> None:
    admin = {"Authorization": f"Bearer {keys[Role.ADMIN]}"}
    for body in (
        {"role": "root"},
        {"name": "no role"},
        {"role": "viewer", "name": "x" * 200},
        {"role": None},
    ):
        r = client.post("/api/v1/keys", json=body, headers=admin)
        assert r.status_code == 422, body
        assert r.json()["errors"]
    r = client.post(
        "/api/v1/keys", content=b"{not json", headers=admin | {"Content-Type": "application/json"}
    )
    assert r.status_code == 422


def test_last_used_is_written_cheaply(client: TestClient, keys: dict[Role, str], engine: Engine) -> None:
    headers = {"Authorization": f"Bearer {keys[Role.VIEWER]}"}
    prefix = keys[Role.VIEWER][:16]
    with make_sessionmaker(engine)() as s:

        def last_used() -> int | None:
            s.rollback()  # a fresh snapshot each time
            return s.scalars(select(ApiKey.last_used_at).where(ApiKey.prefix == prefix)).one()

        assert last_used() is None
        client.get("/api/v1/nodes", headers=headers)
        first = last_used()
        assert first is not None
        client.get("/api/v1/nodes", headers=headers)
        assert last_used() == first  # within the resolution: no second write


def test_every_v1_route_requires_a_key(client: TestClient) -> None:
    """Every operation under /api/v1 in the OpenAPI document, whoever added it, answers 401 without a key."""
    spec = client.app.openapi()
    operations = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
        and (method, path) != ("post", "/api/v1/session")  # logging in is how one gets a key
    ]
    assert len(operations) >= len(READS + ADMIN)
    for method, path in operations:
        r = client.request(method, path, json={} if method in {"POST", "PUT", "PATCH"} else None)
        assert r.status_code == 401, (method, path, r.status_code)
