"""Work orders through the API: from an alert's advice to done, the alert acknowledged and its verdict stored as
feedback, the logbook, webhooks for a CMMS; the plan exported as CSV and iCalendar; comments and the badge."""

from __future__ import annotations

import csv
import io
import json

import icalendar
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from plant.site import Site
from tests.twin.alerts.test_api import api, raise_process_temperature  # noqa: F401 (the fixture)
from tests.twin.alerts.test_engine import mill, step
from twin.site_sync import sync_site
from twin.tables import WebhookDelivery


def _alert(client, auth) -> dict:
    (a,) = client.get("/api/v1/alerts", params={"open": "true"}, headers=auth["viewer"]).json()["items"]
    return a


def _subscribe(client, auth, name: str, **extra) -> int:
    body = {"name": name, "url": "http://127.0.0.1:9/hook", **extra}
    r = client.post("/api/v1/webhooks", headers=auth["admin"], json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_a_work_order_from_an_alert_to_done(site: Site, db: Engine, api) -> None:  # noqa: F811
    client, auth = api
    cmms = _subscribe(client, auth, "cmms")  # every kind: alerts and work orders
    limits_only = _subscribe(client, auth, "limits", kinds=["limit"])
    am = _subscribe(client, auth, "alertmanager", format="alertmanager")
    sync_site(db, site)
    engine = raise_process_temperature(site, db)
    alert = _alert(client, auth)

    d = client.get("/api/v1/work-orders/draft", params={"alert_id": alert["id"]}, headers=auth["viewer"]).json()
    assert (d["node"], d["priority"], d["alert_ids"]) == ("mill-1", alert["priority"], [alert["id"]])
    assert d["task"] == "Process temperature high"  # the knowledge base's entry for the rule
    assert d["steps"][0].startswith("Check coolant level")
    assert d["task_source"].startswith("cnc_mill/process-temperature@")
    new = {k: d[k] for k in ("node", "task", "task_source", "steps", "parts", "priority", "due", "alert_ids")}
    assert client.post("/api/v1/work-orders", json=new, headers=auth["viewer"]).status_code == 403
    r = client.post("/api/v1/work-orders", json=new | {"assignee": "tess"}, headers=auth["technician"])
    assert r.status_code == 201, r.text
    wo = r.json()
    assert (wo["state"], wo["assignee"], wo["alert_ids"]) == ("open", "tess", [alert["id"]])
    plan = client.get("/api/v1/maintenance-plan", headers=auth["viewer"]).json()
    assert plan["items"][0]["work_orders"] == [{"id": wo["id"], "state": "open", "assignee": "tess"}]

    assert client.post(f"/api/v1/work-orders/{wo['id']}/start", headers=auth["technician"]).json()["state"] == (
        "in_progress"
    )
    r = client.post(f"/api/v1/work-orders/{wo['id']}/complete", json={"cause": "x"}, headers=auth["technician"])
    assert r.status_code == 422  # alerts linked: the verdict is what the model learns from
    for t in range(12, 30):  # the condition clears while the technician works: the alert returns, unacknowledged
        step(engine, db, mill(t, temp=310.0))
    done = client.post(
        f"/api/v1/work-orders/{wo['id']}/complete",
        headers=auth["technician"],
        json={"verdict": "true_fault", "cause": "Coolant nozzle clogged", "notes": "cleaned both nozzles",
              "parts": [{"part": "Coolant suction filter", "quantity": 1, "number": "CF-200"}], "time_spent_h": 0.75},
    ).json()
    assert (done["state"], done["verdict"], done["time_spent_h"]) == ("done", "true_fault", 0.75)
    assert client.post(f"/api/v1/work-orders/{wo['id']}/cancel", json={"reason": "no"},
                       headers=auth["technician"]).status_code == 409  # fmt: skip
    closed = client.get(f"/api/v1/alerts/{alert['id']}", headers=auth["viewer"]).json()
    assert closed["state"] == "normal"  # returned, then acknowledged by the work order: closed
    fb = client.get("/api/v1/alerts/feedback", headers=auth["engineer"]).json()
    assert [(f["alert_id"], f["verdict"], f["cause"]) for f in fb] == [
        (alert["id"], "true_fault", "Coolant nozzle clogged")
    ]
    events = client.get(f"/api/v1/work-orders/{wo['id']}/events", headers=auth["viewer"]).json()
    assert [e["action"] for e in events] == ["create", "start", "complete"]
    assert events[2]["note"] == "Coolant nozzle clogged (true fault), 0.75 h"

    since = {"node": "mill-1", "start": "2026-01-01T00:00:00Z"}  # the engine's clock (T0) is in the past
    book = client.get("/api/v1/logbook", params=since, headers=auth["viewer"]).json()
    kinds = [(e["source"], e["kind"]) for e in book["items"]]
    assert ("work_orders", "done") in kinds
    assert ("alerts", "raised") in kinds
    assert ("alerts", "acknowledged") in kinds
    assert book["items"][0]["at"] >= book["items"][-1]["at"]
    r = client.get("/api/v1/logbook.csv", params={"node": "mill-1", "source": "work_orders"}, headers=auth["viewer"])
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["kind"] for x in rows] == ["done", "started", "created"]
    assert "\r\n" in r.text

    with Session(db) as s:
        sent = s.execute(select(WebhookDelivery.subscription_id, WebhookDelivery.event, WebhookDelivery.body)).all()
    wo_events = [(sub, ev) for sub, ev, _ in sent if ev.startswith("workorder.")]
    assert wo_events == [(cmms, "workorder.created"), (cmms, "workorder.started"), (cmms, "workorder.completed")]
    assert not any(sub in (limits_only, am) for sub, _ in wo_events)
    body = json.loads(next(b for sub, ev, b in sent if ev == "workorder.completed"))
    assert body["work_order"]["alert_ids"] == [alert["id"]]
    assert body["work_order"]["verdict"] == "true_fault"


