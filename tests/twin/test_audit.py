"""The audit trail: each state-changing action leaves exactly one record (who, from where, what, before and
after); the records are append-only in the database itself; retention purges only what is old enough; the
admin reads them filtered and as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from migrations import run as migrations
from plant.wire import now_us
from tests.conftest import migrated_engine, module_app, reset_app
from twin import audit
from twin.alerts import lifecycle
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.model_registry import pack
from twin.tables import AuditRecord, Base, TwinNode
from twin.users import create_user

from ..model_archives import model_copy

PASSWORD = "correct horse battery"
HOOK = "https://cmms.example.com/hooks/twin"  # a name: literal test-net addresses are refused as targets


@dataclass
class Api:
    """A running app on a fresh database with a pump, an open alert, users and a key per role."""

    client: TestClient
    engine: Engine
    keys: dict[Role, str]
    alert_id: int
    tmp: Path
    state: dict[str, Any] = field(default_factory=dict)

    def call(self, method: str, path: str, role: Role | None = Role.ADMIN, token: str | None = None,
             **kw: Any) -> Response:
        key = token or (self.keys[role] if role else None)
        headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {key}"} if key else {})}
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)

    def login(self, username: str, password: str = PASSWORD) -> Response:
        return self.client.post("/api/v1/session", json={"username": username, "password": password})

    def records(self) -> list[AuditRecord]:
        with make_sessionmaker(self.engine)() as s:
            return list(s.scalars(select(AuditRecord).order_by(AuditRecord.id)))


def _seed(engine: Engine) -> tuple[dict[Role, str], int]:
    with make_sessionmaker(engine)() as s:
        s.add(TwinNode(id="p1", parent_id=None, path="/p1/", kind="machine", name="Pump 1", type="pump"))
        s.flush()
        alert = lifecycle.raise_alert(
            s, key="p1/current/hi", node_id="p1", node_path="/p1/", asset_type="pump", rule="current", kind="limit",
            condition="HI", severity="medium", criticality="high", level=1, message="Motor current high", value=4.9,
            evidence={}, at=now_us() - 60_000_000,
        )
        s.commit()
        alert_id = alert.id
        for name, role in (("ada", Role.ADMIN), ("tess", Role.TECHNICIAN), ("ed", Role.ENGINEER)):
            create_user(s, name, PASSWORD, role)
        return {role: create_key(s, role, f"{role.value} key") for role in Role}, alert_id


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Engine]]:
    """One app for the module, on SQLite; ``api`` empties its database for each test."""
    tmp = tmp_path_factory.mktemp("audit")
    settings = TwinSettings(data_dir=tmp, model_dir=tmp / "no-registry", webhook_allowlist=["cmms.example.com"])
    with module_app(f"sqlite:///{tmp / 'twin.db'}", settings) as running:
        yield running


@pytest.fixture
def api(app: tuple[TestClient, Engine], tmp_path: Path) -> Api:
    client, engine = app
    reset_app(client)
    keys, alert_id = _seed(engine)
    return Api(client, engine, keys, alert_id, tmp_path)


# --- each action leaves exactly one record ---------------------------------------------------------------------

Act = Callable[[Api], Response]


def _work_order(api: Api, *then: str) -> int:
    r = api.call("POST", "/work-orders", Role.TECHNICIAN, json={"node": "p1", "task": "Check the motor"})
    wo = int(r.json()["id"])
    for step in then:
        api.call("POST", f"/work-orders/{wo}/{step}", Role.TECHNICIAN, json={})
    return wo


def _webhook(api: Api) -> int:
    return int(api.call("POST", "/webhooks", json={"name": "cmms", "url": HOOK}).json()["id"])


def _knowledge(api: Api) -> dict[str, Any]:
    body = {"title": "Bearing wear", "causes": [{"cause": "worn bearing"}]}
    api.call("POST", "/knowledge", Role.ENGINEER, json={"asset_type": "pump", "condition": "WEAR", **body})
    return body


def _upload(api: Api, version: str) -> Response:
    directory = model_copy(api.tmp / f"m{version}", version="1.0.0", new_version=version, drop=("teacher",))
    r = api.call("POST", "/models", Role.ENGINEER, content=pack(directory),
                 headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    return r


def _promote(api: Api, version: str) -> Response:
    return api.call("POST", f"/models/anomaly/{version}/promote", Role.ENGINEER, json={"asset_type": "pump"})


def _session_of(api: Api, username: str) -> str:
    return str(api.login(username).json()["token"])


CASES: dict[str, tuple[Callable[[Api], Any] | None, Callable[[Api, Any], Response], str]] = {
    # action: (prepare, act, target)
    "alert.comment": (None, lambda a, _: a.call("POST", f"/alerts/{a.alert_id}/comments", Role.TECHNICIAN,
                                                json={"text": "smells hot"}), "alert:{alert}"),
    "alert.acknowledge": (None, lambda a, _: a.call("POST", f"/alerts/{a.alert_id}/acknowledge", Role.TECHNICIAN,
                                                    json={"reason": "on it"}), "alert:{alert}"),
    "alert.shelve": (None, lambda a, _: a.call("POST", f"/alerts/{a.alert_id}/shelve", Role.ENGINEER,
                                               json={"minutes": 30, "reason": "sensor swap"}), "alert:{alert}"),
    "alert.unshelve": (
        lambda a: a.call("POST", f"/alerts/{a.alert_id}/shelve", Role.ENGINEER, json={"minutes": 30, "reason": "x"}),
        lambda a, _: a.call("POST", f"/alerts/{a.alert_id}/unshelve", Role.ENGINEER, json={}), "alert:{alert}"),
    "alert.feedback": (None, lambda a, _: a.call("POST", f"/alerts/{a.alert_id}/feedback", Role.TECHNICIAN,
                                                 json={"verdict": "false_alarm"}), "alert:{alert}"),
    "work_order.create": (None, lambda a, _: a.call("POST", "/work-orders", Role.TECHNICIAN,
                                                    json={"node": "p1", "task": "Check"}), "work_order:"),
    "work_order.update": (_work_order, lambda a, wo: a.call("PATCH", f"/work-orders/{wo}", Role.TECHNICIAN,
                                                            json={"assignee": "tess"}), "work_order:{prep}"),
    "work_order.start": (_work_order, lambda a, wo: a.call("POST", f"/work-orders/{wo}/start", Role.TECHNICIAN,
                                                           json={}), "work_order:{prep}"),
    "work_order.note": (_work_order, lambda a, wo: a.call("POST", f"/work-orders/{wo}/notes", Role.TECHNICIAN,
                                                          json={"text": "ordered a bearing"}), "work_order:{prep}"),
    "work_order.complete": (lambda a: _work_order(a, "start"),
                            lambda a, wo: a.call("POST", f"/work-orders/{wo}/complete", Role.TECHNICIAN,
                                                 json={"notes": "replaced"}), "work_order:{prep}"),
    "work_order.cancel": (_work_order, lambda a, wo: a.call("POST", f"/work-orders/{wo}/cancel", Role.TECHNICIAN,
                                                            json={"reason": "duplicate"}), "work_order:{prep}"),
    "user.create": (None, lambda a, _: a.call("POST", "/users", json={"username": "olga", "password": PASSWORD,
                                                                       "role": "viewer"}), "user:olga"),
    "user.set_role": (None, lambda a, _: a.call("PATCH", "/users/tess", json={"role": "engineer"}), "user:tess"),
    "user.disable": (None, lambda a, _: a.call("PATCH", "/users/tess", json={"disabled": True}), "user:tess"),
    "user.set_sites": (None, lambda a, _: a.call("PATCH", "/users/tess", json={"sites": ["p1"]}), "user:tess"),
    "user.enable": (lambda a: a.call("PATCH", "/users/tess", json={"disabled": True}),
                    lambda a, _: a.call("PATCH", "/users/tess", json={"disabled": False}), "user:tess"),
    "user.delete": (None, lambda a, _: a.call("DELETE", "/users/tess"), "user:tess"),
    "user.reset_password": (None, lambda a, _: a.call("POST", "/users/tess/password",
                                                      json={"password": "another long one"}), "user:tess"),
    "user.end_sessions": (lambda a: _session_of(a, "tess"),
                          lambda a, _: a.call("DELETE", "/users/tess/sessions"), "user:tess"),
    "user.end_session": (lambda a: _session_of(a, "tess"),
                         lambda a, tok: a.call("DELETE", f"/users/tess/sessions/{tok[:16]}"), "user:tess"),
    "account.change_password": (lambda a: _session_of(a, "tess"),
                                lambda a, tok: a.call("POST", "/account/password", token=tok,
                                                      json={"current": PASSWORD, "new": "a new long one"}),
                                "user:tess"),
    "account.end_session": (lambda a: (_session_of(a, "tess"), _session_of(a, "tess")),
                            lambda a, toks: a.call("DELETE", f"/account/sessions/{toks[0][:16]}", token=toks[1]),
                            "user:tess"),
    "session.login": (None, lambda a, _: a.login("tess"), "user:tess"),
    "session.login_failed": (None, lambda a, _: a.login("tess", "not the password"), "user:tess"),
    "session.logout": (lambda a: _session_of(a, "tess"),
                       lambda a, tok: a.call("DELETE", "/session", token=tok), "user:tess"),
    "key.create": (None, lambda a, _: a.call("POST", "/keys", json={"role": "viewer", "name": "wall"}), "key:"),
    "key.rotate": (None, lambda a, _: a.call("POST", f"/keys/{a.keys[Role.VIEWER][:16]}/rotate", json={}),
                   "key:{viewer}"),
    "key.revoke": (None, lambda a, _: a.call("DELETE", f"/keys/{a.keys[Role.VIEWER][:16]}"), "key:{viewer}"),
    "webhook.create": (None, lambda a, _: a.call("POST", "/webhooks", json={"name": "cmms", "url": HOOK}),
                       "webhook:"),
    "webhook.update": (_webhook, lambda a, w: a.call("PATCH", f"/webhooks/{w}", json={"enabled": False}),
                       "webhook:{prep}"),
    "webhook.delete": (_webhook, lambda a, w: a.call("DELETE", f"/webhooks/{w}"), "webhook:{prep}"),
    "webhook.replay": (_webhook, lambda a, w: a.call("POST", f"/webhooks/{w}/replay", json={}), "webhook:{prep}"),
    "knowledge.create": (None, lambda a, _: a.call("POST", "/knowledge", Role.ENGINEER, json={
        "asset_type": "pump", "condition": "WEAR", "title": "Wear", "causes": [{"cause": "bearing"}]}),
        "knowledge:pump/WEAR"),
    "knowledge.update": (_knowledge, lambda a, body: a.call("PUT", "/knowledge/pump/WEAR", Role.ENGINEER,
                                                            json={**body, "title": "Bearing wear, advanced"}),
                         "knowledge:pump/WEAR"),
    "knowledge.delete": (_knowledge, lambda a, _: a.call("DELETE", "/knowledge/pump/WEAR", Role.ENGINEER),
                         "knowledge:pump/WEAR"),
    "model.upload": (None, lambda a, _: _upload(a, "1.0.0"), "model:anomaly/1.0.0"),
    "model.promote": (lambda a: _upload(a, "1.0.0"), lambda a, _: _promote(a, "1.0.0"), "model:anomaly/pump"),
    "model.rollback": (lambda a: (_upload(a, "1.0.0"), _upload(a, "1.1.0"), _promote(a, "1.1.0")),
                       lambda a, _: _promote(a, "1.0.0"), "model:anomaly/pump"),
}


@pytest.mark.parametrize("action", list(CASES))
def test_each_action_leaves_exactly_one_record(api: Api, action: str) -> None:
    prepare, act, target = CASES[action]
    prep = prepare(api) if prepare else None
    before = len(api.records())
    response = act(api, prep)
    assert response.status_code < 500, response.text
    assert response.status_code < 400 or action == "session.login_failed", response.text
    new = api.records()[before:]
    assert [r.action for r in new] == [action]
    rec = new[0]
    expected = target.format(alert=api.alert_id, prep=prep, viewer=api.keys[Role.VIEWER][:16])
    assert rec.target.startswith(expected) if expected.endswith(":") else rec.target == expected
    assert rec.actor  # who
    assert rec.address == "testclient"  # from where
    assert rec.at <= now_us()
    if action.startswith("session.") or action.startswith("account."):
        assert rec.actor == "tess"
    assert rec.before is not None or rec.after is not None or action.endswith("password")
    recorded = str(rec.before) + str(rec.after)
    assert all(secret not in recorded for secret in (PASSWORD, "not the password", "a new long one", "scrypt"))


def test_a_refused_change_leaves_no_record(api: Api) -> None:
    before = len(api.records())
    assert api.call("PATCH", "/users/tess", Role.ENGINEER, json={"disabled": True}).status_code == 403
    assert api.call("PATCH", "/users/nobody", json={"disabled": True}).status_code == 404
    assert api.call("POST", "/users", json={"username": "tess", "password": PASSWORD, "role": "viewer"}).status_code \
        == 409
    assert len(api.records()) == before


def test_a_typed_name_with_control_characters_is_recorded_readably(api: Api) -> None:
    with make_sessionmaker(api.engine)() as s:
        audit.record(s, "ada", "session.login_failed", "user:bad\x00name\x1b[31m")
        s.commit()
    assert api.records()[-1].target == "user:bad\ufffdname\ufffd[31m"
    assert api.login("bad\x00name").status_code == 422


def test_the_record_says_who_with_a_person_or_a_key(api: Api) -> None:
    token = _session_of(api, "ada")
    api.call("PATCH", "/users/tess", token=token, json={"role": "viewer"})
    api.call("PATCH", "/users/tess", json={"role": "engineer"})
    by_person, by_key = api.records()[-2:]
    assert by_person.actor == "ada"
    assert by_person.before == {"username": "tess", "role": "technician", "disabled": False, "sites": None}
    assert by_person.after == {"username": "tess", "role": "viewer", "disabled": False, "sites": None}
    assert by_key.actor == f"key {api.keys[Role.ADMIN][:16]} (admin key)"


# --- reading it --------------------------------------------------------------------------------------------------


def test_filters_pages_and_csv(api: Api) -> None:
    for name in ("tess", "ed"):
        api.call("PATCH", f"/users/{name}", json={"disabled": True})
        api.call("PATCH", f"/users/{name}", json={"disabled": False})
    everything = api.call("GET", "/audit").json()
    assert everything["count"] == 4
    assert [i["action"] for i in everything["items"]] == ["user.enable", "user.disable"] * 2  # newest first
    only = api.call("GET", "/audit", params={"target": "user:tess", "action": "user.disable"}).json()
    assert [(i["action"], i["target"]) for i in only["items"]] == [("user.disable", "user:tess")]
    assert api.call("GET", "/audit", params={"action": "user."}).json()["count"] == 4
    assert api.call("GET", "/audit", params={"actor": "nobody"}).json()["count"] == 0
    page = api.call("GET", "/audit", params={"limit": 3}).json()
    assert page["count"] == 3
    rest = api.call("GET", "/audit", params={"before_id": page["next_before_id"]}).json()
    assert rest["count"] == 1
    later = api.call("GET", "/audit", params={"since": "2100-01-01T00:00:00Z"}).json()
    assert later["count"] == 0
    r = api.call("GET", "/audit.csv", params={"target": "user:ed"})
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["action"] for row in rows] == ["user.enable", "user.disable"]
    assert '"disabled": true' in rows[1]["after"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"before_id": 0},
        {"before_id": 2**31},  # beyond any row id: PostgreSQL's integer column would refuse it with a 503
        {"before_id": 2**63},
        {"action": "DROP TABLE"},
        {"actor": "x" * 161},
        {"actor": "ada\x00"},
        {"target": "user:\x01"},
        {"since": "yesterday"},
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00"},  # no time zone
    ],
)
def test_bad_filters_are_422(api: Api, params: dict[str, Any]) -> None:
    r = api.call("GET", "/audit", params=params)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("role", [Role.ENGINEER, Role.TECHNICIAN, Role.VIEWER, Role.AGENT])
def test_only_an_admin_reads_the_audit_trail(api: Api, role: Role) -> None:
    assert api.call("GET", "/audit", role).status_code == 403
    assert api.call("GET", "/audit.csv", role).status_code == 403
    assert api.call("GET", "/audit", None).status_code == 401


# --- append-only, in the database itself ------------------------------------------------------------------------


@pytest.fixture
def migrated(db_url: str) -> Iterator[Engine]:
    """A database at the newest revision: the triggers as the migration makes them."""
    with migrated_engine(db_url) as engine:
        yield engine


def _add(engine: Engine, at: int, n: int = 1) -> None:
    with make_sessionmaker(engine)() as s:
        for _ in range(n):
            row = audit.record(s, "ada", "user.disable", "user:tess", before={"disabled": False}, after={})
            row.at = at
        s.commit()


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(AuditRecord)).scalar_one())


@pytest.mark.parametrize("made_by", ["migration", "create_all"])
def test_the_database_refuses_to_change_or_delete_a_record(db_url: str, made_by: str) -> None:
    if made_by == "migration":
        migrations.upgrade(db_url)
    engine = make_engine(db_url)
    if made_by == "create_all":
        Base.metadata.create_all(engine)
    try:
        _add(engine, now_us() - 400 * 86_400_000_000)
        for statement in (update(AuditRecord).values(actor="someone else"), delete(AuditRecord)):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(statement)
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text("TRUNCATE twin_audit"))
        assert _count(engine) == 1
    finally:
        engine.dispose()


def test_retention_purges_old_records_only(migrated: Engine) -> None:
    now = now_us()
    day = 86_400_000_000
    _add(migrated, now - 40 * day, 3)
    _add(migrated, now - 10 * day, 2)
    with make_sessionmaker(migrated)() as s:
        assert audit.purge(s, 0) == 0  # 0 keeps everything
        assert audit.purge(s, 30, now=now) == 3
        assert audit.purge(s, 30, now=now) == 0
    assert _count(migrated) == 2
    with migrated.connect() as conn:  # the purge's cutoff lived in its transaction only
        assert conn.execute(text("SELECT count(*) FROM twin_audit_purge")).scalar_one() == 0
    with pytest.raises(DBAPIError, match="append-only"), migrated.begin() as conn:
        conn.execute(delete(AuditRecord))  # after the purge, the guard is back


def test_housekeeping_runs_the_purge(migrated: Engine, tmp_path: Path) -> None:
    from twin.history import HistoryJob

    _add(migrated, now_us() - 3 * 86_400_000_000, 2)
    _add(migrated, now_us())
    settings = TwinSettings(data_dir=tmp_path, audit_retention_days=1, history_maintenance_s=0.05)
    job = HistoryJob(migrated, settings).start()
    try:
        for _ in range(100):
            if _count(migrated) == 1:
                break
            job._stop.wait(0.05)
    finally:
        job.stop()
    assert _count(migrated) == 1


def test_a_bad_retention_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="audit_retention_days"):
        TwinSettings(audit_retention_days=-1)


def test_a_site_change_is_recorded_once(sqlite_url: str) -> None:
    from factory_twin.simulator.examples import example_site_path
    from plant.site import load_site
    from twin.site_sync import sync_site

    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    try:
        site = load_site(example_site_path())
        sync_site(engine, site)
        sync_site(engine, site)  # nothing changed: nothing recorded
        with make_sessionmaker(engine)() as s:
            rows = list(s.scalars(select(AuditRecord)))
        assert [(r.action, r.target, r.actor) for r in rows] == [("site.reload", f"site:{site.site.id}", "site file")]
        assert rows[0].after is not None
        assert rows[0].after["nodes_created"] > 0
    finally:
        engine.dispose()
