"""The platform's background work around one database, wired in one place for `serve` and the demo.

After each ingested batch (on the ingest worker's thread) the changes fan out:

    TwinStore.apply ─► live bus        every process hears which properties moved (NOTIFY on PostgreSQL)
                    └► history job     rollups of late values are recomputed

    live bus ─► alert evaluator        in the one process that holds the leader lock (twin/alerts/evaluator.py):
                                       reads what moved, rules → lifecycle → webhook rows, one commit

Alert evaluation runs once per database however many processes run the platform: each process with a site is
a candidate, the leader evaluates what every process stored, and a standby takes over when it dies. Webhook
delivery runs in every process, as rows are claimed with SKIP LOCKED on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from sqlalchemy import Engine

from plant.site import Site
from plant.wire import UplinkBatch
from twin.alerts.evaluator import AlertEvaluator
from twin.commands import CommandDispatcher
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.history import HistoryJob
from twin.ingest import Ingestor
from twin.live import live_bus_for
from twin.store import ApplyResult, TwinStore
from twin.webhooks.target import TargetPolicy
from twin.webhooks.worker import DeliveryWorker

log = structlog.get_logger(__name__)


@dataclass
class PlatformParts:
    """Which parts this process runs.

    Args:
        ingest: subscribe to the uplink and store batches.
        alerts: stand for alert evaluation (the leader among the processes that do evaluates; needs a site).
        webhooks: deliver webhook events.
        extra_listeners: more ``Ingestor`` listeners.
    """

    ingest: bool = True
    alerts: bool = True
    webhooks: bool = True
    extra_listeners: list[Callable[[UplinkBatch, ApplyResult], None]] = field(default_factory=list)


class Platform:
    """Ingest, alerts, webhooks and the live bus for one database.

    Args:
        settings: the platform settings.
        engine: the database, at the current schema.
        site: the plant (needed for alert rules and to sync the twin's nodes).
        mqtt_url: the broker the agents uplink to (overrides ``settings.mqtt_url``).
        parts: which parts to run.
    """

    def __init__(
        self,
        settings: TwinSettings,
        engine: Engine,
        site: Site | None,
        mqtt_url: str | None,
        parts: PlatformParts | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.site = site
        self.mqtt_url = mqtt_url or settings.mqtt_url
        self.parts = parts or PlatformParts()
        self.store = TwinStore(engine, settings)
        self.ingestor: Ingestor | None = None
        self.commands: CommandDispatcher | None = None  # setpoint commands to the gateways (twin/commands.py)
        self.evaluator: AlertEvaluator | None = None
        self.delivery: DeliveryWorker | None = None
        self.history: HistoryJob | None = None
        self._sessions = make_sessionmaker(engine)
        self._stop = threading.Event()
        self._deliver_now = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Platform:
        """Sync the site and knowledge base, then start the parts; returns once ingest is subscribed."""
        if self.site is not None:
            self.store.sync_site(self.site)
        self._load_knowledge()
        if self.parts.alerts and self.site is not None:
            self.evaluator = AlertEvaluator(self.engine, self.site, self.settings, self._deliver_now.set).start()
        if self.parts.webhooks:
            self.delivery = DeliveryWorker(self.engine, policy=TargetPolicy.from_settings(self.settings))
            self._spawn("webhook-delivery", self._delivery_loop)
        if self.parts.ingest:
            self._start_ingest()
        return self

    def _start_ingest(self) -> None:
        if self.mqtt_url is None:
            from twin.errors import ConfigError

            raise ConfigError("no MQTT broker URL for ingest: set TWIN_MQTT_URL or use the embedded broker")
        self.ingestor = Ingestor.from_settings(self.store, self.settings, self.mqtt_url)
        self.ingestor.add_listener(live_bus_for(self.engine).listener)
        self._add_history_listener()
        for listener in self.parts.extra_listeners:
            self.ingestor.add_listener(listener)
        self.ingestor.start()
        broker = self.ingestor.broker  # the URL parsed once (ConfigError when it is bad)
        self.commands = CommandDispatcher.connect(
            self.engine, broker, f"{self.settings.mqtt_client_id}-commands", self.settings.mqtt_topic_root
        ).start()
        assert self.history is not None
        self.history.start()

    def _add_history_listener(self) -> None:
        """Partitions ahead, retention behind, rollups of late values: one job per ingest process."""
        assert self.ingestor is not None
        self.history = HistoryJob(self.engine, self.settings)
        self.ingestor.add_listener(self.history.listener)

    def _delivery_loop(self) -> None:
        assert self.delivery is not None
        idle = self.delivery.config.idle_poll_s
        try:
            while not self._stop.is_set():
                try:
                    handled = self.delivery.run_batch()
                except Exception as exc:  # the worker must outlive any one bad cycle
                    log.error("webhook_cycle_failed", error=str(exc))
                    handled = 0
                if not handled:
                    self._deliver_now.wait(idle)
                    self._deliver_now.clear()
        finally:
            self.delivery.close()

    def _load_knowledge(self) -> None:
        directory = self.settings.knowledge_dir
        if directory is None:
            return
        from twin.knowledge.base import load_dir, sync_files

        with self._sessions.begin() as session:
            changed = sync_files(session, load_dir(Path(directory)))
        log.info("knowledge_base_loaded", directory=str(directory), changed=changed)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, leave: bool = False) -> None:
        """Stop ingest first (finishing the batch in hand), then the jobs; ``leave`` ends the broker session."""
        if self.commands is not None:
            self.commands.stop()
        if self.ingestor is not None:
            self.ingestor.stop(leave=leave)
        if self.history is not None:
            self.history.stop()
        if self.evaluator is not None:
            self.evaluator.stop()  # the leader lets go: a standby takes over at its next try
        self._stop.set()
        self._deliver_now.set()
        for thread in self._threads:
            thread.join(timeout=15)
