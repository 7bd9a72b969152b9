"""Setpoint commands through Mosquitto to a real agent process and a real asyncua server: applied once and
reported; a command that waited past its expiry while the agent was down is never applied; an agent killed
(-9) after the write and before the report (the test's server holds its answer to the write) never writes again
after its restart and still reports."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from asyncua import Server
from asyncua.common.callback import CallbackType, ServerItemCallback
from paho.mqtt.enums import CallbackAPIVersion

from plant.wire import Command, CommandReport, command_topic, now_us
from tests.edge.agent_process import AgentProcess
from tests.edge.conftest import AckResponder
from tests.edge.connectors.conftest import free_port

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

SITE = """
site: {{id: plant}}
sources:
  ua: {{kind: opcua, endpoint: "opc.tcp://127.0.0.1:{port}/test/"}}
asset_types:
  pump:
    properties:
      speed: {{unit: rpm, writable: {{limits: [0, 3000], role: technician}}}}
nodes:
  - id: plant
    kind: site
    gateway: {gateway}
    children:
      - id: area
        kind: area
        children:
          - id: p1
            kind: machine
            type: pump
            bindings:
              speed: {{source: ua, node_id: "ns=2;s=speed"}}
"""


class PlcServer:
    """An asyncua server with one writable variable, on its own thread and loop.

    With ``holding`` set, a client's write is carried out and its answer held until ``release`` is set:
    ``written`` tells the test the value has reached the variable.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.var: Any = None
        self.holding = False
        self.written = threading.Event()
        self.release = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/test/")
        idx = await server.register_namespace("urn:factory-twin:test")
        obj = await server.nodes.objects.add_object(idx, "Plant")
        from asyncua import ua

        self.var = await obj.add_variable(ua.NodeId("speed", idx), f"{idx}:speed", 0.0)
        await self.var.set_writable()
        server.subscribe_server_callback(CallbackType.PostWrite, self._after_write)
        self._stop = asyncio.Event()
        async with server:
            self.ready.set()
            await self._stop.wait()

    async def _after_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if self.holding and event.is_external:  # a client's write: done, its answer held
            self.written.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 60)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def value(self) -> float:
        return float(self.call(self.var.read_value()))

    def set(self, value: float) -> None:
        self.call(self.var.write_value(value))

    def __enter__(self) -> PlcServer:
        self.thread.start()
        assert self.ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.release.set()
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(20)


@pytest.fixture
def plc() -> Iterator[PlcServer]:
    with PlcServer(free_port()) as server:
        yield server


def _site(tmp_path: Path, plc: PlcServer, gateway: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(port=plc.port, gateway=gateway))
    return path


def _send(host: str, port: int, gateway: str, value: float, cid: str, expires_in_s: float = 30.0) -> None:
    now = now_us()
    cmd = Command(id=cid, gateway=gateway, node="p1", prop="speed", value=value, issued=now,
                  expires=now + int(expires_in_s * 1e6))
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cmd-{cid}")
    c.connect(host, port)
    c.loop_start()
    c.publish(command_topic(gateway), cmd.model_dump_json(), qos=1).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


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
