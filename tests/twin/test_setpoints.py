"""Setpoint writes on the platform: every bad request is refused with its reason and recorded; a good one is
stored, audited and published once to its own gateway's command topic; finished commands are never resent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, select

from plant.mqtt import BrokerUrl
from plant.site import parse_site
from plant.wire import CommandReport, decode_command, now_us
from tests.conftest import module_app, reset_app
from tests.mqtt_peer import MqttPeer
from twin import commands
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.store import TwinStore
from twin.tables import AuditRecord, SetpointCommand

SITE = """
site: {id: plant}
sources:
  ua: {kind: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}
asset_types:
  pump:
    properties:
      speed:
        unit: rpm
        writable: {limits: [0, 3000], max_rate: 100, role: technician}
      valve:
        unit: "%"
        dtype: int
        writable: {limits: [0, 100], role: engineer, two_person: true}
      temp: {unit: C}
nodes:
  - id: plant
    kind: site
    children:
      - id: area
        kind: area
        gateway: gw1
        children:
          - id: p1
            kind: machine
            type: pump
            bindings:
              speed: {source: ua, node_id: "ns=2;s=p1.speed"}
              valve: {source: ua, node_id: "ns=2;s=p1.valve"}
              temp: {source: ua, node_id: "ns=2;s=p1.temp"}
      - id: area2
        kind: area
        children:
          - id: p2
            kind: machine
            type: pump
            bindings:
              speed: {source: ua, node_id: "ns=2;s=p2.speed"}
