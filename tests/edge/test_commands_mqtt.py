"""Setpoint commands to a plain-JSON MQTT device on the real broker: the command goes to its command topic
and the value is read back from its telemetry; a device that does not answer fails the command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.commands import CommandExecutor, Journal, Writers
from plant.site import parse_site
from plant.wire import Command, now_us
from tests.edge.setpoint_plant import pump_site
from tests.mqtt_peer import Message, MqttPeer

pytestmark = [pytest.mark.mosquitto]

def _site(host: str, port: int, prefix: str) -> str:
    return pump_site("gw1", f'bus: {{kind: mqtt, url: "mqtt://{host}:{port}"}}',
                     f"speed: {{source: bus, topic: {prefix}/p1/telemetry, path: motor.speed, "
                     f"command_topic: {prefix}/p1/set, command_field: speed}}")


def _device(host: str, port: int, prefix: str, answer: bool) -> MqttPeer:
    """A device: takes {"speed": x} on its command topic and, if ``answer``, sends it back as telemetry."""

    def on_message(message: Message) -> None:
        if answer:
            speed = json.loads(message.payload)["speed"]
            device.publish(f"{prefix}/p1/telemetry", json.dumps({"motor": {"speed": speed}}))

    device = MqttPeer(host, port, [f"{prefix}/p1/set"], client_id=f"dev-{prefix}", on_message=on_message)
    return device


@pytest.mark.parametrize("answer", [True, False])
def test_a_json_device_is_written_and_read_back(tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str,
                                                answer: bool) -> None:
    host, port = mqtt_broker
    site = parse_site(_site(host, port, topic_prefix))
    device = _device(host, port, topic_prefix, answer)
    writers = Writers(site)
    writers.mqtt.readback_s = 2.0
    executor = CommandExecutor(site, "gw1", Journal(tmp_path / "commands.db"), writers)
    now = now_us()
    cmd = Command(id="mqtt0001", gateway="gw1", node="p1", prop="speed", value=1450.0, issued=now,
                  expires=now + 30_000_000)
    try:
        report = asyncio.run(executor.handle(cmd.model_dump_json().encode()))
    finally:
        device.close()
    assert report is not None
    if answer:
        assert (report.state, report.value) == ("applied", 1450.0)
    else:
        assert (report.state, report.reason) == ("failed", "no_readback")
        assert "no value" in report.detail
