"""kill -9 between the outbox COMMIT and the PUBACK: the broker's redelivery must not be stored twice.

The agent reaches its broker through a proxy that stops passing what the agent sends once the test mutes it:
the agent commits and forwards what it receives, its PUBACKs never reach the broker, and it is killed then.

Values stamped with receive time (no source timestamp, or an absurd clock) would get a new time, so a new
idempotency key, when redelivered; the agent recognises the redelivery by the message's fingerprint.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.edge.agent_process import AgentProcess, MuteProxy
from tests.edge.conftest import SITE_YAML, AckResponder, on_broker
from tests.mqtt_peer import MqttPeer

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
MESSAGES = 40


def _publish(host: str, port: int, prefix: str) -> None:
    with MqttPeer(host, port, client_id=f"pub-{prefix}") as pub:
        for i in range(MESSAGES):
            # pump-1: no timestamp at all; pump-2: a PLC clock reset to 2000-01-01 (absurd: receive time is used)
            doc = {"temp": 50.0, "p": 1.0, "hz": 1.0, "c": i, "r": True, "m": "a"}
            pub.publish(f"{prefix}/p/1", json.dumps(doc))
            pub.publish(f"{prefix}/p/2", json.dumps({"ts": 946684800 + i, "temp": float(i), "p": 2.0}))


def test_kill_9_between_commit_and_puback_stores_receive_time_values_once(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    host, port = mqtt_broker
    proxy = MuteProxy(host, port)
    site = tmp_path / "site.yaml"
    text = SITE_YAML.replace("topic: p/1", f"topic: {topic_prefix}/p/1").replace(
        "topic: p/2, path:", f"topic: {topic_prefix}/p/2, ts_path: ts, path:"
    )
    site.write_text(on_broker(text, f"mqtt://127.0.0.1:{proxy.port}", topic_prefix))
    data = tmp_path / "data"
    agent = AgentProcess(site, data, topic_prefix, host, port)
    try:
        agent.wait_for("mqtt_connected")  # subscribed
        proxy.mute()  # from here the broker gets no PUBACK from this agent
        _publish(host, port, topic_prefix)
        seen, deadline = -1, time.monotonic() + 30
        while (seen == 0 or len(responder.value_keys()) != seen) and time.monotonic() < deadline:
            seen = len(responder.value_keys())  # committed and forwarded: wait until it stops growing
            time.sleep(0.5)
        assert seen > 0
    finally:
        agent.stop(signal.SIGKILL)

    agent = AgentProcess(site, data, topic_prefix, host, port)
    try:
        agent.wait_for("mqtt_connected")
        want = MESSAGES * 6 + MESSAGES * 2
        deadline = time.monotonic() + 60
        while len(responder.value_keys()) < want and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # room for duplicates to show up
    finally:
        agent.stop(signal.SIGTERM)
        proxy.close()
    counts = sorted(v for k, v in responder.values.items() if k[1] == "pump-1" and k[2] == "count")
    assert counts == [2 * i for i in range(MESSAGES)]  # every message once: none lost, none twice
    temps = sorted(v for k, v in responder.values.items() if k[1] == "pump-2" and k[2] == "temp")
    assert temps == [float(i) for i in range(MESSAGES)]
    assert len(responder.value_keys()) == MESSAGES * 8
    log = "".join(agent.lines)
    assert "redelivery_skipped" in log  # the broker did redeliver what the first agent had committed


def test_identical_payloads_without_redelivery_are_all_kept(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    """A sensor repeating the same value with no timestamp: each message is new data, none is skipped."""
    host, port = mqtt_broker
    site = tmp_path / "site.yaml"
    text = SITE_YAML.replace("topic: p/2", f"topic: {topic_prefix}/p/2")
    site.write_text(on_broker(text, f"mqtt://{host}:{port}", topic_prefix))
    agent = AgentProcess(site, tmp_path / "data", topic_prefix, host, port)
    try:
        agent.wait_for("mqtt_connected")
        with MqttPeer(host, port, client_id=f"pub-{topic_prefix}") as pub:
            for _ in range(5):
                pub.publish(f"{topic_prefix}/p/2", b'{"temp": 21.5, "p": 1.0}')
                time.sleep(0.05)  # distinct receive times: distinct keys
        deadline = time.monotonic() + 30
        while len(responder.value_keys()) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        agent.stop(signal.SIGTERM)
    assert "redelivery_skipped" not in "".join(agent.lines)
    assert len(responder.value_keys()) == 10
