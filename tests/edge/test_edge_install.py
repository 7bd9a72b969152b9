"""The edge agent on an edge-only install: no scikit-learn, SciPy, pandas, matplotlib, FastAPI, SQLAlchemy, nor the
platform's code, at import or at run time (``edge_install.py`` makes importing them fail and reports each try).

``benchmarks/edge_footprint.py`` builds the real edge-only virtualenv and measures its size and the agent's memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from plant.wire import decode_batch, uplink_topic
from tests.edge.edge_install import BLOCKED, NOT_ON_THE_EDGE, ROOT
from tests.mqtt_peer import MqttPeer

RUNNER = Path(__file__).with_name("edge_install.py")


def _edge_only(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)  # fmt: skip
    assert BLOCKED not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_the_blocker_blocks() -> None:
    done = subprocess.run([sys.executable, str(RUNNER), "-c", "import sklearn"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode != 0
    assert f"{BLOCKED} sklearn" in done.stderr


def test_the_base_install_brings_none_of_the_extras_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(spec).name.lower() for spec in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert extras["edge"] == []
    assert {"scikit-learn", "pandas", "matplotlib", "fastapi", "sqlalchemy", "onnx", "scipy"}.isdisjoint(base)
    assert {"paho-mqtt", "asyncua", "onnxruntime", "numpy"} <= base
    assert extras["all"] == ["factory-twin[platform,train]"]
    assert "factory-twin[all]" in extras["dev"]  # pip install -e '.[dev]' (scripts/test, .ci/run) has everything


EDGE_COMMANDS = [["--help"], ["--version"], ["agent", "--help"], ["agent", "run", "--help"],
                 ["agent", "browse", "--help"], ["simulate", "--help"], ["models", "list", "--help"]]  # fmt: skip


@pytest.fixture(scope="module")
def edge_command_outputs() -> dict[str, dict[str, object]]:
    """Each of ``EDGE_COMMANDS`` run by ``factory-twin``'s entry point in one edge-only process (one interpreter
    start instead of seven): its exit code and output, by its arguments joined with spaces."""
    code = f"""
import contextlib, io, json
from factory_twin.cli import cli
outputs = {{}}
for args in {EDGE_COMMANDS!r}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(args, prog_name="factory-twin", standalone_mode=False)
    outputs[" ".join(args)] = {{"code": code or 0, "stdout": out.getvalue()}}
print(json.dumps(outputs))
"""
    return json.loads(_edge_only("-c", code).stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("args", EDGE_COMMANDS, ids=" ".join)
def test_the_edge_commands_start(args: list[str], edge_command_outputs: dict[str, dict[str, object]]) -> None:
    done = edge_command_outputs[" ".join(args)]
    assert done["code"] == 0
    assert "Usage" in str(done["stdout"]) or args == ["--version"]


def test_every_edge_module_imports() -> None:
    code = """
import importlib, pkgutil
import edge_agent, plant, factory_twin.simulator
names = ["models.runtime", "factory_twin.cli.agent", "factory_twin.cli.simulate", "factory_twin.logs"]
for package in (edge_agent, plant, factory_twin.simulator):
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
skip = {"factory_twin.simulator.rogue"}  # the hostile-gateway tool of the platform's tests and benchmarks
for name in sorted(set(names) - skip):
    importlib.import_module(name)
print(len(names))
"""
    assert int(_edge_only("-c", code).stdout) > 40


def test_the_committed_models_diagnose_each_machine() -> None:
    code = """
import tempfile
from pathlib import Path
from tests.edge.test_diagnose import test_each_machine_is_diagnosed_by_its_types_models as check
with tempfile.TemporaryDirectory() as tmp:
    check(Path(tmp))
"""
    _edge_only("-c", code)


@pytest.mark.mosquitto
@pytest.mark.slow
def test_agent_and_simulator_run_and_diagnose(mqtt_broker: tuple[str, int], topic_prefix: str,
                                              tmp_path: Path) -> None:
    """``factory-twin simulate`` and ``agent run`` as edge-only processes: the uplink carries the committed
    models' diagnoses (each model of the example plant on frames: test_the_committed_models_diagnose_each_machine)."""
    from tests.production.helpers import Proc, example_plant

    host, port = mqtt_broker
    site = example_plant(tmp_path, topic_prefix)
    gateway = f"gw-{uuid.uuid4().hex[:8]}"
    tasks: set[str] = set()
    sub = MqttPeer(host, port, [uplink_topic(gateway)], client_id=f"{topic_prefix}-uplink",
                   on_message=lambda m: tasks.update(d.task for d in decode_batch(m.payload).diagnoses))
    broker = f"mqtt://{host}:{port}"
    edge = [sys.executable, str(RUNNER)]
    sim = Proc(["simulate", "--site", str(site), "--mqtt-url", broker, "--topic-prefix", topic_prefix,
                "--for", "90"], {}, tmp_path / "sim.log", edge)  # fmt: skip
    agent = Proc(["agent", "run", "--site", str(site), "--gateway", gateway, "--data-dir", str(tmp_path / "agent"),
                  "--metrics-port", "-1", "--for", "90"], {"EDGE_BROKER_URL": broker, "EDGE_MQTT_URL": broker},
                 tmp_path / "agent.log", edge)  # fmt: skip
    try:
        deadline = time.monotonic() + 75  # RUL's first window: 15 engine cycles, after both processes start
        while not tasks and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        agent.stop()
        sim.stop()
        sub.close()
    output = sim.output() + agent.output()
    assert BLOCKED not in output, output[-3000:]
    assert tasks, f"no diagnosis in the uplink:\n{output[-3000:]}"


def test_the_blocked_names_are_what_the_extras_bring() -> None:
    """Every package the platform and train extras name is blocked (by its import name)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    import_name = {"scikit-learn": "sklearn"}
    for extra in ("platform", "train"):
        for spec in project["optional-dependencies"][extra]:
            name = Requirement(spec).name.lower()
            assert import_name.get(name, name.replace("-", "_")) in NOT_ON_THE_EDGE, name
