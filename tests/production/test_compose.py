"""compose.yaml, the Dockerfile and deploy/: what can be checked without a Docker engine.

The file parses, names every service docs/production.md describes, has health checks, named volumes and no
secrets; each platform service runs a ``factory-twin`` subcommand whose options the CLI accepts, and which
these tests also start as a real process (test_processes.py: db upgrade, serve --role ingest / api; here:
agent run and simulate against the machine's Mosquitto).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from factory_twin.cli import cli
from plant.wire import decode_batch, uplink_topic
from tests.mqtt_peer import MqttPeer

from .helpers import ROOT, Proc, example_plant, free_port

COMPOSE = ROOT / "compose.yaml"
SERVICES = {"mosquitto", "mqtt-auth", "postgres", "migrate", "api", "ingest-1", "ingest-2", "agent", "simulator",
            "prometheus"}
ONE_SHOT = {"migrate", "mqtt-auth"}
# the subcommands the services run, each started as a process by a test of this folder
# (test_broker_auth.py: gateways files)
STARTED_AS_PROCESS = {("db", "upgrade"), ("serve",), ("agent", "run"), ("simulate",), ("gateways", "files")}
SECRET_KEYS = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_names_every_service_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    docs = (ROOT / "docs" / "production.md").read_text()
    for name in SERVICES:
        assert f"`{name}`" in docs, f"docs/production.md does not describe the service {name}"
        if name not in ONE_SHOT:
            assert "test" in services[name]["healthcheck"], name
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["simulator"]["network_mode"] == "service:agent"


def test_compose_uses_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    assert {"mosquitto-data", "mqtt-auth", "postgres-data", "agent-data", "prometheus-data"} <= named
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            assert source in named or source.startswith("./deploy/"), f"{name}: {vol}"


def _environment_values(compose: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for svc in compose["services"].values():
        env = svc.get("environment", {})
        out += [(k, str(v)) for k, v in env.items()]
    return out


def test_compose_holds_no_secrets(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for key, value in _environment_values(compose):
        if SECRET_KEYS.search(key):
            assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", value), f"{key} is set inline"
    for url in re.findall(r"(?:mqtt|postgresql\+psycopg)://[^\s\"']+", text):
        password = url.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
        assert password.startswith("${"), f"inline password in {url}"
    # every variable compose needs is in the documented env file
    needed = set(re.findall(r"\$\{([A-Z_]+)[:?}]", text))
    example = (ROOT / "deploy" / "env.example").read_text()
    for var in needed:
        assert re.search(rf"^#?\s*{var}=", example, re.MULTILINE), f"{var} missing from deploy/env.example"


def _resolve(argv: list[str]) -> tuple[str, ...]:
    """Parse argv with the real CLI (unknown options and bad values raise); returns the subcommand path."""
    ctx = cli.make_context("factory-twin", list(argv), resilient_parsing=False)
    path: list[str] = []
    cmd: click.Command = cli
    args = _rest(ctx)
    while isinstance(cmd, click.Group):
        name, *rest = args
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"no subcommand {name!r} in {argv}"
        path.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd, args = sub, _rest(ctx) if isinstance(sub, click.Group) else []
    return tuple(path)


def _rest(ctx: click.Context) -> list[str]:
    # click 8.2 keeps a group's subcommand name apart from the rest (protected_args, deprecated for 9.0)
    return [*getattr(ctx, "_protected_args", []), *ctx.args]


def test_platform_services_run_factory_twin_subcommands(compose: dict[str, Any]) -> None:
    seen = set()
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue
        command = svc["command"]
        assert command[0] == "factory-twin", name
        argv = [re.sub(r"\$\{[^}]+\}", "x", a) for a in command[1:]]
        seen.add(_resolve(argv))
    assert seen == {("db", "upgrade"), ("serve",), ("agent", "run"), ("simulate",), ("gateways", "files")}
    assert seen <= STARTED_AS_PROCESS


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert re.search(r"^COPY --from=\S*build /opt/venv", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user
    assert not user[-1].startswith(("root", "0"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests/"} <= set(ignored)


def test_mosquitto_conf_persists_authenticates_and_queues_enough() -> None:
    conf = dict(
        line.split(None, 1) for line in (ROOT / "deploy" / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert conf["persistence"] == "true"
    assert conf["allow_anonymous"] == "false"
    assert "password_file" in conf
    # stock: 1,000 queued per client, then QoS 1 dropped to a slow consumer
    assert int(conf["max_queued_messages"]) >= 100_000
    assert int(conf["max_inflight_messages"]) >= 100


def test_broker_files_come_from_the_gateways_command_before_the_broker_starts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    auth = services["mqtt-auth"]
    assert auth["command"][:3] == ["factory-twin", "gateways", "files"]
    out = auth["command"][auth["command"].index("--out") + 1]
    assert f"mqtt-auth:{out}" in auth["volumes"]
    assert auth["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert auth["restart"] == "no"
    # the bundled agent's login is the one mqtt-auth registers
    ensure = auth["command"][auth["command"].index("--ensure") + 1]
    gateway, var = ensure.split("=")
    agent = services["agent"]
    assert agent["command"][agent["command"].index("--gateway") + 1] == gateway
    assert f"//{gateway}:${{{var}" in agent["environment"]["EDGE_BROKER_URL"]
    for needed in ("MQTT_PLATFORM_PASSWORD", "MQTT_PLANT_PASSWORD", var):
        assert needed in auth["environment"], needed
    broker = services["mosquitto"]
    assert broker["depends_on"]["mqtt-auth"]["condition"] == "service_completed_successfully"
    assert "mqtt-auth:/mosquitto/auth:ro" in broker["volumes"]
    assert "./deploy/certs:/mosquitto/certs:ro" in broker["volumes"]
    assert "${MQTT_TLS_PORT:-8883}:8883" in broker["ports"]
    entry = broker["command"][0]
    assert "cp /mosquitto/auth/passwd /mosquitto/auth/acl /mosquitto/data/" in entry
    assert "mosquitto_passwd" not in entry  # no password is written from the environment any more


def test_mosquitto_conf_has_a_tls_listener_and_the_generated_files() -> None:
    lines = [line.split(None, 1) for line in (ROOT / "deploy" / "mosquitto.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    conf: dict[str, list[str]] = {}
    for key, value in lines:
        conf.setdefault(key, []).append(value)
    assert conf["listener"] == ["1883", "8883"]
    assert conf["certfile"] == ["/mosquitto/certs/server.crt"]
    assert conf["keyfile"] == ["/mosquitto/certs/server.key"]
    assert conf["password_file"] == ["/mosquitto/data/passwd"]
    assert conf["acl_file"] == ["/mosquitto/data/acl"]
    assert "per_listener_settings" not in conf  # one set of logins and ACL for both listeners
    assert (ROOT / "deploy" / "certs" / ".gitignore").read_text().split()[0] == "*"  # no key is committed


def test_prometheus_scrapes_the_platform_and_the_agent(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {"ingest-1:9465", "ingest-2:9465", "agent:9464", "api:8000"} <= targets
    for svc in ("ingest-1", "ingest-2"):
        assert compose["services"][svc]["environment"]["TWIN_METRICS_PORT"] == "9465"


def test_prometheus_scrapes_the_api_with_a_key_from_a_mounted_secret(compose: dict[str, Any]) -> None:
    """GET /metrics of the API needs a viewer key by default (TWIN_METRICS_ACCESS=key)."""
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (api,) = [job for job in prom["scrape_configs"] if any("api:8000" in c["targets"] for c in job["static_configs"])]
    key_file = Path(api["authorization"]["credentials_file"])
    assert api["authorization"].get("type", "Bearer") == "Bearer"
    mounts = [v.split(":") for v in compose["services"]["prometheus"]["volumes"]]
    (source,) = [src for src, target, *_ in mounts if key_file.is_relative_to(target)]
    assert (ROOT / source).is_dir()  # a directory that exists: docker would make a missing file a directory
    ignored = (ROOT / source / ".gitignore").read_text().split()
    assert "*" in ignored  # the key itself is never committed
    assert any(line.rstrip("/").endswith(source.removeprefix("./")) for line in
               (ROOT / ".dockerignore").read_text().split())


def test_the_images_install_exactly_the_locked_files() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md requirements-edge.lock" in text
    assert "pip install --require-hashes --no-deps -r requirements-edge.lock" in text
    assert "pip install --require-hashes --no-deps -r requirements.lock" in text
    assert "pip install --no-deps --no-build-isolation ." in text
    installs = re.findall(r"pip\"?,? \"?install[^\n]*", text)
    assert installs
    assert all("--no-deps" in line for line in installs)  # nothing resolved at build time


def _stages(text: str) -> dict[str, tuple[str, str]]:
    """Each stage of the Dockerfile: name → (the image or stage it starts from, its instructions)."""
    parts = re.split(r"^FROM (\S+) AS (\S+)\n", text, flags=re.MULTILINE)
    return {name: (base, body) for base, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True)}


def _chain(stages: dict[str, tuple[str, str]], name: str) -> str:
    """A stage's instructions with those of the stages it starts from, first to last."""
    base, body = stages[name]
    return (_chain(stages, base) if base in stages else "") + body


