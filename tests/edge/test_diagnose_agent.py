"""The agent runs the diagnostics: MQTT telemetry in, diagnoses in the outbox next to the values, metrics out."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml

from edge_agent.agent import Agent
from edge_agent.outbox import DIAGNOSIS, FRAME, OutboxDB
from tests.edge.test_agent import _get
from tests.edge.test_diagnose import FAULTS, site_of
from tests.mqtt_peer import MqttPeer

FIELDS = {"product_type": "type", "air_temperature": "air_temp_k", "process_temperature": "process_temp_k",
          "rotational_speed": "speed_rpm", "torque": "torque_nm", "tool_wear": "tool_wear_min"}  # fmt: skip


def _site(prefix: str, host: str, port: int) -> str:
    """The example mill, its telemetry as one JSON message on the test broker (the example plant's paths)."""
    source = {"kind": "mqtt", "format": "json", "url": f"mqtt://{host}:{port}", "client_id": f"agent-{prefix}"}
    topic = f"{prefix}/mill-1"
    site = site_of(
        {"mill-1": "cnc_mill"},
        source=source,
        binding=lambda _node, p: {"source": "plc", "topic": topic, "path": FIELDS[p], "ts_path": "ts"},
    )
    return yaml.safe_dump(site, allow_unicode=True)


@pytest.mark.mosquitto
@pytest.mark.slow
def test_the_agent_stores_a_diagnosis_per_grid_point(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    host, port = mqtt_broker
    site = tmp_path / "site.yaml"
    site.write_text(_site(topic_prefix, host, port))

    async def main() -> str:
        agent = Agent(site_file=site, gateway_id=topic_prefix, data_dir=tmp_path / "data", metrics_port=0)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        assert agent.diagnoser is not None
        assert agent.diagnoser.versions() == {"cnc_mill": {"faults": FAULTS}}
        await asyncio.sleep(1.0)  # the connector subscribes
        start = int(time.time()) - 20
        with MqttPeer(host, port) as pub:
            for i in range(8):
                payload = {"ts": (start + i) * 1000, "type": "M", "air_temp_k": 298.0, "process_temp_k": 308.6,
                           "speed_rpm": 1500, "torque_nm": 40.0, "tool_wear_min": 10 + i}  # fmt: skip
                pub.publish(f"{topic_prefix}/mill-1", json.dumps(payload))
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while len(agent.diagnoser.latest) < 1 and loop.time() < end:  # noqa: ASYNC110 - polled state
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert agent.metrics_port is not None
        text = await _get(agent.metrics_port)
        agent.stop()
        await asyncio.wait_for(task, 20)
        return text

    text = asyncio.run(main())
    db = OutboxDB(tmp_path / "data" / "outbox.sqlite")
    try:
        chunks = db.take(100_000)
    finally:
        db.close()
    items = {kind: [x for c in chunks if c.kind == kind for x in json.loads(b"[" + c.body + b"]")]
             for kind in (FRAME, DIAGNOSIS)}  # fmt: skip
    frames = {f["ts"] for f in items[FRAME]}
    diagnoses = items[DIAGNOSIS]
    assert len(frames) == 7  # grid points with a value after them
    assert sorted(d["ts"] for d in diagnoses) == sorted(frames)  # one per grid point, none lost at the stop
    assert all(d["node"] == "mill-1" and d["task"] == "faults" and d["label"] == "none" for d in diagnoses)
    assert 'ft_agent_diagnoses_total{source="edge",task="faults"}' in text
    assert f'ft_agent_model_info{{asset_type="cnc_mill",task="faults",version="{FAULTS}"}} 1.0' in text
    assert "ft_agent_diagnosis_stretch" in text
