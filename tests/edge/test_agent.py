"""The agent runner end to end: MQTT in, platform acks out, metrics, hot reload, signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from edge_agent.agent import Agent
from edge_agent.errors import ConfigError
from tests.edge.conftest import SITE_YAML, AckResponder, on_broker
from tests.mqtt_peer import MqttPeer


def _site_for(prefix: str, host: str, port: int) -> str:
    return on_broker(SITE_YAML.replace("topic: p/", f"topic: {prefix}/p/"), f"mqtt://{host}:{port}", prefix)


async def _get(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data.decode()


@pytest.mark.mosquitto
@pytest.mark.slow
def test_mqtt_to_platform_end_to_end(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    host, port = mqtt_broker
    site = tmp_path / "site.yaml"
    site.write_text(_site_for(topic_prefix, host, port))

    async def main() -> None:
        agent = Agent(
            site_file=site,
            gateway_id=topic_prefix,
            broker_url=f"mqtt://{host}:{port}",
            data_dir=tmp_path / "data",
            metrics_port=0,
        )
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        await asyncio.sleep(1.0)  # the connector subscribes
        pub = MqttPeer(host, port)
        for i in range(20):
            payload = {
                "ts": time.time(),
                "temp": 100.0 + i,
                "p": 1.5,
                "hz": 10,
                "c": 1,
                "r": True,
                "m": "auto",
            }
            pub.publish(f"{topic_prefix}/p/1", json.dumps(payload))
            await asyncio.sleep(0.15)
        pub.publish(f"{topic_prefix}/p/1", b"{broken")
        pub.close()
        loop = asyncio.get_running_loop()
        end = loop.time() + 15
        while len(responder.value_keys()) < 120 and loop.time() < end:  # noqa: ASYNC110 - another thread
            await asyncio.sleep(0.1)
        assert len(responder.value_keys()) == 120  # 20 messages × 6 signals, each once
        assert any(k[0] == "f" for k in responder.keys)  # frames too
        assert agent.metrics_port is not None
        text = await _get(agent.metrics_port)
        assert "ft_agent_outbox_depth" in text
        assert 'ft_agent_rejected_total{reason="malformed_json"' in text.replace('source="plc",', "")
        agent.stop()
        await asyncio.wait_for(task, 15)

    asyncio.run(main())
    dead = (tmp_path / "data" / "deadletter.jsonl").read_text()
    assert "malformed_json" in dead


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _no_connectors(site: object, settings: object) -> list[object]:
    return []


def test_reload_validates_then_swaps(tmp_path: Path, site_file: Path) -> None:
    async def main() -> None:
        agent = Agent(
            site_file=site_file,
            data_dir=tmp_path / "d",
            metrics_port=0,
            watch_interval_s=0.1,
            connectors=_no_connectors,
        )
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        assert agent.pipeline is not None
        old = agent.pipeline.stage
        _write(site_file, "site: {id: t}\nnodes: [oops")  # broken YAML
        assert agent.reload() is False
        assert agent.pipeline.stage is old
        assert agent.reload_errors == 1
        _write(site_file, SITE_YAML.replace("unit: °F", "unit: bar"))  # valid YAML, impossible unit
        assert agent.reload() is False
        assert agent.pipeline.stage is old
        _write(site_file, SITE_YAML.replace("temp: {unit: °C}", "temp: {unit: K}"))
        os.utime(site_file, (time.time() + 5, time.time() + 5))
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while agent.reloads == 0 and loop.time() < end:  # noqa: ASYNC110 - the file watcher picks it up
            await asyncio.sleep(0.05)
        assert agent.reloads == 1
        assert agent.pipeline.stage is not old
        sig = agent.pipeline.stage.normaliser.signals[("pump-1", "temp")]
        assert sig.a * 32 + sig.b == pytest.approx(273.15)
        agent.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_a_reload_keeps_settings_that_need_a_restart_and_says_so(tmp_path: Path, site_file: Path) -> None:
    # The platform link (cascade client, model sync) is built at start: a new key must not look applied.
    config = tmp_path / "agent.yaml"
    _write(config, f"site_file: {site_file}\nplatform_key: ft_old\ndiagnose: false\n")

    async def main() -> None:
        agent = Agent(config_file=config, data_dir=tmp_path / "d", metrics_port=-1, connectors=_no_connectors)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        _write(config, f"site_file: {site_file}\nplatform_key: ft_new\ndiagnose: false\n")
        with structlog.testing.capture_logs() as logs:
            assert agent.reload() is True
        assert agent.settings.platform_key == "ft_old"
        assert any(e["event"] == "reload_needs_restart" and "platform_key" in e["settings"] for e in logs)
        agent.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_bad_start_config_is_a_clear_error(tmp_path: Path, site_file: Path) -> None:
    with pytest.raises(ConfigError, match="no site file"):
        Agent(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="placeholder"):
        Agent(site_file=site_file, broker_url="mqtt://u:changeme@h:1883")
    with pytest.raises(ConfigError, match="uplink_batch_size"):
        Agent(site_file=site_file, uplink_batch_size=0)


@pytest.mark.slow
def test_cli_reloads_on_sighup_and_stops_on_sigterm(tmp_path: Path, site_file: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"site_file: {site_file}\ndata_dir: {tmp_path / 'd'}\nmetrics_port: 0\nlog_json: true\n")
    env = {**os.environ, "EDGE_CONFIG": str(cfg)}
    env.pop("EDGE_BROKER_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "factory_twin", "agent", "run"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while not any("agent_starting" in x for x in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        site_file.write_text("not: [valid")
        proc.send_signal(signal.SIGHUP)
        while not any("reload_rejected" in x for x in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait()
            print("".join(lines), proc.stderr.read())
            raise
        rest = proc.stderr.read()
        assert "agent_stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
