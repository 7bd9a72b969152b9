"""The dashboard's server side on SQLite and PostgreSQL: login, pages and files, health, downsampled trends,
diagnoses over time, the live feed, and the create-user command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, update

from factory_twin.cli.keys import keys as keys_cli
from plant.wire import now_us, to_us
from twin import users
from twin.alerts import lifecycle
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.downsample import downsample
from twin.live import LiveBus, LiveEvent
from twin.live_feed import LiveFeed
from twin.plant_health import plant_health
from twin.tables import ApiKey, Base, DiagnosisRecord, HistoryRow, TwinNode, TwinProperty

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY_POINTS = 86_400  # one day of 1 s data
SPIKE_AT = 40_000


def _us(seconds: float) -> int:
    return to_us(T0 + timedelta(seconds=seconds))


@dataclass
class Env:
    """A seeded database, a client on it and keys of each role."""

    engine: Engine
    client: TestClient
    keys: dict[str, str]

    def get(self, path: str, role: str = "viewer", **params: object) -> dict[str, Any]:
        """GET as ``role``; asserts success."""
        r = self.client.get(path, params=params, headers={"Authorization": f"Bearer {self.keys[role]}"})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def _seed(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with make_sessionmaker(engine)() as s:
        s.add_all(
            [
                TwinNode(id="site", parent_id=None, path="/site/", kind="site", name="Site"),
                TwinNode(
                    id="pump-1",
                    parent_id="site",
                    path="/site/pump-1/",
                    kind="machine",
                    name="Pump",
                    type="pump",
                ),
                TwinNode(
                    id="mill-1",
                    parent_id="site",
                    path="/site/mill-1/",
                    kind="machine",
                    name="Mill",
                    type="mill",
                ),
                TwinNode(id="idle-1", parent_id="site", path="/site/idle-1/", kind="machine", name="Idle"),
            ]
        )
        s.flush()
        s.add_all(
            [
                TwinProperty(
                    node_id="pump-1",
                    name="pressure",
                    unit="kPa",
                    value_num=1.0,
                    ts=_us(DAY_POINTS - 1),
                    stored_ts=_us(DAY_POINTS),
                    quality=0,
                ),
                TwinProperty(node_id="pump-1", name="mode", dtype="string", value_text="auto", ts=_us(1), quality=0),
                TwinProperty(node_id="mill-1", name="torque", unit="N·m", value_num=3.0, ts=_us(5), quality=0),
            ]
        )
        s.add_all(
            [
                DiagnosisRecord(
                    node_id="mill-1",
                    task="anomaly",
                    ts=_us(i * 60),
                    model="iforest",
                    version="1",
                    source="edge",
                    confidence=0.9,
                    payload={"score": 0.2 + i, "threshold": 1.5},
                )
                for i in range(3)
            ]
        )
        s.commit()
        prop_id = s.query(TwinProperty.id).filter_by(node_id="pump-1", name="pressure").scalar()
        rows = [
            {
                "property_id": prop_id,
                "ts": _us(i),
                "value_num": 500.0 if i == SPIKE_AT else float(i % 100),
                "value_text": None,
                "quality": 2 if i == SPIKE_AT else 0,
            }
            for i in range(DAY_POINTS)
        ]
        s.connection().execute(insert(HistoryRow), rows)  # Core executemany: no ORM objects
        lifecycle.raise_alert(
            s,
            key="pump-1/hi",
            node_id="pump-1",
            node_path="/site/pump-1/",
            asset_type="pump",
            rule="pressure-hi",
            kind="limit",
            condition="HI",
            severity="high",
            criticality="high",
            level=1,
            message="pressure high",
            value=501.0,
            evidence={},
            at=_us(SPIKE_AT),
        )
        s.commit()


@pytest.fixture(scope="module")
def env(module_db_url: str) -> Iterator[Env]:
    """The seeded database behind an app, with a key of every role (shared by the module's tests)."""
    engine = make_engine(module_db_url)
    _seed(engine)
    with make_sessionmaker(engine)() as s:
        made = {role.value: create_key(s, role, f"{role.value} key") for role in Role}
        users.create_user(s, "tess", "s3cret-pass", Role.TECHNICIAN)
    with TestClient(create_app(TwinSettings(), engine)) as client:
        yield Env(engine, client, made)
    engine.dispose()


def test_login_with_password_gives_a_session_token_with_the_users_role(env: Env) -> None:
    r = env.client.post("/api/v1/session", json={"username": "tess", "password": "s3cret-pass"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert r.json()["role"] == "technician"
    assert r.json()["session"] is True
    auth = {"Authorization": f"Bearer {token}"}
    assert env.client.get("/api/v1/session", headers=auth).json()["name"] == "tess"
    assert env.client.get("/api/v1/nodes", headers=auth).status_code == 200
    # a technician may acknowledge, not shelve
    assert (
        env.client.post("/api/v1/alerts/1/shelve", headers=auth, json={"minutes": 5, "reason": "x"}).status_code == 403
    )
    assert env.client.delete("/api/v1/session", headers=auth).status_code == 204
    assert env.client.get("/api/v1/session", headers=auth).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"username": "tess", "password": "wrong-password"},
        {"username": "nobody", "password": "s3cret-pass"},
        {"api_key": "ftk_000000000000_nope"},
    ],
)
def test_bad_logins_are_401_with_a_problem_body(env: Env, body: dict[str, str]) -> None:
    r = env.client.post("/api/v1/session", json=body)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "token" not in r.json()