def test_dockerfile_builds_a_slim_edge_image_and_a_platform_image(compose: dict[str, Any]) -> None:
    """``--target edge``: the base install only (requirements-edge.lock); ``--target platform`` (the last stage,
    so the default) adds the platform's lock; compose runs the agent and the simulator on the edge image."""
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert {"edge", "platform"} <= set(stages)
    assert list(stages)[-1] == "platform"
    for target, lock, other in (("edge", "requirements-edge.lock", "requirements.lock"),
                                ("platform", "requirements.lock", None)):
        copied = re.findall(r"^COPY --from=(\S+) /opt/venv /opt/venv$", stages[target][1], re.MULTILINE)
        assert len(copied) == 1, target
        build = _chain(stages, copied[0])
        assert f"-r {lock}" in build, target
        if other:
            assert f"-r {other}\n" not in build, f"the {target} image installs {other}"
        assert "USER factory-twin" in stages[target][1]
        assert "HEALTHCHECK" in stages[target][1]
    targets = {name: svc["build"]["target"] for name, svc in compose["services"].items() if "build" in svc}
    assert {name for name, t in targets.items() if t == "edge"} == {"agent", "simulator"}
    assert set(targets.values()) == {"edge", "platform"}
    images = {svc["image"].split(":")[0] for svc in compose["services"].values() if "build" in svc}
    assert len(images) == 2  # one name per image: the edge build does not overwrite the platform's


