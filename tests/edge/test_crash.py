"""kill -9 of the agent while messages flow: after a restart every value reaches the platform, each once."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.edge.agent_process import AgentProcess
from tests.edge.conftest import SITE_YAML, AckResponder, on_broker
from tests.mqtt_peer import MqttPeer

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
MESSAGES = 300


def _publish(host: str, port: int, prefix: str, started: threading.Event) -> None:
    with MqttPeer(host, port, client_id=f"pub-{prefix}") as pub:
        for i in range(MESSAGES):
            doc = {"ts": time.time(), "temp": 50.0, "p": 1.0, "hz": 1.0, "c": i, "r": True, "m": "a"}
            pub.publish(f"{prefix}/p/1", json.dumps(doc))
            if i == 20:
                started.set()
            time.sleep(0.005)


def test_kill_9_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    host, port = mqtt_broker
    site = tmp_path / "site.yaml"
    # the devices stamp their values (ts_path): keys must not depend on when a redelivery arrives
    stamped = SITE_YAML.replace("topic: p/", f"topic: {topic_prefix}/p/").replace(", path:", ", ts_path: ts, path:")
    site.write_text(on_broker(stamped, f"mqtt://{host}:{port}", topic_prefix))
    data = tmp_path / "data"
    agent = AgentProcess(site, data, topic_prefix, host, port)
    agent.wait_for("mqtt_connected")  # the source subscription is up
    started = threading.Event()
    publisher = threading.Thread(target=_publish, args=(host, port, topic_prefix, started))
    publisher.start()
    try:
        started.wait(30)
        time.sleep(0.4)
        agent.stop(signal.SIGKILL)  # mid-stream: some messages un-acked, some values not yet uplinked
        agent = AgentProcess(site, data, topic_prefix, host, port)
        agent.wait_for("mqtt_connected")
        publisher.join(60)
        deadline = time.monotonic() + 60
        while len(responder.value_keys()) < MESSAGES * 6 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        agent.stop(signal.SIGTERM)
        publisher.join(5)
    counts = sorted(v for k, v in responder.values.items() if k[2] == "count")  # c × 2 (the binding's scale)
    assert counts == [2 * i for i in range(MESSAGES)]  # every message once: none lost, none twice
    assert len(responder.value_keys()) == MESSAGES * 6
