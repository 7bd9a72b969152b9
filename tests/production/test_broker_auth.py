"""compose's broker set-up, for real: `factory-twin gateways files` as a process writes the files,
deploy/mosquitto.conf runs them on a Mosquitto of this test's own, with the TLS certificate made by the commands
docs/ingest.md gives; a gateway logs in over TLS and writes its own uplink, not another's."""

from __future__ import annotations

import os
import queue
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# paho on purpose: a foreign client's view of the broker's refusals (CONNACK, SUBACK, dropped publishes)
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plant.wire import ack_topic, decode_ack, uplink_topic
from tests.twin.store_helpers import NOW, batch, value

from .helpers import ROOT, Proc, free_port, prepare

pytestmark = pytest.mark.slow
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _factory_twin(args: list[str], env: dict[str, str]) -> str:
    exe = shutil.which("factory-twin") or str(Path(sys.executable).parent / "factory-twin")
    proc = subprocess.run([exe, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _make_certs(directory: Path) -> None:
    """The docs' make-certs commands, for the name ``localhost``."""
    text = (ROOT / "docs" / "ingest.md").read_text()
    block = re.search(r"```sh\n# make-certs[^\n]*\n(.*?)```", text, re.DOTALL)
    assert block, "docs/ingest.md has no make-certs block"
    script = block.group(1).replace("BROKER_HOST=twin.example.com", "BROKER_HOST=localhost")
    directory.mkdir()
    subprocess.run(["sh", "-e", "-c", script], cwd=directory, check=True, capture_output=True, timeout=120)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[int, int, Path, str]]:
    """Mosquitto with compose's config and the generated files: (plain port, TLS port, CA file, credential)."""
    if not Path(MOSQUITTO).exists() or not shutil.which("openssl"):
        pytest.skip("mosquitto or openssl is not installed")
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    env = {"MQTT_PLATFORM_PASSWORD": "platform-pw-for-test", "AGENT_PW": "agent-pw-for-the-test"}
    _factory_twin(["db", "upgrade", "--url", url], env)
    credential = _factory_twin(["gateways", "add", "line-1", "--database-url", url], env).strip()
    _factory_twin(["gateways", "files", "--out", str(tmp_path / "auth"), "--database-url", url,
                   "--ensure", "gateway-1=AGENT_PW"], env)
    _make_certs(tmp_path / "certs")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("passwd", "acl"):  # as compose's mosquitto entrypoint does
        shutil.copy(tmp_path / "auth" / name, data / name)
    plain, tls = free_port(), free_port()
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {plain} 127.0.0.1").replace("listener 8883", f"listener {tls}")
    conf = conf.replace("/mosquitto/certs/", f"{tmp_path / 'certs'}/").replace("/mosquitto/data/", f"{data}/")
    conf = conf.replace("persistence true", "persistence false")
    if os.geteuid() == 0:
        conf += "\nuser root\n"  # else it drops to a user that cannot read tmp_path
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=log)
    try:
        time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        yield plain, tls, tmp_path / "certs" / "ca.crt", credential
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _client(port: int, user: str | None, password: str | None, ca: Path | None = None) -> tuple[mqtt.Client, bool]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{os.urandom(3).hex()}")
    if user is not None:
        c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    result: queue.Queue[bool] = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p: result.put(not rc.is_failure)
    c.connect("localhost", port)
    c.loop_start()
    return c, result.get(timeout=10)


def test_a_gateway_writes_its_own_uplink_over_tls_and_nothing_else(broker: tuple[int, int, Path, str]) -> None:
    plain, tls, ca, credential = broker
    platform, ok = _client(plain, "platform", "platform-pw-for-test")
    assert ok
    seen: queue.Queue[str] = queue.Queue()
    platform.on_message = lambda _c, _u, m: seen.put(m.topic)
    subscribed: queue.Queue[int] = queue.Queue()
    platform.on_subscribe = lambda *_a: subscribed.put(1)
    platform.subscribe("$share/ingest/factory-twin/v1/+/uplink", qos=1)
    subscribed.get(timeout=5)
    gateway, ok = _client(tls, "line-1", credential, ca)
    assert ok
    _, ok = _client(tls, "line-1", "not-the-credential", ca)
    assert not ok
    gateway.publish(uplink_topic("gateway-1"), b"forged", qos=1).wait_for_publish(5)
    gateway.publish(uplink_topic("line-1"), b"own", qos=1).wait_for_publish(5)
    assert seen.get(timeout=5) == uplink_topic("line-1")
    time.sleep(0.3)
    assert seen.empty()  # the forged one reached no one
    provisioned, ok = _client(plain, "gateway-1", "agent-pw-for-the-test")
    assert ok
    for c in (platform, gateway, provisioned):
        c.disconnect()
        c.loop_stop()


def test_serve_on_the_embedded_broker_enforces_logins_once_a_gateway_is_registered(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    prepare(url)
    credential = _factory_twin(["gateways", "add", "gw1", "--database-url", url], {}).strip()
    port = free_port()
    serve = Proc(["serve", "--role", "ingest"],
                 {"TWIN_DATABASE_URL": url, "TWIN_EMBEDDED_MQTT_PORT": str(port)}, tmp_path / "serve.log")
    clients: list[mqtt.Client] = []
    try:
        serve.wait_for("ingest_started")
        gateway, ok = _client(port, "gw1", credential)
        clients.append(gateway)
        assert ok
        acks: queue.Queue[bytes] = queue.Queue()
        gateway.on_message = lambda _c, _u, m: acks.put(m.payload)
        subscribed: queue.Queue[list[int]] = queue.Queue()
        gateway.on_subscribe = lambda _c, _u, _m, codes, _p: subscribed.put([c.value for c in codes])
        gateway.subscribe(ack_topic("gw1"), qos=1)
        assert subscribed.get(timeout=5) == [1]
        rogue, ok = _client(port, None, None)  # anonymous: admitted, to the plant's topics only
        clients.append(rogue)
        assert ok
        rogue.publish(uplink_topic("gw1"), batch(value(v=99.0, ts=NOW), name="forged", gateway="gw1")
                      .model_dump_json(), qos=1)
        gateway.publish(uplink_topic("gw1"), batch(value(v=20.0, ts=NOW + 1), name="real", gateway="gw1")
                        .model_dump_json(), qos=1)
        ack = decode_ack(acks.get(timeout=10))
        assert (ack.batch, ack.stored, ack.accepted) == ("real", True, 1)
        time.sleep(0.5)
        assert acks.empty()  # nothing of the forged batch reached the platform
        _, ok = _client(port, "gw1", "not-the-credential")
        assert not ok
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        serve.stop()