"""


@dataclass
class Api:
    client: TestClient
    engine: Engine
    keys: dict[Role, str]

    def desired(self, node: str, prop: str, body: dict[str, Any], role: Role = Role.TECHNICIAN) -> Response:
        r: Response = self.client.post(f"/api/v1/nodes/{node}/properties/{prop}/desired", json=body,
                                       headers={"Authorization": f"Bearer {self.keys[role]}"})
        return r

    def raw(self, node: str, prop: str, text: str) -> Response:
        r: Response = self.client.post(f"/api/v1/nodes/{node}/properties/{prop}/desired", content=text,
                                       headers={"Authorization": f"Bearer {self.keys[Role.ENGINEER]}",
                                                "Content-Type": "application/json"})
        return r

    def audit(self, action: str) -> list[AuditRecord]:
        with make_sessionmaker(self.engine)() as s:
            return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))

    def command(self, cid: str) -> SetpointCommand:
        with make_sessionmaker(self.engine)() as s:
            cmd = s.get(SetpointCommand, cid)
            assert cmd is not None
            s.expunge(cmd)
            return cmd


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Engine]]:
    """One app for the module, on SQLite; ``api`` empties its database for each test."""
    tmp = tmp_path_factory.mktemp("setpoints")
    settings = TwinSettings(data_dir=tmp, model_dir=tmp / "none")
    with module_app(f"sqlite:///{tmp / 'twin.db'}", settings) as running:
        yield running


@pytest.fixture
def api(app: tuple[TestClient, Engine]) -> Api:
    client, engine = app
    reset_app(client)
    TwinStore(engine).sync_site(parse_site(SITE))
    with make_sessionmaker(engine)() as s:
        keys = {role: create_key(s, role, f"{role.value} key") for role in Role}
    return Api(client, engine, keys)


def test_a_good_write_is_stored_pending_with_expiry_and_audited(api: Api) -> None:
    r = api.desired("p1", "speed", {"value": 50, "reason": "bearing wear: run slower"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "pending"
    assert body["gateway"] == "gw1"
    assert body["value"] == 50
    cmd = api.command(body["id"])
    assert 59_000_000 <= cmd.expires_at - cmd.created_at <= 60_000_000
    (rec,) = api.audit("setpoint.request")
    assert rec.target == "setpoint:p1.speed"
    assert rec.after is not None
    assert rec.after["value"] == 50
    shown = api.client.get("/api/v1/nodes/p1/properties/speed/desired",
                           headers={"Authorization": f"Bearer {api.keys[Role.VIEWER]}"}).json()
    assert shown["desired"] == 50
    assert shown["in_sync"] is False
    assert shown["command"]["state"] == "pending"


@pytest.mark.parametrize(("node", "prop", "body", "status", "reason"), [
    ("p1", "speed", {"value": 3001}, 422, "out_of_limits"),
    ("p1", "speed", {"value": -1}, 422, "out_of_limits"),
    ("p1", "speed", {"value": 10**400}, 422, "out_of_limits"),
    ("p1", "speed", {"value": "50"}, 422, "wrong_type"),
    ("p1", "speed", {"value": True}, 422, "wrong_type"),
    ("p1", "speed", {"value": None}, 422, "wrong_type"),
    ("p1", "speed", {"value": [50]}, 422, "wrong_type"),
    ("p1", "valve", {"value": 12.5}, 422, "wrong_type"),
    ("p1", "temp", {"value": 20}, 422, "not_writable"),
    ("p2", "speed", {"value": 20}, 422, "not_owner"),
])
def test_bad_writes_are_refused_with_the_reason_and_recorded(
    api: Api, node: str, prop: str, body: dict[str, Any], status: int, reason: str
) -> None:
    r = api.desired(node, prop, body, Role.ENGINEER)
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(reason + ":")
    (rec,) = api.audit("setpoint.refuse")
    assert rec.after is not None
    assert rec.after["reason"] == reason
    with make_sessionmaker(api.engine)() as s:
        assert s.scalars(select(SetpointCommand)).first() is None


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(api: Api, literal: str) -> None:
    r = api.raw("p1", "speed", f'{{"value": {literal}}}')
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("not_finite:")
    assert api.audit("setpoint.refuse")


def test_a_role_below_the_property_least_role_is_refused(api: Api) -> None:
    r = api.desired("p1", "valve", {"value": 10}, Role.TECHNICIAN)
    assert r.status_code == 403
    assert r.json()["detail"].startswith("role_too_low:")
    assert api.audit("setpoint.refuse")[0].after["reason"] == "role_too_low"  # type: ignore[index]
    assert api.desired("p1", "speed", {"value": 10}, Role.VIEWER).status_code == 403


def test_a_step_faster_than_the_max_rate_is_refused(api: Api) -> None:
    assert api.desired("p1", "speed", {"value": 50}).status_code == 202
    r = api.desired("p1", "speed", {"value": 2000})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("too_fast:")


def test_a_two_person_write_waits_for_someone_else(api: Api) -> None:
    r = api.desired("p1", "valve", {"value": 40}, Role.ENGINEER)
    assert r.status_code == 202
    assert r.json()["state"] == "awaiting_confirmation"
    cid = r.json()["id"]
    same = api.client.post(f"/api/v1/commands/{cid}/confirm",
                           headers={"Authorization": f"Bearer {api.keys[Role.ENGINEER]}"})
    assert same.status_code == 422
    assert same.json()["detail"].startswith("unconfirmed:")
    low = api.client.post(f"/api/v1/commands/{cid}/confirm",
                          headers={"Authorization": f"Bearer {api.keys[Role.TECHNICIAN]}"})
    assert low.status_code == 403
    assert api.command(cid).state == "awaiting_confirmation"
    ok = api.client.post(f"/api/v1/commands/{cid}/confirm",
                         headers={"Authorization": f"Bearer {api.keys[Role.ADMIN]}"})
    assert ok.status_code == 200
    assert ok.json()["state"] == "pending"
    assert ok.json()["confirmed_by"]
    assert api.audit("setpoint.confirm")


def test_an_unconfirmed_command_is_never_sent(api: Api, mqtt_broker: tuple[str, int]) -> None:
    api.desired("p1", "valve", {"value": 40}, Role.ENGINEER)
    dispatcher = commands.CommandDispatcher(api.engine, _Connected())
    assert dispatcher.cycle() == 0


class _Connected:
    """Stands in for the broker only where a test must count publishes without one."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def is_connected(self) -> bool:
        return True

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.sent.append((topic, payload))