def test_work_order_rules(site: Site, db: Engine, api) -> None:  # noqa: F811
    client, auth = api
    sync_site(db, site)
    raise_process_temperature(site, db)
    alert = _alert(client, auth)
    bad = client.post("/api/v1/work-orders", headers=auth["technician"],
                      json={"node": "pump-1", "task": "x", "alert_ids": [alert["id"]]})  # fmt: skip
    assert bad.status_code == 422  # the alert is on the mill
    assert client.post("/api/v1/work-orders", headers=auth["technician"],
                       json={"node": "nope", "task": "x"}).status_code == 404  # fmt: skip
    wo = client.post("/api/v1/work-orders", headers=auth["technician"],
                     json={"node": "mill-1", "task": "Check the spindle"}).json()  # fmt: skip
    r = client.patch(f"/api/v1/work-orders/{wo['id']}", headers=auth["technician"],
                     json={"assignee": "erin", "priority": "high"})  # fmt: skip
    assert (r.json()["assignee"], r.json()["priority"]) == ("erin", "high")
    done = client.post(f"/api/v1/work-orders/{wo['id']}/complete", headers=auth["technician"], json={}).json()
    assert done["state"] == "done"  # no alert linked: no verdict needed
    still = client.get(f"/api/v1/alerts/{alert['id']}", headers=auth["viewer"]).json()
    assert still["state"] == "active_unack"  # left alone
    page = client.get("/api/v1/work-orders", params={"state": "done"}, headers=auth["viewer"]).json()
    assert [w["id"] for w in page["items"]] == [wo["id"]]


def test_the_plan_as_csv_and_icalendar(site: Site, db: Engine, api) -> None:  # noqa: F811
    client, auth = api
    raise_process_temperature(site, db)
    alert = _alert(client, auth)
    r = client.get("/api/v1/maintenance-plan.csv", headers=auth["viewer"])
    assert r.status_code == 200
    assert 'attachment; filename="maintenance-plan-' in r.headers["content-disposition"]
    (row,) = list(csv.DictReader(io.StringIO(r.text)))
    assert (row["asset"], row["alert_id"], row["task"]) == ("mill-1", str(alert["id"]), "Process temperature high")
    assert row["why"] == alert["reason"]

    r = client.get("/api/v1/maintenance-plan.ics", headers=auth["viewer"])
    assert r.headers["content-type"].startswith("text/calendar")
    text = r.text
    assert text.startswith("BEGIN:VCALENDAR\r\n")
    assert text.endswith("END:VCALENDAR\r\n")
    assert "\n" not in text.replace("\r\n", "")  # CRLF only
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))  # folded
    cal = icalendar.Calendar.from_ical(text)
    (event,) = cal.walk("VEVENT")
    assert str(event["UID"]) == f"plan-alert-{alert['id']}@factory-twin"  # stable: a re-import updates it
    assert event["DTSTAMP"].dt.tzinfo is not None
    assert event["DTSTART"].dt.isoformat().startswith(row["due"][:16])
    assert "Process temperature high" in str(event["SUMMARY"])
    assert alert["reason"] in str(event["DESCRIPTION"])
    again = icalendar.Calendar.from_ical(client.get("/api/v1/maintenance-plan.ics", headers=auth["viewer"]).text)
    assert [str(e["UID"]) for e in again.walk("VEVENT")] == [str(event["UID"])]


def test_comments_history_the_badge_and_the_alarm_rate(site: Site, db: Engine, api) -> None:  # noqa: F811
    client, auth = api
    raise_process_temperature(site, db)
    alert = _alert(client, auth)
    assert client.post(f"/api/v1/alerts/{alert['id']}/comments", json={"text": "coolant low?"},
                       headers=auth["viewer"]).status_code == 403  # fmt: skip
    r = client.post(f"/api/v1/alerts/{alert['id']}/comments", json={"text": "coolant low?"},
                    headers=auth["technician"])  # fmt: skip
    assert r.status_code == 201
    assert (r.json()["action"], r.json()["reason"], r.json()["actor"]) == ("comment", "coolant low?", "technician-key")
    trail = client.get(f"/api/v1/alerts/{alert['id']}/transitions", headers=auth["viewer"]).json()
    assert [t["action"] for t in trail] == ["raise", "comment"]
    summary = client.get("/api/v1/alerts/summary", headers=auth["viewer"]).json()
    assert (summary["needs_ack"], summary["open"]) == (1, 1)
    client.post(f"/api/v1/alerts/{alert['id']}/shelve", json={"minutes": 5, "reason": "busy"}, headers=auth["engineer"])
    summary = client.get("/api/v1/alerts/summary", headers=auth["viewer"]).json()
    assert (summary["needs_ack"], summary["open"], summary["shelved"]) == (0, 1, 1)  # shelved: no badge
    rate = client.get("/api/v1/alerts/rate", headers=auth["viewer"]).json()
    assert rate["manageable"] == 2
    # raised at the test engine's clock, long ago: nothing in the last 10 minutes
    assert {b["area"]: (b["alarms"], b["band"]) for b in rate["bands"]} == {"machining": (0, "very likely acceptable")}


def test_the_eemua_191_bands() -> None:
    from twin.alerts.noise import eemua_band

    bands = [eemua_band(n) for n in (0, 1, 2, 3, 5, 6, 10, 11)]
    assert bands == ["very likely acceptable", "manageable", "manageable", "likely over-demanding",
                     "likely over-demanding", "over-demanding", "over-demanding", "very likely unacceptable"]
