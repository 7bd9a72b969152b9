"""A whole plant in one process: simulator, edge agent, platform (ingest + REST API) and, when no broker
is given, the embedded MQTT broker. ``factory-twin demo`` runs it on embedded defaults; the end-to-end tests
run it on the machine's Mosquitto and PostgreSQL. Every part talks to the others over real TCP, as in
production.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog
import uvicorn
import yaml
from sqlalchemy import Engine, distinct, func, select
from sqlalchemy.exc import SQLAlchemyError

from edge_agent.agent import Agent
from factory_twin.credentials import DemoCredentials, demo_credentials
from factory_twin.simulator.datasets import FEEDS
from factory_twin.simulator.examples import data_dir as example_data_dir
from factory_twin.simulator.examples import example_site_path
from factory_twin.simulator.faults import parse_fault
from factory_twin.simulator.run import Simulator, SimulatorConfig
from plant.site import OpcUaSource, Site, load_site
from plant.wire import TOPIC_ROOT, now_us
from twin.broker import BrokerAccess, EmbeddedBroker, free_port
from twin.config import Access, TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.gateways import active_credentials, new_credential, set_credential
from twin.ingest import Ingestor
from twin.platform import Platform
from twin.tables import AlertTransition
from twin.topic_access import TopicRules

log = structlog.get_logger(__name__)


@dataclass
class StackConfig:
    """What to run and where.

    Args:
        data_dir: SQLite file, agent outbox and the demo's site copy live here.
        site_file: the plant; the example plant by default.
        database_url: the twin's database; SQLite under ``data_dir`` when None.
        mqtt_url: one broker for plant telemetry and the uplink; an embedded broker on a free port when None.
        http_host: where the REST API listens.
        http_port: REST API port; 0 picks a free one.
        speed: simulator ticks per second (a row per tick, or with ``paced`` the demo's pace times this).
        gateway_id: the agent's gateway id (unique per run when sharing a broker); it owns the machines with
            setpoints that the site gives no owner, so their setpoints can be written.
        topic_root: root of the uplink, ack and command topics, for the platform and the agent (a run of its
            own on a shared broker).
        paced: replay at the demo's pace (simulator/datasets.py ``Feed.demo_row_s``); an asset type whose data
            set has one row per cycle gets a grid of one row, so its models still see one frame per cycle.
    """

    data_dir: Path
    site_file: Path | None = None
    database_url: str | None = None
    mqtt_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    speed: float = 1.0
    gateway_id: str = "demo-gateway"
    topic_root: str = TOPIC_ROOT
    knowledge_dir: Path | None = None
    faults: tuple[str, ...] = ()  # simulator fault scenarios, e.g. "pump-1.current:high@5"
    extra_agent_settings: dict[str, Any] = field(default_factory=dict)
    paced: bool = False


@dataclass
class StackSummary:
    """What reached the twin during a run."""

    values_ingested: int
    nodes_updated: int
    rejected: int
    batches: int
    duplicates: int
    seconds: float
    alerts_raised: int = 0  # transitions into active during the run: raised, or reactivated while open
    alerts_flapping: int = 0  # alerts marked flapping during the run
    first_alert_s: float | None = None  # from the start of the run to the first alert raised
    dead_letters: int = 0  # uplink messages that could not be stored (factory-twin ingest dead-letters)

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return dict(vars(self))


class Stack:
    """Starts and stops the parts in order: broker, database, ingest, API, simulator, agent.

    Args:
        config: what to run and where.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.broker: EmbeddedBroker | None = None
        self.engine: Engine | None = None
        self._alerts_at_stop: tuple[int, int, int | None] | None = None  # counted before the engine is disposed
        self.platform: Platform | None = None
        self.ingestor: Ingestor | None = None
        self.api: uvicorn.Server | None = None
        self.agent: Agent | None = None
        self.admin_key = ""
        self.agent_key = ""
        self.credentials: DemoCredentials | None = None
        self.api_url = ""
        self.mqtt_url = ""  # the broker, for the plant's devices (anonymous on the embedded broker)
        self.agent_mqtt_url = ""  # the broker with the gateway's login
        self._api_thread: threading.Thread | None = None
        self._site_file: Path | None = None
        self.started_us = now_us()

    # --- platform (threads) -------------------------------------------------------------------------------

    def start_platform(self) -> None:
        """Broker, migrations, site sync, ingest and the API; returns once all accept work."""
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.started_us = now_us()
        self._alerts_at_stop = None
        settings = TwinSettings(data_dir=cfg.data_dir, database_url=cfg.database_url, mqtt_url=cfg.mqtt_url,
                                mqtt_client_id=f"ft-ingest-{cfg.gateway_id}", mqtt_topic_root=cfg.topic_root,
                                metrics_port=-1,
                                knowledge_dir=cfg.knowledge_dir or _example_knowledge(),
                                docs_access=_demo_docs_access(cfg.http_host))
        from migrations import run as migrations

        migrations.upgrade(settings.db_url)
        self.engine = make_engine(settings.db_url)
        platform_url = self._start_broker(settings)
        site = self._site()
        self.platform = Platform(settings, self.engine, site, platform_url).start()
        self.ingestor = self.platform.ingestor
        with make_sessionmaker(self.engine)() as session:  # once per data directory, reused on restart
            self.credentials = demo_credentials(session, cfg.data_dir, cfg.gateway_id)
        self.admin_key, self.agent_key = self.credentials.admin_key, self.credentials.agent_key
        self._start_api(settings)

    def _start_broker(self, settings: TwinSettings) -> str:
        """The embedded broker (unless a broker is given), enforcing gateway logins; returns ingest's URL.

        The demo's gateway gets a new credential each run; the simulator, standing for the plant's devices,
        stays anonymous and so can use the plant topics only.
        """
        cfg = self.config
        if cfg.mqtt_url is not None:
            self.mqtt_url = self.agent_mqtt_url = cfg.mqtt_url
            return cfg.mqtt_url
        engine = self.engine
        assert engine is not None
        access = BrokerAccess(TopicRules(settings.mqtt_topic_root), lambda: active_credentials(engine))
        self.broker = EmbeddedBroker(port=0, access=access).start()
        credential = new_credential()
        with make_sessionmaker(engine)() as session:
            set_credential(session, cfg.gateway_id, credential)
        self.mqtt_url = self.broker.url
        self.agent_mqtt_url = self.broker.url_for(cfg.gateway_id, credential)
        return self.broker.platform_url

    def _start_api(self, settings: TwinSettings) -> None:
        from twin.api.app import create_app

        assert self.engine is not None
        port = self.config.http_port or free_port(self.config.http_host)
        app = create_app(settings, self.engine)
        app.state.ingestor = self.ingestor  # /healthz reports ingest too
        config = uvicorn.Config(app, host=self.config.http_host, port=port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=5)
        self.api = uvicorn.Server(config)
        self._api_thread = threading.Thread(target=self.api.run, name="api", daemon=True)
        self._api_thread.start()
        for _ in range(200):
            if self.api.started:
                break
            if not self._api_thread.is_alive():
                raise RuntimeError(f"REST API could not listen on {self.config.http_host}:{port}")
            threading.Event().wait(0.05)
        self.api_url = f"http://{self.config.http_host}:{port}"

    def stop_platform(self) -> None:
        """Stop the API, ingest (finishing the batch in hand) and the broker."""
        if self.api is not None:
            self.api.should_exit = True
            if self._api_thread is not None:
                self._api_thread.join(timeout=10)
        if self.platform is not None:
            self.platform.stop()
        if self.engine is not None:
            # the summary of a stopped stack: counted now, so reading it opens no connection nobody closes
            try:
                self._alerts_at_stop = self._alert_counts()
            except SQLAlchemyError as exc:  # the summary counts again when asked
                log.warning("stack_alert_count_failed", error=str(exc).splitlines()[0])
            self.engine.dispose()
        if self.broker is not None:
            self.broker.stop()

    # --- plant and edge (asyncio) ---------------------------------------------------------------------------

    async def run_edge(self, duration: float | None = None, status_every: float | None = None) -> None:
        """Simulator and agent until ``duration`` passes or the agent is stopped (Ctrl-C, SIGTERM)."""
        site = self._site()
        faults = tuple(parse_fault(spec) for spec in self.config.faults)
        sim = Simulator(SimulatorConfig(site=site, data_dir=example_data_dir(), mqtt_url=self.mqtt_url,
                                        speed=self.config.speed, faults=faults, paced=self.config.paced))
        assert self._site_file is not None
        # the agent asks the platform's teachers about unsure windows and follows promoted models
        platform = {"platform_url": self.api_url, "platform_key": self.agent_key} if self.agent_key else {}
        self.agent = Agent(site_file=self._site_file, gateway_id=self.config.gateway_id,
                           data_dir=self.config.data_dir / "agent", broker_url=self.agent_mqtt_url,
                           mqtt_url=self.agent_mqtt_url, topic_root=self.config.topic_root, metrics_port=0,
                           **(platform | self.config.extra_agent_settings))
        async with sim, asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="simulator")
            status_task = tg.create_task(self._report(status_every), name="status")
            agent_task = tg.create_task(self.agent.run(duration), name="agent")
            await agent_task
            sim_task.cancel()
            status_task.cancel()

    async def _report(self, every: float | None) -> None:
        """One status line every ``every`` seconds: what has reached the twin so far."""
        if not every:
            return
        started = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(every)
            summary = self.summary(asyncio.get_running_loop().time() - started)
            log.info("twin_status", values=summary.values_ingested, nodes=summary.nodes_updated,
                     rejected=summary.rejected, batches=summary.batches)

    def stop_edge(self) -> None:
        """Ask the agent to stop gracefully (flushes its outbox to the platform first)."""
        if self.agent is not None:
            self.agent.stop()

    def summary(self, seconds: float) -> StackSummary:
        """Counts from the ingest side: what reached the twin."""
        assert self.ingestor is not None
        s = self.ingestor.stats()
        raised, flapping, first = self._alert_counts()
        return StackSummary(values_ingested=s.values, nodes_updated=s.nodes_updated,
                            rejected=s.rejected_total, batches=s.batches, duplicates=s.duplicates,
                            seconds=round(seconds, 1), alerts_raised=raised, alerts_flapping=flapping,
                            first_alert_s=None if first is None else round((first - self.started_us) / 1e6, 1),
                            dead_letters=sum(s.dead_letters.values()))

    def _alert_counts(self) -> tuple[int, int, int | None]:
        """Annunciations, alerts marked flapping and the first annunciation (µs) since the run started."""
        if self._alerts_at_stop is not None:
            return self._alerts_at_stop
        if self.engine is None:
            return 0, 0, None
        t = AlertTransition
        since = t.at >= self.started_us
        with make_sessionmaker(self.engine)() as session:
            raised, first = session.execute(
                select(func.count(), func.min(t.at)).where(since, t.action.in_(("raise", "reactivate")))
            ).one()
            flapping = session.scalar(select(func.count(distinct(t.alert_id))).where(since, t.action == "flapping"))
        return int(raised), int(flapping or 0), first

    def _site(self) -> Site:
        """The plant, with its OPC-UA endpoints moved to free ports when the usual ones are taken."""
        if self._site_file is None:
            self._site_file = self._prepare_site(self.config.site_file or example_site_path())
        return load_site(self._site_file)

    def _prepare_site(self, path: Path) -> Path:
        text = path.read_text(encoding="utf-8")
        site = load_site(path)
        data = yaml.safe_load(text)
        for name, source in site.sources.items():
            if isinstance(source, OpcUaSource):
                port = _endpoint_port(source.endpoint)
                if port is not None and not port_free(port):
                    new = source.endpoint.replace(f":{port}", f":{free_port()}", 1)
                    data["sources"][name]["endpoint"] = new
                    log.info("opcua_endpoint_moved", was=source.endpoint, now=new)
        if self.config.paced:
            self._pace_grids(site, data)
        self._own_setpoints(site, data)
        copy = self.config.data_dir / "plant.yaml"
        header = (f"# {path} as this run uses it (OPC-UA ports that were taken moved, grids of paced data sets, "
                  f"machines with setpoints owned by gateway {self.config.gateway_id})\n")
        copy.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        load_site(copy)  # still a valid site
        return copy

    def _own_setpoints(self, site: Site, data: dict[str, Any]) -> None:
        """A setpoint is written only through the gateway that owns its machine: the stack's one agent owns each
        machine with a writable property that the site gives no owner (other nodes stay as the site has them)."""
        owners = site.owners()
        unowned = {
            node.id for node in site.assets()
            if owners[node.id] is None and node.type is not None
            and any(site.asset_types[node.type].properties[p].writable for p in node.bindings)
        }
        for entry in _node_entries(data.get("nodes") or []):
            if entry.get("id") in unowned:
                entry["gateway"] = self.config.gateway_id
                log.info("setpoints_owned_by_gateway", node_id=entry["id"], gateway_id=self.config.gateway_id)

    def _pace_grids(self, site: Site, data: dict[str, Any]) -> None:
        """At the demo's pace a row of a per-cycle data set lasts several seconds: one frame per row (cycle)."""
        for type_id, atype in site.asset_types.items():
            feed = FEEDS.get(type_id)
            if feed is None or not feed.per_cycle or feed.demo_row_s <= 1:
                continue
            grid_ms = max(10, round(feed.demo_row_s * 1000 / self.config.speed))
            old = atype.alignment
            data["asset_types"][type_id]["alignment"] = {
                "grid_ms": grid_ms,
                "tolerance_ms": max(old.tolerance_ms, 3 * grid_ms),
                "watermark_ms": old.watermark_ms,
                **({"hold_ms": old.hold_ms} if old.hold_ms is not None else {}),
            }
            log.info("grid_follows_replay_pace", asset_type=type_id, grid_ms=grid_ms)


