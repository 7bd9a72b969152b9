"""The agent runner: one event loop, one TaskGroup of connectors, pipeline, uplink, metrics server, config
watcher.

Start-up validates everything before touching the network: settings, site model, units of every binding, the
connectors the site asks for. Reload (SIGHUP, or a changed site or config file) does the same checks on the
new files and swaps the result in at once; a bad file leaves the running config untouched and logs why.
SIGTERM and SIGINT stop gracefully: connectors first (no new input), then everything queued is committed and
acknowledged upstream, then the uplink and the outbox close.

Each long-running part is guarded: if it crashes it is logged and restarted after a pause, so one faulty part
never stops the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from edge_agent.cascade_client import CascadeClient
from edge_agent.commands import CommandChannel, CommandExecutor, Journal, Writers
from edge_agent.config import AgentSettings, load_settings
from edge_agent.connectors import Connector
from edge_agent.deadletter import DeadLetterFile
from edge_agent.diagnostics import Diagnoser, ModelSync
from edge_agent.errors import ConfigError
from edge_agent.metrics_server import serve_metrics
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline, Stage
from edge_agent.platform_link import PlatformLink
from edge_agent.uplink import Uplink
from plant.errors import SiteError
from plant.site import Site, load_site
from plant.wire import ack_topic

log = structlog.get_logger(__name__)

ConnectorFactory = Callable[[Site, AgentSettings], list[Connector]]
_RESTART_ONLY = (
    "gateway_id",
    "data_dir",
    "broker_url",
    "broker_ca_file",
    "broker_client_id",
    "metrics_host",
    "metrics_port",
    "outbox_synchronous",
    "chunk_items",
    # the platform link (cascade client, model sync) is built once at start
    "platform_url",
    "platform_key",
    "cascade_timeout_s",
    "model_poll_s",
    "model_dir",
)


def default_connectors(site: Site, settings: AgentSettings) -> list[Connector]:
    """The connectors the site asks for (edge_agent.connectors.factory)."""
    from edge_agent.connectors.factory import build_connectors

    return build_connectors(site, settings)


def load_config(config_file: str | Path | None, overrides: dict[str, Any]) -> tuple[AgentSettings, Site]:
    """Settings and site model, validated; ConfigError saying why not."""
    settings = load_settings(config_file, **overrides)
    if settings.site_file is None:
        raise ConfigError("no site file: set EDGE_SITE_FILE, site_file in the config file, or --site")
    try:
        site = load_site(settings.site_file)
    except SiteError as exc:
        raise ConfigError(str(exc)) from None
    return settings, site


class Agent:
    """One edge agent process.

    Args:
        config_file: optional YAML settings file (watched for changes).
        connectors: builds the connectors for a site; the default uses the site's sources.
        overrides: settings given on the command line; they win over the file and the environment.
    """

    def __init__(
        self,
        config_file: str | Path | None = None,
        *,
        connectors: ConnectorFactory = default_connectors,
        **overrides: Any,
    ) -> None:
        self.config_file = config_file
        self.overrides = overrides
        self.settings, self.site = load_config(config_file, overrides)
        self.stage = Stage.build(self.site, self.settings)
        self._connector_factory = connectors
        self.connectors = connectors(self.site, self.settings)
        self.ready = asyncio.Event()
        self.reloads = 0
        self.reload_errors = 0
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._connectors_changed = asyncio.Event()
        self._stopping = False
        self.pipeline: Pipeline | None = None
        self.uplink: Uplink | None = None
        self.writers: Writers | None = None  # the sessions setpoint commands write through, closed at stop
        self.outbox: Outbox | None = None
        self.diagnoser: Diagnoser | None = None
        self.model_sync: ModelSync | None = None
        self.metrics_port: int | None = None

    def stop(self) -> None:
        """Ask the agent to stop gracefully."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask for a reload of the settings and site files (as SIGHUP does)."""
        self._reload.set()

    async def run(self, duration: float | None = None) -> None:
        """Run until stopped (signal, ``stop()`` or ``duration`` seconds)."""
        s = self.settings
        self.outbox = outbox = await Outbox.open(
            s.outbox_path,
            budget_bytes=s.outbox_budget_bytes,
            policy=s.drop_policy,
            synchronous=s.outbox_synchronous,
            chunk_items=s.chunk_items,
        )
        offsets = outbox.db.clock_offsets()  # the clock corrections in use before a restart
        if offsets:
            self.stage = Stage.build(self.site, s, applied=offsets)
        deadletter = DeadLetterFile(s.deadletter_path, s.deadletter_max_bytes, s.deadletter_backups)
        self.pipeline = pipeline = Pipeline(
            self.stage,
            outbox,
            deadletter,
            commit_window_ms=s.commit_window_ms,
            max_pending_items=s.max_pending_items,
        )
        self.diagnoser = diagnoser = self._diagnoser(outbox, pipeline)
        link = self._platform_link()
        structlog.contextvars.bind_contextvars(gateway_id=s.gateway_id)
        self._install_signals()
        log.info(
            "agent_starting",
            gateway_id=s.gateway_id,
            site=str(s.site_file),
            connectors=len(self.connectors),
            outbox_items=outbox.db.count(),
            broker=s.broker.redacted() if s.broker else None,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                commit = tg.create_task(pipeline.run(), name="pipeline")
                others = [tg.create_task(self._guard("connectors", self._run_connectors))]
                diagnosis = tg.create_task(self._guard("diagnoser", diagnoser.run)) if diagnoser else None
                if diagnoser is not None and self.model_sync is not None:  # promoted versions from the platform
                    others.append(tg.create_task(self._guard("model_sync", _bind(self.model_sync.run, diagnoser))))
                if link is not None:
                    await link.start()
                    self.uplink = Uplink.from_settings(outbox, link, s)
                    link.on_message = self.uplink.on_message
                    others.append(tg.create_task(self._guard("uplink", self.uplink.run)))
                    channel = self._command_channel(link, self.uplink)
                    if channel is not None:
                        others.append(tg.create_task(self._guard("commands", channel.run)))
                if s.metrics_port >= 0:
                    server = await serve_metrics(s.metrics_host, s.metrics_port)
                    self.metrics_port = server.sockets[0].getsockname()[1]
                    others.append(tg.create_task(self._serve_forever(server)))
                others.append(tg.create_task(self._guard("watcher", self._watch)))
                others.append(tg.create_task(self._guard("housekeeping", self._housekeeping)))
                self.ready.set()
                await _wait(self._stop, duration)
                log.info("agent_stopping")
                self._stopping = True  # connectors first: no new input
                self._connectors_changed.set()
                await asyncio.wait([others[0]], timeout=30)
                pipeline.stop()
                await commit
                if diagnoser is not None and diagnosis is not None:  # the last frames' diagnoses, then close
                    diagnoser.stop()
                    await asyncio.wait([diagnosis], timeout=10)
                    diagnosis.cancel()
                    await diagnoser.close()
                if self.uplink is not None:
                    await self._let_uplink_finish()
                for t in others[1:]:
                    t.cancel()
        finally:
            self._remove_signals()
            if link is not None:
                await link.stop()
            if self.writers is not None:
                await self.writers.close()
            await outbox.close()
            log.info("agent_stopped", accepted=pipeline.accepted, rejected=pipeline.rejected)

    def _diagnoser(self, outbox: Outbox, pipeline: Pipeline) -> Diagnoser | None:
        """The on-device diagnostics, when enabled and the site names models; fed by the pipeline's commits."""
        s = self.settings
        if not s.diagnose or not any(t.models for t in self.site.asset_types.values()):
            return None
        self.model_sync = ModelSync(self.site, s) if s.platform_url else None
        diagnoser = Diagnoser(
            self.site,
            s,
            s.model_registry_dir,
            on_rollback=self.model_sync.on_rollback if self.model_sync else None,
            cascade=CascadeClient.from_settings(s),
            outbox=outbox,
            backlog=lambda: pipeline.pending / pipeline.max_pending,
        )
        pipeline.on_frames = diagnoser.observe
        return diagnoser

    def _platform_link(self) -> PlatformLink | None:
        s = self.settings
        url = s.broker
        if url is None:
            log.warning("no_platform_broker", hint="set EDGE_BROKER_URL; items stay in the outbox")
            return None
        ca = str(s.broker_ca_file) if s.broker_ca_file else None
        acks = [ack_topic(s.gateway_id, s.topic_root)]
        return PlatformLink(url, s.client_id, acks, lambda _t, _p: None, ca_file=ca)

    def _command_channel(self, link: PlatformLink, uplink: Uplink) -> CommandChannel | None:
        """Setpoint commands, when this gateway owns a writable property; their messages before the uplink's."""
        s = self.settings
        owners = self.site.owners()
        writable = [n for n in self.site.assets() if owners.get(n.id) == s.gateway_id and n.type is not None
                    and any(p.writable for p in self.site.asset_types[n.type].properties.values())]
        if not writable:
            return None
        self.writers = Writers(self.site)
        executor = CommandExecutor(self.site, s.gateway_id, Journal(s.data_dir / "commands.sqlite"), self.writers)
        channel = CommandChannel(executor, link, s.topic_root)
        link.subscribe(channel.topic)

        def route(topic: str, payload: bytes) -> None:
            if not channel.on_message(topic, payload):
                uplink.on_message(topic, payload)

        link.on_message = route
        log.info("commands_enabled", topic=channel.topic, assets=len(writable))
        return channel

    async def _let_uplink_finish(self, seconds: float = 2.0) -> None:
        """Give batches already out a moment for their acks, so a clean stop resends little."""
        assert self.uplink is not None
        await _wait(self.uplink.drained, seconds)

    async def _run_connectors(self) -> None:
        while True:
            self._connectors_changed.clear()
            assert self.pipeline is not None
            tasks = [
                asyncio.create_task(
                    self._guard(
                        f"connector:{c.source_id}", _bind(c.run, self.pipeline.sink_for(c.source_id))
                    ),
                    name=f"connector:{c.source_id}",
                )
                for c in self.connectors
            ]
            try:
                await self._connectors_changed.wait()
            finally:
                for t in tasks:  # each on its own, and insisting: a connector may swallow one cancellation
                    await _cancel(t)
            if self._stopping:
                return
            log.info("connectors_restarted", count=len(self.connectors))

    async def _guard(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        delay = 1.0
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task_crashed", task=name, restart_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _housekeeping(self) -> None:
        """Gauges that need a query (the outbox's oldest item), every few seconds."""
        while True:
            if self.outbox is not None:
                await self.outbox.publish_age()
                self.outbox.publish_metrics()
            await asyncio.sleep(5.0)

    async def _serve_forever(self, server: asyncio.Server) -> None:
        async with server:
            await server.serve_forever()

    async def _watch(self) -> None:
        stamps = self._stamps()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), self.settings.watch_interval_s)
            now = self._stamps()
            if self._reload.is_set() or now != stamps:
                self._reload.clear()
                stamps = now
                self.reload()

    def _stamps(self) -> tuple[float | None, ...]:
        files = [self.config_file, self.settings.site_file]
        out: list[float | None] = []
        for f in files:
            try:
                out.append(Path(f).stat().st_mtime_ns if f else None)
            except OSError:
                out.append(None)
        return tuple(out)

    def reload(self) -> bool:
        """Validate the files, swap them in; False when they are bad (old config kept, reason logged)."""
        try:
            settings, site = load_config(self.config_file, self.overrides)
            stage = Stage.build(site, settings, self.pipeline.stage if self.pipeline else None)
            connectors = self._connector_factory(site, settings) if site != self.site else None
        except (ConfigError, ValueError) as exc:
            self.reload_errors += 1
            log.error("reload_rejected", reason=str(exc), kept="previous config")
            return False
        changed = [k for k in _RESTART_ONLY if getattr(settings, k) != getattr(self.settings, k)]
        if changed:
            log.warning("reload_needs_restart", settings=changed)
            settings = settings.model_copy(update={k: getattr(self.settings, k) for k in changed})
        self._apply(settings, site, stage, connectors)
        return True

    def _apply(
        self, settings: AgentSettings, site: Site, stage: Stage, connectors: list[Connector] | None
    ) -> None:
        self.settings, self.site, self.stage = settings, site, stage
        if self.pipeline is not None:
            self.pipeline.swap(stage)
            self.pipeline.commit_window = settings.commit_window_ms / 1000
            self.pipeline.max_pending = settings.max_pending_items
        if self.outbox is not None:
            self.outbox.db.budget_bytes = settings.outbox_budget_bytes
            self.outbox.db.policy = settings.drop_policy
        if self.uplink is not None:
            self.uplink.configure(settings)
        if self.diagnoser is not None:
            self.diagnoser.update(site, settings)
        if self.model_sync is not None:
            self.model_sync.site = site
        if connectors is not None:
            self.connectors = connectors
            self._connectors_changed.set()
        self.reloads += 1
        log.info("config_reloaded", site_changed=connectors is not None, reloads=self.reloads)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def _bind(
    fn: Callable[[Any], Coroutine[Any, Any, None]], arg: Any
) -> Callable[[], Coroutine[Any, Any, None]]:
    def call() -> Coroutine[Any, Any, None]:
        return fn(arg)

    return call


async def _cancel(task: asyncio.Task[None], attempts: int = 20) -> None:
    """Cancel and wait; cancel again if it was swallowed (3.11's wait_for can lose a cancellation)."""
    for _ in range(attempts):
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.5)
        if done:
            return
    log.error("task_did_not_stop", task=task.get_name())


async def _wait(event: asyncio.Event, seconds: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