def test_dispatch_publishes_once_on_the_owning_gateway_topic_and_never_resends_finished(
    api: Api, mqtt_broker: tuple[str, int]
) -> None:
    root = f"t-{uuid.uuid4().hex[:8]}/v1"
    host, port = mqtt_broker
    sub = MqttPeer(host, port, [f"{root}/#"])
    dispatcher = commands.CommandDispatcher.connect(api.engine, BrokerUrl(host, port),
                                                    f"d-{uuid.uuid4().hex[:8]}", root)
    try:
        _wait(lambda: dispatcher.client.is_connected())
        cid = api.desired("p1", "speed", {"value": 50}).json()["id"]
        assert dispatcher.cycle() == 1
        msg = sub.get(timeout=5)
        assert msg.topic == f"{root}/gw1/cmd/setpoint"
        assert msg.qos == 1
        cmd = decode_command(msg.payload)
        assert (cmd.id, cmd.node, cmd.prop, cmd.value) == (cid, "p1", "speed", 50)
        assert api.command(cid).state == "sent"
        assert dispatcher.cycle() == 0  # not again before the resend interval
        report = CommandReport(id=cid, node="p1", prop="speed", state="applied", value=50.0, at=now_us())
        with api.engine.begin() as conn:  # another gateway's report: refused, changes nothing
            assert [r.reason for r in commands.apply_reports(conn, "gw-other", [(0, report)])] == ["not_owner"]
        assert api.command(cid).state == "sent"
        for _ in range(2):  # a repeat changes nothing
            with api.engine.begin() as conn:
                assert commands.apply_reports(conn, "gw1", [(0, report)]) == []
        assert len(api.audit("setpoint.applied")) == 1
        assert api.command(cid).state == "applied"
        assert api.command(cid).reported == 50.0
        # a restarted platform (a new dispatcher), much later: a finished command is not sent again
        again = commands.CommandDispatcher(api.engine, dispatcher.client, root)
        assert again.cycle(now=now_us() + 10_000_000) == 0
        assert sub.messages.empty()
        assert api.audit("setpoint.applied")[0].actor == "gateway:gw1"
    finally:
        dispatcher.stop()
        sub.close()


def test_a_command_pending_while_the_broker_is_down_expires_unsent(api: Api) -> None:
    class _Down(_Connected):
        def is_connected(self) -> bool:
            return False

    cid = api.desired("p1", "speed", {"value": 50, "expires_s": 1}).json()["id"]
    down = commands.CommandDispatcher(api.engine, _Down())
    assert down.cycle() == 0
    up = _Connected()
    later = commands.CommandDispatcher(api.engine, up)
    assert later.cycle(now=now_us() + 2_000_000) == 0
    assert not up.sent
    later.cycle(now=now_us() + 2_000_000 + commands.REPORT_GRACE_US)
    cmd = api.command(cid)
    assert cmd.state == "expired"
    assert cmd.outcome == "no_report"


def test_the_dispatcher_logs_in_as_the_broker_url_says(api: Api) -> None:
    url = BrokerUrl.parse("mqtts://platform:s3cret@127.0.0.1:1?ca_file=/etc/ssl/plant-ca.pem&client_id=ingest")
    dispatcher = commands.CommandDispatcher.connect(api.engine, url, "platform-commands")
    try:
        options = dispatcher.client.options  # type: ignore[attr-defined]
        assert (options.tls, options.ca_file, options.username, options.password) == (
            True, "/etc/ssl/plant-ca.pem", "platform", "s3cret")
        assert options.client_id == "platform-commands"  # the URL's client id is the ingest workers'
    finally:
        dispatcher.stop()


def _wait(cond: Any, timeout: float = 5.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)



def test_the_logbook_shows_the_request_and_what_the_machine_said(api: Api) -> None:
    cid = api.desired("p1", "speed", {"value": 50, "reason": "bearing wear"}).json()["id"]
    report = CommandReport(id=cid, node="p1", prop="speed", state="applied", value=50.0, at=now_us())
    with api.engine.begin() as conn:
        commands.apply_reports(conn, "gw1", [(0, report)])
    r = api.client.get("/api/v1/logbook", params={"node": "p1", "source": "setpoints"},
                       headers={"Authorization": f"Bearer {api.keys[Role.VIEWER]}"})
    assert r.status_code == 200, r.text
    kinds = [(e["kind"], e["actor"]) for e in r.json()["items"]]
    tech = f"key {api.keys[Role.TECHNICIAN][:16]} (technician key)"
    assert kinds == [("applied", "gateway gw1"), ("requested", tech)]
    assert "bearing wear" in r.json()["items"][1]["detail"]