def _node_entries(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every node mapping of a site file's ``nodes`` tree, parents before children."""
    out: list[dict[str, Any]] = []
    for node in nodes:
        out.append(node)
        out.extend(_node_entries(node.get("children") or []))
    return out


def _example_knowledge() -> Path | None:
    """The example plant's knowledge base, beside its site file."""
    directory = example_site_path().parent / "knowledge"
    return directory if directory.is_dir() else None


def _endpoint_port(endpoint: str) -> int | None:
    m = re.match(r"opc\.tcp://[^/:]+:(\d+)", endpoint)
    return int(m.group(1)) if m else None


def port_free(port: int) -> bool:
    """Whether nothing listens on ``port`` on loopback."""
    import socket

    with socket.socket() as s, contextlib.suppress(OSError):
        s.bind(("127.0.0.1", port))
        return True
    return False


def _demo_docs_access(host: str) -> Access:
    """The API's documentation is open to a browser on this machine when the API listens on loopback only
    (the demo's default), behind a key otherwise; TWIN_DOCS_ACCESS decides when set."""
    chosen = os.environ.get("TWIN_DOCS_ACCESS")
    if chosen in ("open", "key", "off"):
        return cast(Access, chosen)
    return "open" if host in ("127.0.0.1", "localhost", "::1") else "key"