@pytest.mark.parametrize("body", [{}, {"username": "tess"}, {"password": "x"}, {"username": "t", "password": 5}])
def test_incomplete_logins_are_422(env: Env, body: dict[str, object]) -> None:
    assert env.client.post("/api/v1/session", json=body).status_code == 422


def test_login_with_an_api_key_returns_it_and_logout_leaves_it_alone(env: Env) -> None:
    r = env.client.post("/api/v1/session", json={"api_key": env.keys["viewer"]})
    assert r.status_code == 201
    assert r.json() | {"token": "-"} == {
        "token": "-",
        "name": "viewer key",
        "role": "viewer",
        "prefix": env.keys["viewer"][:16],
        "session": False,
        "sites": None,
    }
    auth = {"Authorization": f"Bearer {env.keys['viewer']}"}
    assert env.client.delete("/api/v1/session", headers=auth).status_code == 204
    assert env.client.get("/api/v1/session", headers=auth).status_code == 200


def test_a_user_keeps_at_most_max_sessions(env: Env) -> None:
    tokens = [
        env.client.post("/api/v1/session", json={"username": "tess", "password": "s3cret-pass"}).json()["token"]
        for _ in range(users.MAX_SESSIONS + 2)
    ]
    live = [
        t
        for t in tokens
        if env.client.get("/api/v1/session", headers={"Authorization": f"Bearer {t}"}).status_code == 200
    ]
    assert live == tokens[-users.MAX_SESSIONS :]


def _age_key(env: Env, prefix: str, created_s_ago: float, used_s_ago: float | None) -> None:
    """Move a key's login and last use into the past, as if time had passed."""
    now = now_us()
    with env.engine.begin() as c:
        c.execute(
            update(ApiKey)
            .where(ApiKey.prefix == prefix)
            .values(
                created_at=now - int(created_s_ago * 1e6),
                last_used_at=None if used_s_ago is None else now - int(used_s_ago * 1e6),
            )
        )


