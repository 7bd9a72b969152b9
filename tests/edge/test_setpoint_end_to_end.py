"""Setpoint commands through Mosquitto to a real agent process and a real asyncua server: applied once and
reported; a command that waited past its expiry while the agent was down is never applied; an agent killed
(-9) after the write and before the report (the test's server holds its answer to the write) never writes again
after its restart and still reports."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plant.wire import Command, CommandReport, command_topic, now_us
from tests.edge.agent_process import AgentProcess
from tests.edge.conftest import AckResponder
from tests.edge.connectors.conftest import free_port
from tests.edge.setpoint_plant import PlcServer, site_text
from tests.mqtt_peer import MqttPeer

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


@pytest.fixture
def plc() -> Iterator[PlcServer]:
    with PlcServer(free_port()) as server:
        yield server


def _site(tmp_path: Path, plc: PlcServer, gateway: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(site_text(plc, gateway))
    return path


def _send(host: str, port: int, gateway: str, value: float, cid: str, expires_in_s: float = 30.0) -> None:
    now = now_us()
    cmd = Command(id=cid, gateway=gateway, node="p1", prop="speed", value=value, issued=now,
                  expires=now + int(expires_in_s * 1e6))
    with MqttPeer(host, port, client_id=f"cmd-{cid}") as c:
        c.publish(command_topic(gateway), cmd.model_dump_json())


def _report(responder: AckResponder, cid: str, timeout: float = 30.0) -> CommandReport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in responder.reports if r.id == cid]
        if found:
            return found[0]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no report for {cid}")


def _agent(site: Path, data: Path, gateway: str, host: str, port: int) -> AgentProcess:
    agent = AgentProcess(site, data, gateway, host, port)
    agent.wait_for("platform_connected")
    time.sleep(0.3)  # the command topic's subscription follows the connect
    return agent


def test_applied_once_and_reported(tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str,
                                   responder: AckResponder, plc: PlcServer) -> None:
    host, port = mqtt_broker
    site = _site(tmp_path, plc, topic_prefix)
    agent = _agent(site, tmp_path / "data", topic_prefix, host, port)
    try:
        _send(host, port, topic_prefix, 1500.0, "e2e-apply-1")
        report = _report(responder, "e2e-apply-1")
        assert (report.state, report.value) == ("applied", 1500.0)
        assert plc.value() == 1500.0
        plc.set(3.0)
        _send(host, port, topic_prefix, 1500.0, "e2e-apply-1")  # delivered twice
        time.sleep(1.0)
        assert plc.value() == 3.0  # not applied again
    finally:
        agent.stop(signal.SIGTERM)


def test_a_command_that_waited_past_expiry_while_the_agent_was_down_is_never_applied(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder, plc: PlcServer
) -> None:
    host, port = mqtt_broker
    site = _site(tmp_path, plc, topic_prefix)
    agent = _agent(site, tmp_path / "data", topic_prefix, host, port)
    agent.stop(signal.SIGKILL)  # its persistent session keeps QoS 1 messages on the broker
    _send(host, port, topic_prefix, 900.0, "e2e-stale-1", expires_in_s=1.0)
    time.sleep(1.5)
    agent = _agent(site, tmp_path / "data", topic_prefix, host, port)
    try:
        report = _report(responder, "e2e-stale-1")
        assert report.state == "expired"
        assert plc.value() == 0.0
    finally:
        agent.stop(signal.SIGTERM)


def test_killed_after_the_write_before_the_report_never_writes_again(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder, plc: PlcServer
) -> None:
    host, port = mqtt_broker
    site = _site(tmp_path, plc, topic_prefix)
    data = tmp_path / "data"
    agent = _agent(site, data, topic_prefix, host, port)
    plc.holding = True  # the write is done at the machine; the agent waits for the server's answer
    try:
        _send(host, port, topic_prefix, 1200.0, "e2e-kill-1")
        assert plc.written.wait(30)
    finally:
        agent.stop(signal.SIGKILL)
        plc.holding = False
        plc.release.set()
    assert plc.value() == 1200.0
    assert not [r for r in responder.reports if r.id == "e2e-kill-1"]  # no report went out
    plc.set(7.0)  # someone moves it at the machine while the agent is down
    agent = _agent(site, data, topic_prefix, host, port)
    try:
        report = _report(responder, "e2e-kill-1")
        assert (report.state, report.reason) == ("failed", "interrupted")
        assert report.value == 7.0
        _send(host, port, topic_prefix, 1200.0, "e2e-kill-1")  # and the platform resends it
        time.sleep(1.0)
        assert plc.value() == 7.0  # never written a second time
    finally:
        with contextlib.suppress(Exception):
            agent.stop(signal.SIGTERM)
