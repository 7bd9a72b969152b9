"""kill -9 between the outbox COMMIT and the PUBACK: the broker's redelivery must not be stored twice.

Values stamped with receive time (no source timestamp, or an absurd clock) would get a new time, so a new
idempotency key, when redelivered; the agent recognises the redelivery by the message's fingerprint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.edge.conftest import SITE_YAML, AckResponder

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
MESSAGES = 40
HOLD_ENV = "FACTORY_TWIN_TEST_HOLD_AFTER_COMMIT"


class Agent:
    """An agent subprocess whose stderr is read on a thread, so a test can wait for a log event."""

    def __init__(self, site: Path, data: Path, gateway: str, host: str, port: int, hold: bool) -> None:
        args = [
            sys.executable,
            "-m",
            "factory_twin",
            "agent",
            "run",
            "--site",
            str(site),
            "--gateway",
            gateway,
            "--broker",
            f"mqtt://{host}:{port}",
            "--data-dir",
            str(data),
            "--metrics-port",
            "-1",
        ]
        env = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
        if hold:
            env[HOLD_ENV] = "1"
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, event: str, timeout: float = 30.0) -> None:
        """Wait until the agent logged ``event``."""
        deadline = time.monotonic() + timeout
        while not any(event in x for x in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no {event}:\n" + "".join(self.lines[-30:])
            time.sleep(0.02)

    def stop(self, sig: int) -> None:
        """Signal the agent and wait for it to end."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _publish(host: str, port: int, prefix: str) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{prefix}")
    pub.connect(host, port)
    pub.loop_start()
    for i in range(MESSAGES):
        # pump-1: no timestamp at all; pump-2: a PLC clock reset to 2000-01-01 (absurd: receive time is used)
        doc = {"temp": 50.0, "p": 1.0, "hz": 1.0, "c": i, "r": True, "m": "a"}
        pub.publish(f"{prefix}/p/1", json.dumps(doc), qos=1).wait_for_publish(10)
        pub.publish(f"{prefix}/p/2", json.dumps({"ts": 946684800 + i, "temp": float(i), "p": 2.0}), qos=1)
    pub.loop_stop()
    pub.disconnect()


def test_kill_9_between_commit_and_puback_stores_receive_time_values_once(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    host, port = mqtt_broker
    site = tmp_path / "site.yaml"
    site.write_text(
        SITE_YAML.replace("topic: p/1", f"topic: {topic_prefix}/p/1")
        .replace("topic: p/2, path:", f"topic: {topic_prefix}/p/2, ts_path: ts, path:")
        .replace(
            "plc: {kind: mqtt, format: json}",
            f"plc: {{kind: mqtt, url: 'mqtt://{host}:{port}', client_id: agent-{topic_prefix}}}",
        )
    )
    data = tmp_path / "data"
    agent = Agent(site, data, topic_prefix, host, port, hold=True)
    try:
        agent.wait_for("mqtt_connected")
        _publish(host, port, topic_prefix)
        agent.wait_for("test_hold_after_commit")  # committed, PUBACKs not sent
    finally:
        agent.stop(signal.SIGKILL)
    assert responder.value_keys() == set()  # nothing reached the platform: all of it is in the outbox

    agent = Agent(site, data, topic_prefix, host, port, hold=False)
    try:
        agent.wait_for("mqtt_connected")
        want = MESSAGES * 6 + MESSAGES * 2
        deadline = time.monotonic() + 60
        while len(responder.value_keys()) < want and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # room for duplicates to show up
    finally:
        agent.stop(signal.SIGTERM)
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
    site.write_text(
        SITE_YAML.replace("topic: p/2", f"topic: {topic_prefix}/p/2").replace(
            "plc: {kind: mqtt, format: json}",
            f"plc: {{kind: mqtt, url: 'mqtt://{host}:{port}', client_id: agent-{topic_prefix}}}",
        )
    )
    agent = Agent(site, tmp_path / "data", topic_prefix, host, port, hold=False)
    try:
        agent.wait_for("mqtt_connected")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{topic_prefix}")
        pub.connect(host, port)
        pub.loop_start()
        for _ in range(5):
            pub.publish(f"{topic_prefix}/p/2", b'{"temp": 21.5, "p": 1.0}', qos=1).wait_for_publish(10)
            time.sleep(0.05)  # distinct receive times: distinct keys
        pub.loop_stop()
        pub.disconnect()
        deadline = time.monotonic() + 30
        while len(responder.value_keys()) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        agent.stop(signal.SIGTERM)
    assert "redelivery_skipped" not in "".join(agent.lines)
    assert len(responder.value_keys()) == 10