@pytest.mark.parametrize(
    ("created_s_ago", "used_s_ago", "alive"),
    [
        (3600, 60, True),  # in use
        (9 * 3600, None, False),  # never used since a login 9 h ago: idle past 8 h
        (9 * 3600, 9 * 3600 - 120, False),  # last used 9 h ago
        (6 * 86_400, 60, True),  # in use for six days
        (8 * 86_400, 60, False),  # in use, but the login is older than 7 days
    ],
)
def test_a_session_expires_when_idle_or_too_old(
    env: Env, created_s_ago: float, used_s_ago: float | None, alive: bool
) -> None:
    r = env.client.post("/api/v1/session", json={"username": "tess", "password": "s3cret-pass"})
    token, prefix = r.json()["token"], r.json()["prefix"]
    _age_key(env, prefix, created_s_ago, used_s_ago)
    r = env.client.get("/api/v1/session", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == (200 if alive else 401), r.text
    if not alive:
        assert "expired" in r.json()["detail"]


def test_an_expired_session_cannot_be_revived_by_logging_in_with_it(env: Env) -> None:
    # The configured lifetimes apply to the api_key login too, not the defaults (15 min idle here).
    settings = TwinSettings(session_idle_s=900)
    with TestClient(create_app(settings, env.engine)) as client:
        r = client.post("/api/v1/session", json={"username": "tess", "password": "s3cret-pass"})
        token, prefix = r.json()["token"], r.json()["prefix"]
        _age_key(env, prefix, 3600, 3600)  # idle for an hour: expired at 15 min, alive at the default 8 h
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/session", headers=auth).status_code == 401
        r = client.post("/api/v1/session", json={"api_key": token})
        assert r.status_code == 401, r.text
        assert "expired" in r.json()["detail"]
        assert client.get("/api/v1/session", headers=auth).status_code == 401  # not touched back to life


def test_a_request_returns_its_database_connection_before_a_live_stream_ends(env: Env) -> None:
    # Authentication reads the key: that transaction must not hold a pooled connection for a stream's life.
    auth = {"Authorization": f"Bearer {env.keys['viewer']}"}
    pool = env.engine.pool
    assert env.client.get("/api/v1/session", headers=auth).status_code == 200  # the key's use is recorded now,
    with env.client.stream("GET", "/api/v1/live", headers=auth) as r:  # so this request writes nothing
        assert r.status_code == 200
        next(r.iter_lines())
        # the live feed's own polls borrow a connection for a moment: none may stay out
        ends = time.monotonic() + 5
        while pool.checkedout() > 0:  # type: ignore[attr-defined]
            assert time.monotonic() < ends, "a connection stays checked out while the stream is open"
            time.sleep(0.05)


def test_a_standing_api_key_does_not_expire(env: Env) -> None:
    key = env.keys["viewer"]
    _age_key(env, key[:16], 400 * 86_400, 300 * 86_400)
    assert env.client.get("/api/v1/session", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_passwords_are_salted_scrypt_and_checked_in_constant_time() -> None:
    a, b = users.hash_password("same password"), users.hash_password("same password")
    assert a != b
    assert a.startswith("scrypt$")
    assert "same password" not in a
    assert users.verify_password("same password", a)
    assert not users.verify_password("other password", a)
    assert not users.verify_password("same password", "garbage")
    assert not users.verify_password("same password", "pbkdf2$1$2$3$4$5")


@pytest.mark.parametrize(("name", "password"), [("", "long enough"), ("bad name", "long enough"), ("ok", "short")])
def test_bad_users_are_refused(env: Env, name: str, password: str) -> None:
    from twin.errors import InvalidRequest

    with make_sessionmaker(env.engine)() as s, pytest.raises(InvalidRequest):
        users.create_user(s, name, password, Role.VIEWER)


def test_a_person_cannot_have_the_gateway_role(env: Env) -> None:
    from twin.errors import InvalidRequest

    with make_sessionmaker(env.engine)() as s, pytest.raises(InvalidRequest, match="person's role"):
        users.create_user(s, "gateway-7", "long enough", Role.AGENT)


def test_create_user_command(env: Env, module_db_url: str) -> None:
    runner = CliRunner()
    args = ["create-user", "olga", "--role", "engineer", "--url", module_db_url, "--password-stdin"]
    result = runner.invoke(keys_cli, args, input="a long password\n")
    assert result.exit_code == 0, result.output
    again = runner.invoke(keys_cli, args, input="a long password\n")
    assert again.exit_code != 0
    assert "exists already" in again.output
    short = runner.invoke(
        keys_cli,
        ["create-user", "pia", "--role", "viewer", "--url", module_db_url, "--password-stdin"],
        input="short\n",
    )
    assert short.exit_code != 0
    assert "at least" in short.output
    r = env.client.post("/api/v1/session", json={"username": "olga", "password": "a long password"})
    assert r.json()["role"] == "engineer"


def test_pages_and_files_are_served_by_the_platform(env: Env) -> None:
    page = env.client.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("app.js", "core.js", "chart.js", "style.css"):
        assert f"/static/{asset}" in page.text or asset != "app.js"
        r = env.client.get(f"/static/{asset}")
        assert r.status_code == 200, asset
        assert "http://" not in r.text, f"{asset} refers outside the platform"
        assert "https://" not in r.text, f"{asset} refers outside the platform"
    for bad in ("../app.py", "..%2Fapi.py", ".hidden", "nope.js", "users.py"):
        assert env.client.get(f"/static/{bad}").status_code == 404, bad


def test_health_rolls_alerts_and_diagnoses_up_the_tree(env: Env) -> None:
    nodes = env.get("/api/v1/dashboard/health")["nodes"]
    assert isinstance(nodes, dict)
    assert nodes["pump-1"]["own"] == "alarm"
    assert "no new value since 2024-05-01" in " ".join(nodes["pump-1"]["reasons"])  # its data is old too
    assert nodes["pump-1"]["open_alerts"] == 1
    assert nodes["mill-1"]["own"] == "warning"  # the newest anomaly score, 2.2, is over its threshold 1.5
    assert "anomaly score 2.2 over threshold 1.5" in nodes["mill-1"]["reasons"]
    assert nodes["idle-1"]["own"] == "unknown"
    assert nodes["site"] == {"level": "alarm", "own": "unknown", "reasons": [], "open_alerts": 1}


def test_health_without_stale_data_is_the_diagnoses_and_alerts_alone(env: Env) -> None:
    with make_sessionmaker(env.engine)() as s:
        health = plant_health(s, now=_us(200))
    assert health["mill-1"].reasons == ["anomaly score 2.2 over threshold 1.5"]
    assert health["pump-1"].reasons == ["critical alert: HI pressure high"]


def test_a_day_of_1s_data_comes_back_in_buckets_that_keep_the_spike(env: Env) -> None:
    start, end = (T0.isoformat(), (T0 + timedelta(days=1)).isoformat())
    t = env.get("/api/v1/dashboard/nodes/pump-1/trend", prop="pressure", start=start, end=end, points=500)
    assert t["raw"] is False
    assert isinstance(t["max"], list)
    assert isinstance(t["count"], list)
    assert isinstance(t["quality"], list)
    assert 490 <= len(t["max"]) <= 500
    assert max(t["max"]) == 500.0  # one second in 86,400 survives
    assert sum(t["count"]) == DAY_POINTS
    assert set(t["quality"]) <= {None, "good", "uncertain", "bad"}  # None: from rollups, which keep no quality
    assert min(t["min"]) == 0.0
    narrow = env.get(
        "/api/v1/dashboard/nodes/pump-1/trend",
        prop="pressure",
        start=_iso(SPIKE_AT - 5),
        end=_iso(SPIKE_AT + 5),
        points=100,
    )
    assert narrow["raw"] is True
    assert narrow["count"] == [1] * 10
    assert narrow["max"][5] == 500.0
    assert narrow["quality"][5] == "bad"


def _iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"prop": "pressure", "start": "2024-05-02T00:00:00Z", "end": "2024-05-01T00:00:00Z"}, 422),
        ({"prop": "pressure", "points": 1}, 422),
        ({"prop": "nope"}, 404),
        ({"prop": "mode"}, 422),
        ({"prop": "pressure", "start": "yesterday"}, 422),
    ],
)
def test_bad_trend_requests_are_refused_clearly(env: Env, params: dict[str, object], status: int) -> None:
    r = env.client.get(
        "/api/v1/dashboard/nodes/pump-1/trend",
        params=params,
        headers={"Authorization": f"Bearer {env.keys['viewer']}"},
    )
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_downsample_width_covers_the_range(env: Env) -> None:
    with make_sessionmaker(env.engine)() as s:
        prop = s.query(TwinProperty).filter_by(name="pressure").one()
        buckets, width, raw = downsample(s, prop, _us(0), _us(DAY_POINTS), 7)
    assert not raw
    assert len(buckets) == 7
    assert buckets[-1].ts + width >= _us(DAY_POINTS)


