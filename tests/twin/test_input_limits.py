"""Bad input is a 422 that names the field and the reason, never a 5xx, on SQLite and PostgreSQL.

Ids beyond what a database row id can be, NUL and other control characters (PostgreSQL cannot store NUL),
strings beyond their limit, timestamps outside 1970-2200, non-finite numbers: each is refused before a
database session sees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.conftest import module_app, reset_app
from tests.twin.test_api import seed
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings

HUGE = 2**63


@pytest.fixture(scope="module")
def app(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Engine]]:
    with module_app(module_db_url, TwinSettings(data_dir=tmp_path_factory.mktemp("limits"))) as running:
        yield running


@pytest.fixture
def admin(app: tuple[TestClient, Engine]) -> tuple[TestClient, dict[str, str]]:
    client, engine = app
    reset_app(client)
    seed(engine)
    with Session(engine) as s:
        headers = {"Authorization": f"Bearer {create_key(s, Role.ADMIN, 'admin')}"}
    return client, headers


def refused(r: Any, field: str, why: str) -> None:
    assert r.status_code == 422, (r.status_code, r.text)
    body = r.json()
    assert any(e["loc"][-1] == field or field in e["loc"] for e in body["errors"]), body
    assert why in body["detail"], body


@pytest.mark.parametrize(
    ("method", "url", "field"),
    [
        ("get", f"/api/v1/alerts/{2**31}", "alert_id"),
        ("get", f"/api/v1/alerts/{HUGE}/advice", "alert_id"),
        ("get", f"/api/v1/alerts/{HUGE}/feedback", "alert_id"),
        ("post", f"/api/v1/alerts/{HUGE}/acknowledge", "alert_id"),
        ("get", f"/api/v1/work-orders/{HUGE}", "wo_id"),
        ("get", f"/api/v1/work-orders/draft?alert_id={HUGE}", "alert_id"),
        ("get", f"/api/v1/webhooks/{HUGE}/deliveries", "sub_id"),
        ("delete", f"/api/v1/webhooks/{HUGE}", "sub_id"),
        ("get", "/api/v1/alerts/0", "alert_id"),
        ("get", f"/api/v1/alerts?offset={HUGE}", "offset"),
    ],
)
def test_ids_beyond_a_row_id_are_422(admin, method: str, url: str, field: str) -> None:
    client, headers = admin
    why = "greater than or equal to 1" if url.endswith("/0") else "less than or equal to 2147483647"
    refused(client.request(method, url, headers=headers), field, why)


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("/api/v1/nodes/mill%00-1", {}, "node_id"),
        ("/api/v1/nodes", {"root": "pl\x00ant"}, "root"),
        ("/api/v1/alerts", {"subtree": "hall\x00"}, "subtree"),
        ("/api/v1/work-orders", {"assignee": "tess\x07"}, "assignee"),
        ("/api/v1/logbook", {"node": "\x00"}, "node"),
        ("/api/v1/knowledge", {"asset_type": "pump\x00"}, "asset_type"),
        ("/api/v1/maintenance-plan", {"subtree": "a\x1bb"}, "subtree"),
        ("/api/v1/nodes/mill-1/properties/spindle_speed/history", {"cursor": "abc\x00"}, "cursor"),
    ],
)
def test_control_characters_in_parameters_are_422(admin, url: str, params: dict[str, str], field: str) -> None:
    client, headers = admin
    refused(client.get(url, params=params, headers=headers), field, "control characters")


def test_control_characters_and_lengths_in_bodies_are_422(admin) -> None:
    client, headers = admin
    cases = [
        ("/api/v1/work-orders", {"node": "mill-1", "task": "Fix\x00it"}, "task", "control characters"),
        ("/api/v1/work-orders", {"node": "mill-1", "task": "x" * 201}, "task", "at most 200"),
        ("/api/v1/work-orders", {"node": "mill-1", "task": "t", "alert_ids": [HUGE]}, "alert_ids", "less than"),
        ("/api/v1/work-orders", {"node": "mill-1", "task": "t", "due": "9999-01-01T00:00:00Z"}, "due", "between"),
        ("/api/v1/webhooks", {"name": "ops\x00", "url": "https://hooks.example.com/"}, "name", "control"),
        ("/api/v1/webhooks", {"name": "ops", "url": "https://hooks.example.com/\x00"}, "url", "control"),
        ("/api/v1/keys", {"role": "viewer", "name": "n\x00"}, "name", "control characters"),
        ("/api/v1/models/rul/1.0.0/failures", {"gateway": "gw\x00", "asset_type": "pump", "reason": "r"},
         "gateway", "control characters"),
        ("/api/v1/session", {"username": "adm\x00in", "password": "12345678"}, "username", "control characters"),
    ]  # fmt: skip
    for url, body, field, why in cases:
        refused(client.post(url, json=body, headers=headers), field, why)


def test_free_text_keeps_newlines_but_not_nul(admin) -> None:
    client, headers = admin
    body = {"node": "mill-1", "task": "Replace the seal", "steps": ["Isolate\n\tthen drain"]}
    assert client.post("/api/v1/work-orders", json=body, headers=headers).status_code == 201
    wo = client.get("/api/v1/work-orders", headers=headers).json()["items"][0]["id"]
    ok = client.post(f"/api/v1/work-orders/{wo}/notes", json={"text": "line one\nline two"}, headers=headers)
    assert ok.status_code == 200
    refused(client.post(f"/api/v1/work-orders/{wo}/notes", json={"text": "a\x00b"}, headers=headers), "text", "U+0000")


def test_timestamps_out_of_range_are_422(admin) -> None:
    client, headers = admin
    for value in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z"):
        refused(client.get("/api/v1/alerts", params={"start": value}, headers=headers), "start", "between")
        refused(client.get("/api/v1/logbook", params={"end": value}, headers=headers), "end", "between")
    r = client.get("/api/v1/nodes/mill-1/properties/spindle_speed/history", params={"start": "0001-01-01T00:00:00Z"},
                   headers=headers)  # fmt: skip
    refused(r, "start", "between")


def test_non_finite_numbers_in_stored_json_are_422(admin) -> None:
    client, headers = admin
    body = '{"asset_type": "pump", "condition": "x", "title": "t", "causes": [{"cause": "c"}], "duration_h": NaN}'
    r = client.post("/api/v1/knowledge", content=body, headers=headers | {"Content-Type": "application/json"})
    refused(r, "duration_h", "finite")


def _unbounded(schema: dict[str, Any], where: str, components: dict[str, Any], seen: frozenset[str]) -> list[str]:
    """Where a request schema lets a value grow without limit: strings, integers, arrays, open objects."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return [] if name in seen else _unbounded(components[name], f"{where}<{name}>", components, seen | {name})
    alternatives = [s for k in ("anyOf", "oneOf", "allOf") for s in schema.get(k, [])]
    found = [x for s in alternatives for x in _unbounded(s, where, components, seen)]
    kind, enum = schema.get("type"), "enum" in schema or "const" in schema
    free_text = schema.get("format") not in ("date-time", "binary")
    if kind == "string" and not enum and free_text and "maxLength" not in schema:
        found.append(f"string {where}")
    if kind == "integer" and not enum and ("minimum" not in schema or "maximum" not in schema):
        found.append(f"integer {where}")
    if kind == "array":
        items = schema.get("items", {})
        if "maxItems" not in schema and "enum" not in items:
            found.append(f"array {where}")
        found += _unbounded(items, f"{where}[]", components, seen)
    nested = {**schema.get("properties", {}), **{f"~{k}": v for k, v in schema.get("patternProperties", {}).items()}}
    if isinstance(schema.get("additionalProperties"), dict):
        nested["*"] = schema["additionalProperties"]
    if ("*" in nested or schema.get("patternProperties")) and "maxProperties" not in schema:
        found.append(f"object {where}")
    for name, sub in nested.items():
        found += _unbounded(sub, f"{where}.{name}", components, seen)
    return found


def test_every_parameter_and_request_field_is_bounded(tmp_path: Path) -> None:
    spec = create_app(TwinSettings(data_dir=tmp_path)).openapi()
    components = spec["components"]["schemas"]
    found = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for p in op.get("parameters", []):
                found += _unbounded(p["schema"], f"{method.upper()} {path} {p['name']}", components, frozenset())
            for content in op.get("requestBody", {}).get("content", {}).values():
                if "schema" in content:
                    found += _unbounded(content["schema"], f"{method.upper()} {path} body", components, frozenset())
    assert found == []
