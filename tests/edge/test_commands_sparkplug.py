"""Setpoint commands to a Sparkplug B edge node on the real broker: NCMD for a metric of the node, DCMD for a
metric of one of its devices, both at QoS 0; the value is read back from the next NDATA/DDATA carrying the
metric (by alias, learnt from the birth the writer asks for); an edge node that does not answer fails the
command ``no_readback``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.commands import CommandExecutor, Journal, Writers
from edge_agent.connectors import sparkplug_b_pb2 as pb
from edge_agent.connectors.sparkplug import REBIRTH_METRIC
from plant.site import parse_site
from plant.wire import Command, CommandReport, now_us
from tests.edge.setpoint_plant import pump_site
from tests.mqtt_peer import Message, MqttPeer

pytestmark = [pytest.mark.mosquitto]

def _site(host: str, port: int, group: str) -> str:
    return pump_site(
        "gw1", f'bus: {{kind: mqtt, url: "mqtt://{host}:{port}", format: sparkplug}}',
        f'speed: {{source: bus, device: "{group}/edge1", metric: Motor/Speed}}, '
        f'stroke: {{source: bus, device: "{group}/edge1/valve", metric: Stroke, scale: 0.5}}',
        "stroke: {unit: mm, dtype: int, writable: {limits: [-50, 50], role: technician}}")


class EdgeNode:
    """A fake Sparkplug B edge node with one device: applies NCMD/DCMD metrics and reports them in NDATA/DDATA
    by alias only; answers a rebirth request with its births (names and aliases). Seen commands are kept."""

    def __init__(self, host: str, port: int, group: str, answer: bool) -> None:
        self.group = group
        self.answer = answer
        self.seq = 0
        self.values: dict[str, float | int] = {"Motor/Speed": 0.0, "Stroke": 0}
        self.commands: list[tuple[str, int, str, str]] = []  # topic, qos, metric, value field
        commands = [f"spBv1.0/{group}/NCMD/edge1", f"spBv1.0/{group}/DCMD/edge1/valve"]
        self.client = MqttPeer(host, port, commands, client_id=f"edge-{group}", on_message=self._on_message)

    def _send(self, kind: str, topic_tail: str, metrics: list[tuple[str, int, float | int]], names: bool) -> None:
        msg = pb.Payload(timestamp=now_us() // 1000, seq=self.seq)
        self.seq = (self.seq + 1) % 256
        for name, alias, value in metrics:
            m = msg.metrics.add()
            m.alias = alias
            if names:
                m.name = name
            if isinstance(value, int):
                m.datatype, m.long_value = pb.Int64, value % (1 << 64)
            else:
                m.datatype, m.double_value = pb.Double, value
        self.client.publish(f"spBv1.0/{self.group}/{kind}/{topic_tail}", msg.SerializeToString(), qos=0)

    def _on_message(self, message: Message) -> None:
        cmd = pb.Payload.FromString(message.payload)
        for m in cmd.metrics:
            self.commands.append((message.topic, message.qos, m.name, str(m.WhichOneof("value"))))
            if m.name == REBIRTH_METRIC:
                self._send("NBIRTH", "edge1", [("Motor/Speed", 1, self.values["Motor/Speed"])], names=True)
                self._send("DBIRTH", "edge1/valve", [("Stroke", 2, self.values["Stroke"])], names=True)
            elif self.answer and m.name in self.values:
                value: float | int = m.double_value if m.WhichOneof("value") == "double_value" else m.long_value
                if isinstance(value, int) and value >= 1 << 63:
                    value -= 1 << 64
                self.values[m.name] = value
                if message.topic.split("/")[2] == "NCMD":
                    self._send("NDATA", "edge1", [(m.name, 1, value)], names=False)
                else:
                    self._send("DDATA", "edge1/valve", [(m.name, 2, value)], names=False)

    def close(self) -> None:
        self.client.close()


@pytest.mark.parametrize("answer", [True, False])
def test_a_sparkplug_edge_node_and_device_are_written_and_read_back(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, answer: bool
) -> None:
    host, port = mqtt_broker
    site = parse_site(_site(host, port, topic_prefix))
    node = EdgeNode(host, port, topic_prefix, answer)
    writers = Writers(site)
    writers.mqtt.readback_s = 3.0 if answer else 1.0
    executor = CommandExecutor(site, "gw1", Journal(tmp_path / "commands.db"), writers)
    now = now_us()

    def command(cid: str, prop: str, value: float) -> bytes:
        return Command(id=cid, gateway="gw1", node="p1", prop=prop, value=value, issued=now,
                       expires=now + 30_000_000).model_dump_json().encode()

    async def both() -> list[CommandReport | None]:
        return [await executor.handle(command("spb00001", "speed", 1450.0)),
                await executor.handle(command("spb00002", "stroke", -20))]

    try:
        speed, stroke = asyncio.run(both())
    finally:
        node.close()
    assert speed is not None
    assert stroke is not None
    writes = [c for c in node.commands if c[2] != REBIRTH_METRIC]
    assert writes == [(f"spBv1.0/{topic_prefix}/NCMD/edge1", 0, "Motor/Speed", "double_value"),
                      (f"spBv1.0/{topic_prefix}/DCMD/edge1/valve", 0, "Stroke", "long_value")]
    if answer:
        assert (speed.state, speed.value) == ("applied", 1450.0)
        assert (stroke.state, stroke.value) == ("applied", -20.0)
        assert node.values == {"Motor/Speed": 1450.0, "Stroke": -40}  # scale 0.5: -20 mm is -40 raw
    else:
        assert (speed.state, speed.reason) == ("failed", "no_readback")
        assert "Motor/Speed" in speed.detail
        assert node.values == {"Motor/Speed": 0.0, "Stroke": 0}
