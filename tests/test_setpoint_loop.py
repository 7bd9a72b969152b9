"""The whole setpoint loop: API → platform dispatcher → MQTT broker → agent process → asyncua server → read
back → report in an uplink batch → ingest → the twin shows desired against reported. The broker stopped
while a command is pending: the command is never applied, and ends expired."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from plant.mqtt import BrokerUrl
from tests.edge.agent_process import AgentProcess
from tests.edge.connectors.conftest import free_port
from tests.edge.setpoint_plant import PlcServer, plant_twin
from twin.api import create_app
from twin.broker import EmbeddedBroker
from twin.commands import CommandDispatcher
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.ingest import Ingestor
from twin.tables import SetpointCommand

pytestmark = [pytest.mark.slow]
GATEWAY = "gw-loop"


@dataclass
class Loop:
    client: TestClient
    engine: Engine
    key: str
    plc: PlcServer
    broker: EmbeddedBroker
    agent: AgentProcess
    dispatcher: CommandDispatcher

    def desired(self, value: float, **extra: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/nodes/p1/properties/speed/desired", json={"value": value, **extra},
                             headers={"Authorization": f"Bearer {self.key}"})
        assert r.status_code == 202, r.text
        return dict(r.json())

    def shown(self) -> dict[str, Any]:
        r = self.client.get("/api/v1/nodes/p1/properties/speed/desired",
                            headers={"Authorization": f"Bearer {self.key}"})
        return dict(r.json())

    def state(self, cid: str) -> SetpointCommand:
        with make_sessionmaker(self.engine)() as s:
            cmd = s.get(SetpointCommand, cid)
            assert cmd is not None
            s.expunge(cmd)
            return cmd


def _until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    broker = EmbeddedBroker(port=0).start()
    with PlcServer(free_port()) as plc:
        twin = plant_twin(plc, GATEWAY, tmp_path, "tech")
        site_file, engine, key = twin.site_file, twin.engine, twin.key
        ingestor = Ingestor(twin.store, BrokerUrl("127.0.0.1", broker.port), client_id="loop-ingest").start()
        dispatcher = CommandDispatcher.connect(engine, BrokerUrl("127.0.0.1", broker.port), "loop-commands")
        dispatcher.report_grace_us = 2_000_000
        dispatcher.start()
        agent = AgentProcess(site_file, tmp_path / "agent", GATEWAY, "127.0.0.1", broker.port)
        agent.wait_for("platform_connected")
        time.sleep(0.3)
        app = create_app(TwinSettings(data_dir=tmp_path, model_dir=tmp_path / "none"), engine)
        with TestClient(app) as client:
            app.state.commands = dispatcher
            loop = Loop(client, engine, key, plc, broker, agent, dispatcher)
            try:
                yield loop
            finally:
                loop.agent.stop(signal.SIGTERM)
                dispatcher.stop()
                ingestor.stop()
                loop.broker.stop()
                engine.dispose()


def test_desired_reaches_the_machine_and_the_twin_shows_it_reported(loop: Loop) -> None:
    cid = loop.desired(1500.0, reason="slow down until the bearing is replaced")["id"]
    _until(lambda: loop.state(cid).state == "applied")
    cmd = loop.state(cid)
    assert cmd.reported == 1500.0
    assert loop.plc.value() == 1500.0
    _until(lambda: loop.shown()["in_sync"])  # the measured value came up the uplink too
    assert loop.shown()["command"]["state"] == "applied"


def test_a_command_pending_while_the_broker_is_down_is_never_applied(loop: Loop) -> None:
    port = loop.broker.port
    loop.broker.stop()
    _until(lambda: not loop.dispatcher.client.is_connected(), 15)
    cid = loop.desired(900.0, expires_s=1)["id"]
    time.sleep(1.5)  # past its expiry while nobody could carry it
    loop.broker = EmbeddedBroker(port=port).start()
    _until(lambda: loop.state(cid).state == "expired", 30)
    _until(lambda: loop.dispatcher.client.is_connected(), 30)
    time.sleep(1.0)
    cmd = loop.state(cid)
    assert (cmd.state, cmd.outcome) == ("expired", "no_report")
    assert cmd.sent_at is None
    assert loop.plc.value() == 0.0
