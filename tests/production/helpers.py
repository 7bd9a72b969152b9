"""Shared pieces of the production tests: a sender that behaves like an agent's uplink, platform processes,
a private Mosquitto with persistence, and database checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import text

from migrations import run
from plant.errors import MqttError
from plant.mqtt import Backoff, MqttOptions, ThreadedClient
from plant.site import Site
from plant.wire import UplinkBatch, Value, ack_topic, decode_ack, uplink_topic
from tests.twin.store_helpers import SITE_YAML, site
from twin.config import TwinSettings
from twin.db import make_engine
from twin.store import TwinStore

ROOT = Path(__file__).resolve().parents[2]
SEC = 1_000_000


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(url: str) -> None:
    """Migrate ``url`` to head and load the test plant (pumps p1, p2) into the twin."""
    run.upgrade(url)
    engine = make_engine(url)
    try:
        TwinStore(engine).sync_site(site())
    finally:
        engine.dispose()


@contextlib.contextmanager
def prepared_store(url: str, settings: TwinSettings) -> Iterator[TwinStore]:
    """A store on ``url``, ``prepare``d, with ``settings``; its engine disposed when the block ends."""
    prepare(url)
    engine = make_engine(url)
    try:
        yield TwinStore(engine, settings)
    finally:
        engine.dispose()


def example_plant(tmp: Path, topic_prefix: str) -> Path:
    """The example plant as a site file under ``tmp``: its OPC-UA server on a free port, its MQTT topics under
    ``topic_prefix`` (a run of its own on a shared broker)."""
    plant = (ROOT / "examples" / "plant.yaml").read_text()
    plant = plant.replace("opc.tcp://127.0.0.1:4841/", f"opc.tcp://127.0.0.1:{free_port()}/")
    plant = plant.replace("topic: plant/", f"topic: {topic_prefix}/plant/")
    site = tmp / "plant.yaml"
    site.write_text(plant)
    return site


def site_file(tmp: Path) -> Path:
    """The test plant as a site file."""
    path = tmp / "site.yaml"
    path.write_text(SITE_YAML)
    return path


ALERT_SITE_YAML = SITE_YAML.replace(
    "      mode: {dtype: string}\n",
    "      mode: {dtype: string}\n"
    "    alerts:\n"
    "      - {id: temp-high, kind: limit, property: temp, hi: 100, severity: high}\n"
    "      - {id: count-high, kind: limit, property: count, hi: 5, severity: medium}\n"
    "      - {id: pump-fault, kind: fault, mode: '*', probability: 0.5, severity: high}\n",
)


def alert_site() -> Site:
    """The test plant with alert rules: temp above 100, count above 5 and any fault diagnosis, on each pump."""
    return site(ALERT_SITE_YAML)


def alert_counts(url: str) -> dict[str, tuple[int, int]]:
    """Per alert key: alerts stored, and their activations (raise and reactivate transitions)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT a.key, count(DISTINCT a.id), count(t.id) FROM alerts a LEFT JOIN alert_transitions t "
                "ON t.alert_id = a.id AND t.action IN ('raise', 'reactivate') GROUP BY a.key")).all()
            return {r[0]: (int(r[1]), int(r[2])) for r in rows}
    finally:
        engine.dispose()


