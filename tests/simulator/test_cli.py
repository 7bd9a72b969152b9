"""`factory-twin simulate`: a real run in a subprocess, Ctrl-C, and options refused with one clear line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory_twin.cli.simulate import simulate


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "factory_twin", "simulate", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.mosquitto
@pytest.mark.slow
def test_runs_the_whole_plant_for_n_seconds(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    host, port = mqtt_broker
    args = _cli(
        "--for", "1", "--speed", "3", "--json", "--log-level", "warning",
        "--mqtt-url", f"mqtt://{host}:{port}", "--topic-prefix", topic_prefix,
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{_free_port()}/factory-twin/",
    )  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["ticks"] == 3
    assert stats["rows"] == 9  # three machines
    assert stats["opcua_values"] == 3 * 25
    assert stats["mqtt_messages"] == stats["mqtt_acked"] == 6


@pytest.mark.mosquitto
@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_summary(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    host, port = mqtt_broker
    args = _cli("--machine", "mill-1", "--mqtt-url", f"mqtt://{host}:{port}", "--topic-prefix", topic_prefix)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if "simulator_started" in line or time.monotonic() > deadline:
                break
        time.sleep(1.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "MQTT messages sent" in out
    assert "simulator_summary" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "bogus"], "fault 'bogus': expected NODE.PROP:KIND[@SECONDS]"),
        (["--fault", "engine-1.t50:high"], "a high fault needs a range"),
        (["--clock-skew", "plant-mqtt=soon"], "'soon' is not a number of seconds"),
        (["--clock-skew", "=5"], "expected [SOURCE=]SECONDS"),
        (["--bad-clock", "no-such-source", "--for", "1"], "names source 'no-such-source'"),
        (["--machine", "mill-9"], "no bound machine(s) mill-9"),
        (["--speed", "0"], "0.0 is not in the range x>0"),
    ],
)
def test_bad_options_are_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code != 0
    assert message in result.output


def test_invalid_site_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "plant.yaml"
    bad.write_text("site: {id: x}\nnodes:\n  - {id: a, kind: galaxy}\n")
    result = CliRunner().invoke(simulate, ["--site", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3" in result.output