def test_diagnoses_over_time(env: Env) -> None:
    d = env.get("/api/v1/dashboard/nodes/mill-1/diagnoses", start=T0.isoformat(), end=_iso(3600))
    tasks = d["tasks"]
    assert isinstance(tasks, dict)
    assert [x["score"] for x in tasks["anomaly"]] == [0.2, 1.2, 2.2]
    assert tasks["anomaly"][0]["threshold"] == 1.5
    assert (
        env.client.get(
            "/api/v1/dashboard/nodes/nope/diagnoses",
            headers={"Authorization": f"Bearer {env.keys['viewer']}"},
        ).status_code
        == 404
    )


def test_dashboard_api_needs_a_key(env: Env) -> None:
    for path in (
        "/api/v1/dashboard/health",
        "/api/v1/live",
        "/api/v1/session",
        "/api/v1/dashboard/nodes/pump-1/trend?prop=pressure",
    ):
        assert env.client.get(path).status_code == 401, path


def test_the_live_feed_reports_what_changed_since_its_last_look(env: Env) -> None:
    feed = LiveFeed(make_sessionmaker(env.engine))
    assert feed.poll() == []  # the first look only sets the marks
    with make_sessionmaker(env.engine)() as s:
        torque = s.query(TwinProperty).filter_by(node_id="mill-1", name="torque").one()
        torque.value_num, torque.ts, torque.stored_ts = 4.5, _us(DAY_POINTS + 1), _us(DAY_POINTS + 2)
        lifecycle.acknowledge(s, 1, actor="tess", at=_us(DAY_POINTS + 3))
        s.commit()
    events = dict(feed.poll())
    assert [(v["node_id"], v["name"], v["value"]) for v in events["values"]] == [("mill-1", "torque", 4.5)]
    assert [(a["id"], a["state"]) for a in events["alerts"]] == [(1, "active_ack")]
    assert feed.poll() == []  # nothing new: nothing sent twice
    json.dumps(events)  # ready for the wire


