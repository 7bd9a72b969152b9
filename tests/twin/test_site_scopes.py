"""Two sites on one platform: one leader judges both, reloading one leaves the other alone, and a key or user
limited to one site gets 403 (or a filtered list) for the other on every route of the app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from factory_twin.cli import cli
from migrations import run
from plant.site import Site, parse_site
from twin import scopes
from twin.alerts.evaluator import AlertEvaluator
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.errors import Conflict
from twin.live_feed import SiteFilter
from twin.store import TwinStore
from twin.tables import Alert, AuditRecord, Base, HistoryRow, TwinNode, User
from twin.users import create_user, set_sites

from .store_helpers import NOW, batch, value

PASSWORD = "correct horse battery"


def site_yaml(name: str, extra: str = "") -> str:
    """A site with one pump whose gateway is ``gw-<name>``; ``extra`` adds machines to its hall."""
    return f"""
site: {{id: {name}}}
sources:
  ua: {{kind: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}}
asset_types:
  pump:
    properties:
      temp: {{unit: C}}
      speed: {{unit: rpm, writable: {{limits: [0, 3000], max_rate: 100, role: technician}}}}
    alerts:
      - {{id: temp-hi, kind: limit, property: temp, hi: 80, severity: high}}
nodes:
  - id: {name}
    kind: site
    children:
      - id: {name}-hall
        kind: area
        gateway: gw-{name}
        children:
          - id: {name}-pump
            kind: machine
            type: pump
            bindings:
              speed: {{source: ua, node_id: "ns=2;s={name}.speed"}}
              temp: {{source: ua, node_id: "ns=2;s={name}.temp"}}
{extra}"""


def two_site_settings(tmp_path: Path) -> TwinSettings:
    return TwinSettings(data_dir=tmp_path, model_dir=tmp_path / "none", alert_sweep_s=0.2, alert_tick_s=0.2,
                        auth_address_failures=10_000)


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < ends, "timed out"
        time.sleep(0.05)


def alert_ids(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {node: i for i, node in s.execute(select(Alert.id, Alert.node_id))}


@dataclass
class World:
    """Sites north and south in one database, with values, alerts, work orders and commands in each."""

    engine: Engine
    client: TestClient
    sites: dict[str, Site]
    ids: dict[str, dict[str, Any]]  # site → what to name in a path: node_id, alert_id, wo_id, command_id
    admin: str  # unscoped admin key
    north: str  # admin key limited to north

    def call(self, method: str, path: str, key: str, **kw: Any) -> Any:
        return self.client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sites")
    engine = make_engine(f"sqlite:///{tmp / 'twin.db'}")
    Base.metadata.create_all(engine)
    sites = {name: parse_site(site_yaml(name), f"{name}.yaml") for name in ("north", "south")}
    store = TwinStore(engine)
    for s in sites.values():
        store.sync_site(s)
    settings = two_site_settings(tmp)
    # one leader for both sites, started from north's file alone: south's rules come from the twin
    evaluator = AlertEvaluator(engine, sites["north"], settings).start()
    try:
        for name in sites:
            store.apply(batch(value(f"{name}-pump", "temp", 95.0), value(f"{name}-pump", "speed", 10.0),
                              gateway=f"gw-{name}", name=f"b-{name}"), now_us=NOW)
        wait_for(lambda: len(alert_ids(engine)) == 2)
    finally:
        evaluator.stop()
    with make_sessionmaker(engine)() as s:
        admin = create_key(s, Role.ADMIN, "everywhere")
        north = create_key(s, Role.ADMIN, "north only", sites=["north"])
    with TestClient(create_app(settings, engine)) as client:
        w = World(engine, client, sites, {}, admin, north)
        for name in sites:
            node = f"{name}-pump"
            alert = alert_ids(engine)[node]
            wo = w.call("POST", "/api/v1/work-orders", admin, json={"node": node, "task": "look",
                                                                    "alert_ids": [alert]})
            cmd = w.call("POST", f"/api/v1/nodes/{node}/properties/speed/desired", admin, json={"value": 20})
            fb = w.call("POST", f"/api/v1/alerts/{alert}/feedback", admin, json={"verdict": "true_fault"})
            assert (wo.status_code, cmd.status_code, fb.status_code) == (201, 202, 201), (wo.text, cmd.text)
            w.ids[name] = {"node_id": node, "prop": "speed", "alert_id": alert, "wo_id": wo.json()["id"],
                           "command_id": cmd.json()["id"]}
        yield w
    engine.dispose()


def test_one_leader_judges_the_values_of_both_sites(world: World) -> None:
    with Session(world.engine) as s:
        raised = {node: path for node, path in s.execute(select(Alert.node_id, Alert.node_path))}
    assert raised == {"north-pump": "/north/north-hall/north-pump/", "south-pump": "/south/south-hall/south-pump/"}


# --- every route ----------------------------------------------------------------------------------------------

NAMED = "names a node, alert, work order or command in its path or query: 403 for another site's"
LIST = "lists: only the caller's sites"
ADMIN = "administration spans every site: 403 for a caller limited to some"
BODY = "names a node in its body: 403 for another site's"
STREAM = "the live stream: only the caller's sites (test_the_live_stream_keeps_only_the_callers_sites)"
SHARED = "holds nothing of a site: asset types, knowledge, models, one's own account, pages, docs, probes"

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): SHARED,
    ("GET", "/api/v1/nodes"): LIST,
    ("GET", "/api/v1/nodes/{node_id}"): NAMED,
    ("GET", "/api/v1/nodes/{node_id}/properties/{prop}"): NAMED,
    ("GET", "/api/v1/nodes/{node_id}/properties/{prop}/history"): NAMED,
    ("GET", "/api/v1/nodes/{node_id}/frames"): NAMED,
    ("POST", "/api/v1/nodes/{node_id}/properties/{prop}/desired"): NAMED,
    ("GET", "/api/v1/nodes/{node_id}/properties/{prop}/desired"): NAMED,
    ("POST", "/api/v1/commands/{command_id}/confirm"): NAMED,
    ("GET", "/api/v1/commands/{command_id}"): NAMED,
    ("GET", "/api/v1/asset-types"): SHARED,
    ("GET", "/api/v1/asset-types/{type_id}"): SHARED,
    ("GET", "/api/v1/alerts"): LIST,
    ("GET", "/api/v1/alerts/rate"): LIST,
    ("GET", "/api/v1/alerts/summary"): LIST,
    ("GET", "/api/v1/alerts/feedback"): LIST,
    ("GET", "/api/v1/alerts/{alert_id}"): NAMED,
    ("GET", "/api/v1/alerts/{alert_id}/transitions"): NAMED,
    ("GET", "/api/v1/alerts/{alert_id}/advice"): NAMED,
    ("POST", "/api/v1/alerts/{alert_id}/comments"): NAMED,
    ("POST", "/api/v1/alerts/{alert_id}/acknowledge"): NAMED,
    ("POST", "/api/v1/alerts/{alert_id}/shelve"): NAMED,
    ("POST", "/api/v1/alerts/{alert_id}/unshelve"): NAMED,
    ("POST", "/api/v1/alerts/{alert_id}/feedback"): NAMED,
    ("GET", "/api/v1/alerts/{alert_id}/feedback"): NAMED,
    ("GET", "/api/v1/knowledge"): SHARED,
    ("GET", "/api/v1/knowledge/{asset_type}/{condition}"): SHARED,
    ("GET", "/api/v1/knowledge/{asset_type}/{condition}/versions"): SHARED,
    ("POST", "/api/v1/knowledge"): SHARED,
    ("PUT", "/api/v1/knowledge/{asset_type}/{condition}"): SHARED,
    ("DELETE", "/api/v1/knowledge/{asset_type}/{condition}"): SHARED,
    ("GET", "/api/v1/maintenance-plan"): LIST,
    ("GET", "/api/v1/maintenance-plan.csv"): LIST,
    ("GET", "/api/v1/maintenance-plan.ics"): LIST,
    ("GET", "/api/v1/work-orders"): LIST,
    ("GET", "/api/v1/work-orders/draft"): NAMED,
    ("POST", "/api/v1/work-orders"): BODY,
    ("GET", "/api/v1/work-orders/{wo_id}"): NAMED,
    ("GET", "/api/v1/work-orders/{wo_id}/events"): NAMED,
    ("PATCH", "/api/v1/work-orders/{wo_id}"): NAMED,
    ("POST", "/api/v1/work-orders/{wo_id}/start"): NAMED,
    ("POST", "/api/v1/work-orders/{wo_id}/notes"): NAMED,
    ("POST", "/api/v1/work-orders/{wo_id}/complete"): NAMED,
    ("POST", "/api/v1/work-orders/{wo_id}/cancel"): NAMED,
    ("GET", "/api/v1/logbook"): LIST,
    ("GET", "/api/v1/logbook.csv"): LIST,
    ("GET", "/api/v1/webhooks"): ADMIN,
    ("POST", "/api/v1/webhooks"): ADMIN,
    ("GET", "/api/v1/webhooks/{sub_id}"): ADMIN,
    ("PATCH", "/api/v1/webhooks/{sub_id}"): ADMIN,
    ("DELETE", "/api/v1/webhooks/{sub_id}"): ADMIN,
    ("GET", "/api/v1/webhooks/{sub_id}/deliveries"): ADMIN,
    ("POST", "/api/v1/webhooks/{sub_id}/replay"): ADMIN,
    ("GET", "/api/v1/keys"): ADMIN,
    ("POST", "/api/v1/keys"): ADMIN,
    ("POST", "/api/v1/keys/{prefix}/rotate"): ADMIN,
    ("DELETE", "/api/v1/keys/{prefix}"): ADMIN,
    ("GET", "/api/v1/users"): ADMIN,
    ("POST", "/api/v1/users"): ADMIN,
    ("GET", "/api/v1/users/{username}"): ADMIN,
    ("PATCH", "/api/v1/users/{username}"): ADMIN,
    ("DELETE", "/api/v1/users/{username}"): ADMIN,
    ("POST", "/api/v1/users/{username}/password"): ADMIN,
    ("GET", "/api/v1/users/{username}/sessions"): ADMIN,
    ("DELETE", "/api/v1/users/{username}/sessions"): ADMIN,
    ("DELETE", "/api/v1/users/{username}/sessions/{prefix}"): ADMIN,
    ("GET", "/api/v1/account/sessions"): SHARED,
    ("DELETE", "/api/v1/account/sessions/{prefix}"): SHARED,
    ("POST", "/api/v1/account/password"): SHARED,
    ("GET", "/api/v1/audit"): ADMIN,
    ("GET", "/api/v1/audit.csv"): ADMIN,
    ("GET", "/api/v1/live"): STREAM,
    ("POST", "/api/v1/models"): SHARED,
    ("GET", "/api/v1/models"): SHARED,
    ("GET", "/api/v1/models/promoted"): SHARED,
    ("POST", "/api/v1/models/{task}/{version}/promote"): SHARED,
    ("GET", "/api/v1/models/{task}/{version}/archive"): SHARED,
    ("POST", "/api/v1/models/{task}/{version}/failures"): SHARED,
    ("POST", "/api/v1/cascade"): BODY,
    ("POST", "/api/v1/session"): SHARED,
    ("GET", "/api/v1/session"): SHARED,
    ("DELETE", "/api/v1/session"): SHARED,
    ("GET", "/api/v1/dashboard/health"): LIST,
    ("GET", "/api/v1/dashboard/nodes/{node_id}/trend"): NAMED,
    ("GET", "/api/v1/dashboard/nodes/{node_id}/diagnoses"): NAMED,
    ("GET", "/healthz"): SHARED,
    ("GET", "/docs"): SHARED,
    ("GET", "/docs/oauth2-redirect"): SHARED,
    ("GET", "/redoc"): SHARED,
    ("GET", "/docs/assets/{name}"): SHARED,
    ("GET", "/"): SHARED,
    ("GET", "/dashboard"): SHARED,
    ("GET", "/static/{name}"): SHARED,
    ("GET", "/metrics"): SHARED,
}
# what the query names for NAMED routes without path parameters
QUERY = {"/api/v1/work-orders/draft": "alert_id"}
BODIES = {"/api/v1/work-orders": lambda node: {"node": node, "task": "look"},
          "/api/v1/cascade": lambda node: {"node": node, "task": "rul", "ts": NOW, "model": "m", "version": "1",
                                           "window": {"temp": [1.0]}}}


def app_routes(app: Any) -> Iterator[tuple[str, str, Any]]:
    """Every (method, path, route) the app serves, through included routers."""
    stack = list(app.routes)
    while stack:
        route = stack.pop(0)
        if hasattr(route, "effective_candidates"):
            stack[:0] = route.effective_candidates()
            continue
        original = getattr(route, "original_route", route)
        for method in sorted(getattr(route, "methods", None) or getattr(original, "methods", None) or ()):
            if method != "HEAD":
                yield method, route.path, getattr(original, "dependant", None)


def _fill(path: str, ids: dict[str, Any]) -> str:
    for name, v in ids.items():
        path = path.replace("{" + name + "}", str(v))
    return path


def test_every_route_refuses_or_filters_another_site(world: World) -> None:
    served = {(m, p): dep for m, p, dep in app_routes(world.client.app)}
    assert set(served) == set(ROUTES), ("a route without a site-scope decision: add it to ROUTES",
                                        set(served) ^ set(ROUTES))
    own, other = world.ids["north"], world.ids["south"]
    checked = 0
    for (method, path), kind in ROUTES.items():
        if kind == NAMED:
            q = QUERY.get(path)
            there = _fill(path, other) + (f"?{q}={other[q]}" if q else "")
            here = _fill(path, own) + (f"?{q}={own[q]}" if q else "")
            r = world.call(method, there, world.north)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert "south" in r.json()["detail"]
            assert world.call(method, here, world.north).status_code != 403, (method, path)
        elif kind == LIST:
            r = world.call(method, path, world.north)
            assert r.status_code == 200, (method, path, r.text[:300])
            assert "south" not in r.text, (method, path, r.text[:300])
            assert world.call(method, path, world.admin).text != r.text, path  # the filter took something out
            names = {p.name for p in served[(method, path)].query_params} & scopes.REFERENCES.keys()
            for name in names:  # naming another site's node in the query is refused
                r = world.call(method, f"{path}?{name}=south-pump", world.north)
                assert r.status_code == 403, (method, path, name, r.status_code)
        elif kind == ADMIN:
            r = world.call(method, _fill(path, {"sub_id": 1, "username": "x", "prefix": "ftk_000000000000"}),
                           world.north, json={})
            assert r.status_code == 403, (method, path, r.text)
            assert "every site" in r.json()["detail"]
        elif kind == BODY:
            r = world.call(method, path, world.north, json=BODIES[path]("south-pump"))
            assert r.status_code == 403, (method, path, r.text)
            assert world.call(method, path, world.north, json=BODIES[path]("north-pump")).status_code != 403
        else:
            continue
        checked += 1
    assert checked > 60
    with Session(world.engine) as s:  # refusals are in the audit trail like the setpoint refusals
        refused = s.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "site.refuse"))
    assert (refused or 0) >= 30


def test_the_live_stream_keeps_only_the_callers_sites(world: World) -> None:
    keep = SiteFilter(make_sessionmaker(world.engine), frozenset({"north"}))
    values = [{"node_id": "north-pump", "name": "temp"}, {"node_id": "south-pump", "name": "temp"}]
    alerts = [{"id": 2, "node": "south-pump"}]
    assert asyncio.run(keep.keep("values", values)) == values[:1]
    assert asyncio.run(keep.keep("alerts", alerts)) is None
    assert asyncio.run(keep.keep("resync", {})) == {}
    everything = SiteFilter(make_sessionmaker(world.engine), None)
    assert asyncio.run(everything.keep("alerts", alerts)) == alerts


# --- users, sessions and keys ---------------------------------------------------------------------------------


def test_a_users_sites_limit_their_sessions_and_keys_and_admins_set_them(world: World) -> None:
    w = world
    with make_sessionmaker(w.engine)() as s:
        create_user(s, "nora", PASSWORD, Role.TECHNICIAN, sites=["north"])
    login = w.client.post("/api/v1/session", json={"username": "nora", "password": PASSWORD}).json()
    assert login["sites"] == ["north"]
    token = login["token"]
    assert w.call("GET", "/api/v1/session", token).json()["sites"] == ["north"]
    assert "south" not in w.call("GET", "/api/v1/alerts", token).text
    assert w.call("GET", f"/api/v1/alerts/{w.ids['south']['alert_id']}", token).status_code == 403
    # a key for nora that names both sites still sees only hers
    key = w.call("POST", "/api/v1/keys", w.admin,
                 json={"role": "viewer", "owner": "nora", "sites": ["north", "south"]}).json()
    assert key["sites"] == ["north", "south"]
    assert w.call("GET", f"/api/v1/nodes/{w.ids['south']['node_id']}", key["key"]).status_code == 403
    # an admin moves her to south: her open session follows at once
    r = w.call("PATCH", "/api/v1/users/nora", w.admin, json={"sites": ["south"]})
    assert r.status_code == 200
    assert r.json()["sites"] == ["south"]
    assert w.call("GET", f"/api/v1/alerts/{w.ids['south']['alert_id']}", token).status_code == 200
    assert w.call("GET", f"/api/v1/alerts/{w.ids['north']['alert_id']}", token).status_code == 403
    assert w.call("PATCH", "/api/v1/users/nora", w.admin, json={"sites": None}).json()["sites"] is None
    assert w.call("PATCH", "/api/v1/users/nora", w.admin, json={"sites": []}).status_code == 422
    with Session(w.engine) as s:
        actions = list(s.scalars(select(AuditRecord.action).where(AuditRecord.target == "user:nora")))
    assert actions.count("user.set_sites") == 2


def add_sites(s: Session, *ids: str) -> None:
    """Root nodes for ``ids``, as loading their site files would leave."""
    s.add_all(TwinNode(id=i, parent_id=None, path=f"/{i}/", kind="site", name=i) for i in ids)
    s.commit()


def test_a_scope_naming_a_site_not_on_the_platform_is_refused_by_name(world: World) -> None:
    made = world.call("POST", "/api/v1/users", world.admin,
                               json={"username": "tina", "password": PASSWORD, "role": "viewer", "sites": ["nort"]})
    assert made.status_code == 422
    assert "no site 'nort' on this platform" in made.text
    key = world.call("POST", "/api/v1/keys", world.admin, json={"name": "k", "role": "viewer", "sites": ["sooth"]})
    assert key.status_code == 422
    assert "no site 'sooth'" in key.text
    with Session(world.engine) as s:
        assert s.scalar(select(func.count()).select_from(User).where(User.username == "tina")) == 0


def test_an_admin_limited_to_a_site_is_not_the_last_admin(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    Base.metadata.create_all(engine)
    with make_sessionmaker(engine)() as s:
        add_sites(s, "north")
        create_user(s, "ada", PASSWORD, Role.ADMIN)
        with pytest.raises(Conflict, match="last active admin"):
            set_sites(s, "ada", ["north"])
        assert set_sites(s, "ada", None).sites is None
    engine.dispose()


def test_cli_sets_sites_on_users_and_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    run.upgrade(url)
    engine = make_engine(url)
    with Session(engine) as s:
        add_sites(s, "north", "south")
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path)]
    made = runner.invoke(cli, ["users", "create", "sam", "--role", "viewer", "--password-stdin", "--sites",
                               "north,south", *base], input=PASSWORD + "\n")
    assert made.exit_code == 0, made.output
    assert runner.invoke(cli, ["users", "set-sites", "sam", "south", *base]).exit_code == 0
    key = runner.invoke(cli, ["keys", "create", "--role", "viewer", "--sites", "north", *base])
    assert key.exit_code == 0, key.output
    listed = runner.invoke(cli, ["keys", "list", "--json", *base]).output
    assert '"sites": "north"' in listed
    bad = runner.invoke(cli, ["keys", "create", "--role", "viewer", "--sites", "no/such", *base])
    assert bad.exit_code != 0
    assert "not a site id" in bad.output
    typo = runner.invoke(cli, ["users", "set-sites", "sam", "nrth", *base])
    assert typo.exit_code != 0
    assert "no site 'nrth' on this platform (sites: north, south)" in typo.output
    with Session(engine) as s:
        assert s.scalars(select(User.sites).where(User.username == "sam")).one() == ["south"]
    engine.dispose()


# --- loading one site's file ----------------------------------------------------------------------------------


def test_reloading_one_site_keeps_the_others_nodes_alerts_and_history(world: World) -> None:
    def south_state() -> tuple[Any, ...]:
        with Session(world.engine) as s:
            nodes = sorted((n.id, n.retired_at) for n in s.scalars(select(TwinNode).where(
                TwinNode.path.startswith("/south/"))))
            alerts = sorted((a.id, a.state) for a in s.scalars(select(Alert).where(Alert.node_id == "south-pump")))
            history = s.scalar(select(func.count()).select_from(HistoryRow))
        return nodes, alerts, history

    before = south_state()
    extra = "          - {id: north-fan, kind: machine, type: pump}\n"
    store = TwinStore(world.engine)
    store.sync_site(parse_site(site_yaml("north", extra), "north.yaml"))
    smaller = site_yaml("north").replace("          - id: north-pump\n", "          - id: north-pump2\n")
    store.sync_site(parse_site(smaller, "north.yaml"))  # north-pump and north-fan leave north's file
    with Session(world.engine) as s:
        retired = {n.id for n in s.scalars(select(TwinNode).where(TwinNode.retired_at.is_not(None)))}
    assert retired == {"north-pump", "north-fan"}
    assert south_state() == before
    store.sync_site(world.sites["north"])  # as it was, for the other tests