def alert_active(url: str) -> dict[str, bool]:
    """Per alert key: whether its alert is active now."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0]: bool(r[1]) for r in conn.execute(text("SELECT key, active FROM alerts")).all()}
    finally:
        engine.dispose()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; AssertionError naming ``what`` if it does not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def make_batches(gateway: str, n: int, per: int, start: int, tag: str = "b") -> list[UplinkBatch]:
    """``n`` batches of ``per`` values each, p1.temp and p2.temp at distinct timestamps, 1 s apart."""
    out = []
    k = 0
    for b in range(n):
        values = []
        for _ in range(per):
            node = "p1" if k % 2 == 0 else "p2"
            values.append(Value(node=node, prop="temp", value=float(k % 100), ts=start + (k // 2) * SEC))
            k += 1
        out.append(UplinkBatch(gateway=gateway, batch=f"{tag}{b}", sent=start, values=values))
    return out


class Sender:
    """Publishes batches QoS 1 like an agent's uplink and resends any not acknowledged ``stored=True``.

    Args:
        host: broker host.
        port: broker port.
        root: topic root.
        gateway: gateway id.
    """

    def __init__(self, host: str, port: int, root: str, gateway: str) -> None:
        self.root, self.gateway = root, gateway
        self.stored: set[str] = set()
        self.failed_acks = 0
        self.acks = 0
        self._lock = threading.Lock()
        options = MqttOptions(host, port, f"sender-{uuid.uuid4().hex[:10]}", protocol="3.1.1", persistent=False,
                              max_inflight=100)
        self.client = ThreadedClient(options, [ack_topic(gateway, root)], self._on_ack, Backoff(0.2, 2.0), "sender")
        assert self.client.start().wait_connected(10), "sender could not subscribe to its ack topic"

    def _on_ack(self, _topic: str, payload: bytes, _qos: int) -> None:
        ack = decode_ack(payload)
        with self._lock:
            self.acks += 1
            if ack.stored:
                self.stored.add(ack.batch)
            else:
                self.failed_acks += 1

    def publish(self, batch: UplinkBatch) -> None:
        """Publish one batch (QoS 1); while the broker is away it is not sent: ``deliver`` sends it again."""
        with contextlib.suppress(MqttError):
            self.client.publish(uplink_topic(self.gateway, self.root), batch.model_dump_json().encode(), qos=1)

    def deliver(self, batches: list[UplinkBatch], timeout: float = 60.0, resend_after: float = 4.0,
                pace: float = 0.0) -> None:
        """Publish all, then resend the unstored every ``resend_after`` s until each is acked stored."""
        for b in batches:
            self.publish(b)
            if pace:
                time.sleep(pace)
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                missing = [b for b in batches if b.batch not in self.stored]
            if not missing:
                return
            if time.monotonic() - last > resend_after:
                for b in missing:
                    self.publish(b)
                last = time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"{len(missing)} of {len(batches)} batches never acknowledged stored")

    def close(self) -> None:
        """Disconnect."""
        self.client.stop()


def history_rows(url: str) -> tuple[int, int]:
    """Rows in twin_history, and distinct (property, ts) keys among them."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM twin_history")).scalar_one()
            keys = "SELECT count(*) FROM (SELECT DISTINCT property_id, ts FROM twin_history) k"
            return int(n), int(conn.execute(text(keys)).scalar_one())
    finally:
        engine.dispose()


def latest_ts(url: str) -> dict[str, int]:
    """Latest source timestamp of p1.temp and p2.temp."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT node_id, ts FROM twin_properties WHERE name = 'temp'")).all()
            return {r[0]: int(r[1]) for r in rows if r[1] is not None}
    finally:
        engine.dispose()


def serve_env(pg_url: str, host: str, port: int, root: str, client_id: str, **extra: str) -> dict[str, str]:
    """The environment of a ``factory-twin serve`` process of a test: its database, broker, topics and group."""
    return {
        "TWIN_DATABASE_URL": pg_url,
        "TWIN_MQTT_URL": f"mqtt://{host}:{port}",
        "TWIN_MQTT_TOPIC_ROOT": root,
        "TWIN_MQTT_CLIENT_ID": client_id,
        "TWIN_INGEST_SHARE_GROUP": f"g-{root}",
        **extra,
    }


def scrape(port: int) -> dict[str, float]:
    """A process's Prometheus metrics on ``port`` as {name with labels: value}; empty if it does not answer."""
    import httpx

    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
    except httpx.HTTPError:
        return {}
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            out[name] = float(number)
    return out


class Proc:
    """A ``factory-twin`` process with its output in a file.

    Args:
        args: arguments after ``factory-twin``.
        env: extra environment.
        log: where stdout and stderr go.
        command: what stands for ``factory-twin`` (the installed console script by default).
    """

    def __init__(self, args: list[str], env: dict[str, str], log: Path, command: list[str] | None = None) -> None:
        self.args, self.log = args, log
        exe = shutil.which("factory-twin") or str(Path(sys.executable).parent / "factory-twin")
        full = {**os.environ, "TWIN_LOG_JSON": "true", **env}
        full.pop("TWIN_CONFIG", None)
        self._out = log.open("ab")
        self.proc = subprocess.Popen([*(command or [exe]), *args], env=full, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=log.parent)  # fmt: skip

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30.0) -> None:
        """Wait until the output holds ``needle``; AssertionError with the output if it does not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.args} did not print {needle!r}:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return int(self.proc.returncode)


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
autosave_interval 1
max_queued_messages 100000
max_queued_bytes 0
max_inflight_messages 100
"""


class PrivateMosquitto:
    """A Mosquitto of our own on a free port with persistence in a temporary folder; restartable."""

    def __init__(self) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="ft-mosq-")
        d = Path(self._dir.name)
        self.conf = d / "mosquitto.conf"
        self.conf.write_text(MOSQUITTO_CONF.format(port=self.port, data=d))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateMosquitto:
        """Start it and wait until it accepts connections."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError("private mosquitto did not start")

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence file) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """Stop and remove its folder."""
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def private_mosquitto() -> Iterator[PrivateMosquitto]:
    """A started private Mosquitto for the block."""
    m = PrivateMosquitto().start()
    try:
        yield m
    finally:
        m.close()