def test_every_ingest_service_stands_for_alert_evaluation(compose: dict[str, Any]) -> None:
    """One leads, the other takes over: both need the site's alert rules."""
    sites = {compose["services"][svc]["environment"].get("TWIN_SITE_FILE") for svc in ("ingest-1", "ingest-2")}
    assert None not in sites
    assert len(sites) == 1


@pytest.mark.mosquitto
@pytest.mark.slow
def test_agent_and_simulator_commands_as_processes(mqtt_broker: tuple[str, int], topic_prefix: str,
                                                  tmp_path: Path) -> None:
    """compose's agent and simulator commands, on the machine's Mosquitto: batches reach the uplink."""
    host, port = mqtt_broker
    site = example_plant(tmp_path, topic_prefix)
    gateway = f"gw-{uuid.uuid4().hex[:8]}"
    got: list[int] = []
    sub = MqttPeer(host, port, [uplink_topic(gateway)], client_id=f"{topic_prefix}-uplink",
                   on_message=lambda m: got.append(len(decode_batch(m.payload).values)))
    broker = f"mqtt://{host}:{port}"
    sim = Proc(["simulate", "--site", str(site), "--mqtt-url", broker, "--topic-prefix", topic_prefix,
                "--for", "40"], {}, tmp_path / "sim.log")
    agent = Proc(["agent", "run", "--site", str(site), "--gateway", gateway, "--data-dir",
                  str(tmp_path / "agent"), "--metrics-port", str(free_port()), "--for", "40"],
                 {"EDGE_BROKER_URL": broker, "EDGE_MQTT_URL": broker}, tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 30
        while sum(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(got) >= 20, f"no uplink from the agent:\n{agent.output()[-2000:]}\n{sim.output()[-1000:]}"
    finally:
        agent.stop()
        sim.stop()
        sub.close()