def test_the_live_feed_reads_what_the_bus_names_and_sends_it_once(env: Env) -> None:
    feed = LiveFeed(make_sessionmaker(env.engine), bus=LiveBus())
    feed.poll()
    with make_sessionmaker(env.engine)() as s:
        torque = s.query(TwinProperty).filter_by(node_id="mill-1", name="torque").one()
        torque.value_num, torque.ts, torque.stored_ts = 7.25, _us(DAY_POINTS + 20), _us(DAY_POINTS + 21)
        s.commit()
    values = feed.read_changed([LiveEvent("mill-1", ("torque",)), LiveEvent("nope", ("x",))])
    assert [(v["node_id"], v["name"], v["value"], v["unit"]) for v in values] == [("mill-1", "torque", 7.25, "N·m")]
    assert feed.read_changed([LiveEvent("mill-1", ("torque",))]) == []
    assert feed.poll() == []  # the poll saw it too, and does not send it again


def test_the_live_feed_survives_a_missing_table(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(
        engine, tables=[Base.metadata.tables[t] for t in ("twin_nodes", "twin_properties", "api_keys")]
    )
    feed = LiveFeed(make_sessionmaker(engine))
    assert feed.poll() == []
    assert feed.poll() == []  # the alerts table is missing: said once in the log, values still flow
    engine.dispose()


def test_long_ranges_merge_the_rollups_and_agree_with_the_raw_rows(db_url: str) -> None:
    from migrations import run as migrations
    from twin import downsample as ds
    from twin.history import refresh_rollups

    migrations.upgrade(db_url)
    engine = make_engine(db_url)
    step, n = 10 * 1_000_000, 2 * 8640  # two days of 10 s data
    start = _us(7)  # not minute-aligned: the edges come from raw rows
    with make_sessionmaker(engine)() as s:
        s.add(TwinNode(id="m", parent_id=None, path="/m/", kind="machine", name="m"))
        s.flush()
        prop = TwinProperty(node_id="m", name="v", unit="u")
        s.add(prop)
        s.flush()
        s.connection().execute(
            insert(HistoryRow),
            [
                {
                    "property_id": prop.id,
                    "ts": start + i * step,
                    "value_text": None,
                    "quality": 0,
                    "value_num": -50.0 if i == 9000 else float(i % 360),
                }
                for i in range(n)
            ],
        )
        # the first day rolled up, the second still raw: read_buckets computes what the tables lack
        refresh_rollups(s.connection(), _us(0), _us(86_400))
        s.commit()
        end = start + n * step
        merged, width, raw = downsample(s, prop, start, end, 100)
        url = engine.url.render_as_string(hide_password=True)
        ds._has_rollups[url] = False
        try:
            plain, _, _ = downsample(s, prop, start, end, 100)
        finally:
            ds._has_rollups.pop(url)
    engine.dispose()
    assert not raw
    assert width >= 60_000_000
    assert sum(b.count for b in merged) == sum(b.count for b in plain) == n
    assert min(b.min for b in merged) == -50.0
    assert max(b.max for b in merged) == 359.0
    assert len(merged) == len(plain)
    assert any(b.worst_quality is None for b in merged)
    # a rollup bucket lands in the slice its start is in: a slice gains or loses at most one minute's points
    assert all(abs(a.count - b.count) <= 6 for a, b in zip(merged, plain, strict=True))


def test_the_event_stream_says_hello_beats_and_says_bye(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from twin.api.routes import live as live_route

    monkeypatch.setattr(live_route, "MAX_STREAM_S", 1.2)
    monkeypatch.setattr(live_route, "HEARTBEAT_S", 0.3)
    auth = {"Authorization": f"Bearer {env.keys['viewer']}"}
    with env.client.stream("GET", "/api/v1/live", headers=auth) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "hello"
    assert "heartbeat" in events
    assert events[-1] == "bye"
    hello = json.loads(text.splitlines()[1].removeprefix("data: "))
    assert hello["heartbeat_s"] == 0.3
