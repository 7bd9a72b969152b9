"""Alert, advice and webhook routes: roles, filters, lifecycle actions with audit, knowledge, plan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from plant.site import Site
from plant.wire import Diagnosis
from tests.twin.alerts.test_engine import T0, S, mill, step
from twin.alerts import AlertEngine
from twin.api import create_app
from twin.api.routes import advice as advice_routes
from twin.api.routes import alerts as alert_routes
from twin.api.routes import webhooks as webhook_routes
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.knowledge import load_dir, sync_files

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def api(db: Engine, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    settings = TwinSettings(
        data_dir=tmp_path, webhook_allowlist=["127.0.0.1:*", "hooks.example.com"], webhook_allow_private=["127.0.0.1"]
    )
    app = create_app(settings, db)
    mounted = {getattr(r, "path", "") for r in app.routes}
    for router, probe in (
        (alert_routes.router, "/api/v1/alerts"),
        (advice_routes.router, "/api/v1/knowledge"),
        (webhook_routes.router, "/api/v1/webhooks"),
    ):
        if probe not in mounted:
            app.include_router(router, prefix="/api/v1")
    with Session(db) as s:
        auth = {
            role.value: {"Authorization": f"Bearer {create_key(s, role, f'{role.value}-key')}"}
            for role in Role
        }
    with Session(db) as s, s.begin():
        sync_files(s, load_dir(ROOT / "examples" / "knowledge"))
    with TestClient(app) as client:
        yield client, auth


def raise_process_temperature(site: Site, db: Engine) -> AlertEngine:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 12):
        step(engine, db, mill(t, temp=315.0))
    return engine


def test_viewer_reads_but_cannot_act(site: Site, db: Engine, api) -> None:
    client, auth = api
    raise_process_temperature(site, db)
    page = client.get("/api/v1/alerts", headers=auth["viewer"]).json()
    assert page["total"] == 1
    alert_id = page["items"][0]["id"]
    assert client.post(f"/api/v1/alerts/{alert_id}/acknowledge", headers=auth["viewer"]).status_code == 403
    assert (
        client.post(
            f"/api/v1/alerts/{alert_id}/shelve",
            json={"minutes": 5, "reason": "x"},
            headers=auth["technician"],
        ).status_code
        == 403
    )
    assert client.get("/api/v1/alerts").status_code == 401
    assert client.get("/api/v1/webhooks", headers=auth["engineer"]).status_code == 403


def test_lifecycle_through_the_api_with_audit(site: Site, db: Engine, api) -> None:
    client, auth = api
    engine = raise_process_temperature(site, db)
    (a,) = client.get("/api/v1/alerts", params={"state": "active_unack"}, headers=auth["viewer"]).json()[
        "items"
    ]
    r = client.post(
        f"/api/v1/alerts/{a['id']}/acknowledge",
        json={"reason": "seen, checking coolant"},
        headers=auth["technician"],
    )
    assert r.status_code == 200
    assert r.json()["state"] == "active_ack"
    r = client.post(f"/api/v1/alerts/{a['id']}/acknowledge", headers=auth["technician"])
    assert r.status_code == 409  # nothing left to acknowledge
    r = client.post(
        f"/api/v1/alerts/{a['id']}/shelve",
        json={"minutes": 30, "reason": "coolant top-up"},
        headers=auth["engineer"],
    )
    assert r.status_code == 200
    assert r.json()["shelved_until"]
    for t in range(12, 30):  # the condition clears: an acknowledged alert closes
        step(engine, db, mill(t, temp=310.0))
    a = client.get(f"/api/v1/alerts/{a['id']}", headers=auth["viewer"]).json()
    assert a["state"] == "normal"
    assert a["closed_at"]
    trail = client.get(f"/api/v1/alerts/{a['id']}/transitions", headers=auth["viewer"]).json()
    assert [(t["action"], t["actor"]) for t in trail] == [
        ("raise", "system"),
        ("acknowledge", "technician-key"),
        ("shelve", "engineer-key"),
        ("return", "system"),
    ]
    assert trail[1]["reason"] == "seen, checking coolant"
    assert trail[1]["to_state"] == "active_ack"
    fb = client.post(
        f"/api/v1/alerts/{a['id']}/feedback",
        headers=auth["technician"],
        json={"verdict": "true_fault", "cause": "Coolant nozzle clogged"},
    )
    assert fb.status_code == 201
    body = fb.json()
    assert body["window_start"] < body["window_end"]
    assert body["evidence"]["property"] == "process_temperature"
    assert (
        client.post(
            f"/api/v1/alerts/{a['id']}/feedback", headers=auth["technician"], json={"verdict": "maybe"}
        ).status_code
        == 422
    )
    exported = client.get(
        "/api/v1/alerts/feedback", params={"verdict": "true_fault"}, headers=auth["engineer"]
    )
    assert [f["cause"] for f in exported.json()] == ["Coolant nozzle clogged"]
    assert client.get("/api/v1/alerts/feedback", headers=auth["technician"]).status_code == 403


def test_filters(site: Site, db: Engine, api) -> None:
    client, auth = api
    raise_process_temperature(site, db)

    def get(**params: object) -> int:
        return client.get("/api/v1/alerts", params=params, headers=auth["viewer"]).json()["total"]

    assert get(subtree="machining") == 1
    assert get(subtree="utilities") == 0
    assert get(subtree="mill") == 0  # a prefix of a node id is not that node's subtree
    assert get(priority="critical") == 1
    assert get(priority=["low", "medium"]) == 0
    assert get(start="2026-01-01T00:00:00Z") == 1
    assert get(end="2026-01-01T00:00:00Z") == 0
    r = client.get(
        "/api/v1/alerts",
        params={"start": "2027-01-02T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
        headers=auth["viewer"],
    )
    assert r.status_code == 422
    assert client.get("/api/v1/alerts/999", headers=auth["viewer"]).status_code == 404
    assert client.get("/api/v1/alerts/rate", headers=auth["viewer"]).status_code == 200


def test_advice_and_maintenance_plan(site: Site, db: Engine, api) -> None:
    client, auth = api
    engine = raise_process_temperature(site, db)
    diag = Diagnosis(
        node="engine-1",
        task="rul",
        ts=T0 + 11 * S,
        model="rul",
        version="1",
        confidence=0.9,
        rul=30.0,
        unit="cycle",
    )
    step(engine, db, diagnoses=[diag])
    weak = Diagnosis(
        node="mill-1",
        task="faults",
        ts=T0 + 11 * S,
        model="f",
        version="1",
        confidence=0.3,
        label="HDF",
        probability=0.62,
    )
    step(engine, db, diagnoses=[weak])
    plan = client.get("/api/v1/maintenance-plan", headers=auth["viewer"]).json()
    by_rule = {i["rule"]: i for i in plan["items"]}
    assert set(by_rule) == {"process-temperature", "rul-low", "failure-predicted"}
    assert [i["due"] for i in plan["items"]] == sorted(i["due"] for i in plan["items"])
    rul = by_rule["rul-low"]
    # 30 cycles × 1.5 h = 45 h, less the 24 h lead time: due 21 h after the diagnosis
    assert rul["due_reason"].startswith(
        "RUL 30 cycles ≈ 45 h at 1.5 h/cycle; ≈ 45 h left, less 24 h lead time: change before "
    )
    assert rul["overdue"]  # T0 is in the past
    alert = client.get(f"/api/v1/alerts/{rul['alert_id']}", headers=auth["viewer"]).json()
    assert datetime.fromisoformat(rul["due"]) - datetime.fromisoformat(alert["raised_at"]) == timedelta(hours=21)
    assert alert["reason"] == "RUL 30 cycles, below the 50 cycles horizon"
    assert (alert["unit"], alert["limit"]) == ("cycles", 50.0)
    assert rul["advice"][0]["cause"].startswith("High-pressure compressor")
    assert rul["evidence"]["rul"] == 30.0
    confidences = [a["confidence"] for a in rul["advice"]]
    assert confidences == sorted(confidences, reverse=True)
    weak_advice = by_rule["failure-predicted"]["advice"]
    assert [a["kind"] for a in weak_advice] == ["inspect"]  # low-confidence diagnosis: inspect, not repair
    temp = client.get(
        f"/api/v1/alerts/{by_rule['process-temperature']['alert_id']}/advice", headers=auth["viewer"]
    ).json()
    assert temp["advice"][0]["kind"] == "repair"
    assert temp["due_reason"].startswith("critical")


def test_knowledge_crud_with_versions(db: Engine, api) -> None:
    client, auth = api
    assert (
        client.get("/api/v1/knowledge", params={"asset_type": "pump"}, headers=auth["viewer"]).json()["count"]
        == 11
    )
    entry = {
        "asset_type": "pump",
        "condition": "seal-leak",
        "title": "Mechanical seal leak",
        "causes": [{"cause": "Seal faces worn", "likelihood": 0.7}],
        "lead_time_h": 24,
    }
    assert client.post("/api/v1/knowledge", json=entry, headers=auth["technician"]).status_code == 403
    r = client.post("/api/v1/knowledge", json=entry, headers=auth["engineer"])
    assert r.status_code == 201
    assert r.json()["version"] == 1
    assert client.post("/api/v1/knowledge", json=entry, headers=auth["engineer"]).status_code == 409
    body = {k: v for k, v in entry.items() if k not in ("asset_type", "condition")}
    body["causes"].append({"cause": "Dry running", "likelihood": 0.3})
    r = client.put("/api/v1/knowledge/pump/seal-leak", json=body, headers=auth["engineer"])
    assert r.json()["version"] == 2
    versions = client.get("/api/v1/knowledge/pump/seal-leak/versions", headers=auth["viewer"]).json()
    assert [v["current"] for v in versions["items"]] == [False, True]
    bad = client.put(
        "/api/v1/knowledge/pump/seal-leak", json={"title": "x", "causes": []}, headers=auth["engineer"]
    )
    assert bad.status_code == 422
    assert client.delete("/api/v1/knowledge/pump/seal-leak", headers=auth["engineer"]).status_code == 204
    assert client.get("/api/v1/knowledge/pump/seal-leak", headers=auth["viewer"]).status_code == 404


def test_webhook_admin(db: Engine, api) -> None:
    client, auth = api
    r = client.post(
        "/api/v1/webhooks", headers=auth["admin"], json={"name": "ops", "url": "https://evil.test/x"}
    )
    assert r.status_code == 422  # not in the allowlist
    r = client.post(
        "/api/v1/webhooks",
        headers=auth["admin"],
        json={"name": "ops", "url": "https://hooks.example.com/ft", "priorities": ["critical"]},
    )
    assert r.status_code == 201
    assert len(r.json()["secret"]) >= 32
    sub = r.json()["id"]
    assert "secret" not in client.get(f"/api/v1/webhooks/{sub}", headers=auth["admin"]).json()
    r = client.patch(f"/api/v1/webhooks/{sub}", headers=auth["admin"], json={"format": "alertmanager"})
    assert r.json()["format"] == "alertmanager"
    assert client.get(f"/api/v1/webhooks/{sub}/deliveries", headers=auth["admin"]).json()["total"] == 0
    assert client.post(f"/api/v1/webhooks/{sub}/replay", headers=auth["admin"]).json() == {"replayed": 0}
    assert (
        client.post(
            f"/api/v1/webhooks/{sub}/replay", headers=auth["admin"], json={"delivery_ids": [12345]}
        ).status_code
        == 404
    )
    assert client.delete(f"/api/v1/webhooks/{sub}", headers=auth["admin"]).status_code == 204
    assert client.get(f"/api/v1/webhooks/{sub}", headers=auth["admin"]).status_code == 404
