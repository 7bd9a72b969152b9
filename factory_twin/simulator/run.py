"""Run the simulated plant: OPC-UA servers and MQTT publishing together, until cancelled or for N seconds.

Each tick every machine takes its next row; the OPC-UA values of a tick go to each server in one batch
write, the MQTT values as one JSON message per bound topic; a machine's setpoints (``setpoints.py``), as written
on its OPC-UA server, scale the signals they drive first. Ticks come ``speed`` times a second on an
absolute schedule. ``Simulator`` is an async context manager for tests and the demo; ``run_simulator`` is
the whole run.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import structlog

from factory_twin.simulator.errors import ScenarioError
from factory_twin.simulator.faults import Fault, apply_fault, check_fault
from factory_twin.simulator.mqtt_publisher import MqttPublisher
from factory_twin.simulator.opcua_server import OpcUaSimServer
from factory_twin.simulator.plan import MachinePlan, MqttMessage, ServedVariable, plan_site
from factory_twin.simulator.replay import PacedReplay, Replay, SourceClock, ticks
from factory_twin.simulator.setpoints import Drive
from plant.site import MqttSource, OpcUaSource, PropertyDef, Site
from plant.wire import Scalar

log = structlog.get_logger(__name__)

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
ALL_SOURCES = "*"


@dataclass
class SimulatorConfig:
    """Everything one simulator run needs.

    Args:
        site: the validated site; its bindings say what is served where.
        data_dir: the directory of the data slices (``examples/data``).
        mqtt_url: the broker every MQTT source publishes to.
        opcua_endpoints: OPC-UA source id → endpoint to serve it at, instead of the site's.
        speed: rows per second, for every machine.
        topic_prefix: put in front of every MQTT topic.
        clock_skew_s: source id (or ``"*"``) → seconds added to that source's timestamps.
        bad_clock: source ids (or ``"*"``) whose timestamps start at 2000-01-01.
        faults: injected faults.
        machines: only these machine node ids; None for every machine that has a feed.
        paced: replay at the demo's pace: each data set's rows last ``Feed.demo_row_s`` ticks (a milling process
            10, an engine cycle 5), values moving in a straight line between rows, or held for per-cycle data.
    """

    site: Site
    data_dir: Path
    mqtt_url: str = DEFAULT_MQTT_URL
    opcua_endpoints: dict[str, str] = field(default_factory=dict)
    speed: float = 1.0
    topic_prefix: str = ""
    clock_skew_s: dict[str, float] = field(default_factory=dict)
    bad_clock: frozenset[str] = frozenset()
    faults: tuple[Fault, ...] = ()
    machines: frozenset[str] | None = None
    paced: bool = False


@dataclass
class SimulatorStats:
    """What a run did, for the summary line and tests."""

    ticks: int = 0
    rows: int = 0
    opcua_values: int = 0
    opcua_rejected: int = 0
    mqtt_messages: int = 0
    mqtt_acked: int = 0
    mqtt_dropped: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        """The counts as a plain dict (for JSON)."""
        return asdict(self)


@dataclass
class _Machine:
    plan: MachinePlan
    replay: Replay[dict[str, Scalar]] | PacedReplay
    faults: list[tuple[Fault, PropertyDef]]
    drives: list[tuple[str, ServedVariable, Drive]] = field(default_factory=list)  # source, variable, drive


class Simulator:
    """The simulated plant: start it, then ``tick`` by hand or ``run`` at the configured speed.

    Making one loads the data and checks the whole configuration (machines, faults, clocks, endpoints,
    broker URL), so a mistake raises ScenarioError or SliceError before anything listens or connects.

    Args:
        config: what to serve, where and how.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self.endpoints: dict[str, str] = {}
        self.publisher: MqttPublisher | None = None
        self._servers: dict[str, OpcUaSimServer] = {}
        self._stack = AsyncExitStack()
        self._t0: float | None = None
        plans = plan_site(config.site, config.data_dir, config.machines)
        if not plans:
            raise ScenarioError(
                f"site {config.site.site.id!r} has no bound machine the simulator has data for"
            )
        self._machines = [_Machine(p, _replay(p, config.paced), [], _drives(p)) for p in plans]
        self._attach_faults()
        self._clocks = self._make_clocks()
        self._signals = self._opcua_signals()
        if any(m.plan.mqtt for m in self._machines):
            self.publisher = MqttPublisher(config.mqtt_url, topic_prefix=config.topic_prefix)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the OPC-UA servers and connect to the broker; EndpointError if either fails."""
        try:
            for source, (endpoint, signals) in self._signals.items():
                server = OpcUaSimServer(endpoint, signals, name=f"factory-twin simulator ({source})")
                await self._stack.enter_async_context(server)
                self._servers[source] = server
                self.endpoints[source] = endpoint
            if self.publisher is not None:
                await self._stack.enter_async_context(self.publisher)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info(
            "simulator_started",
            machines=[m.plan.node for m in self._machines],
            opcua=self.endpoints,
            mqtt=self.config.mqtt_url if self.publisher else None,
            speed=self.config.speed,
        )

    async def stop(self) -> None:
        """Disconnect from the broker (after its acknowledgements) and stop the servers."""
        if self.publisher is not None:
            self._count_mqtt()
        await self._stack.aclose()

    async def tick(self) -> None:
        """One row of every machine: OPC-UA values in one batch per server, one MQTT message per topic."""
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        elapsed = loop.time() - self._t0
        batches: dict[str, dict[str, Scalar]] = defaultdict(dict)
        messages: list[tuple[str, MqttMessage, dict[str, Scalar | None]]] = []
        for machine in self._machines:
            values = self._values(machine, elapsed)
            for source, signals in machine.plan.opcua.items():
                batches[source].update(_present(signals, values))
            for source, msgs in machine.plan.mqtt.items():
                messages.extend((source, msg, values) for msg in msgs)
            self.stats.rows += 1
        for source, batch in batches.items():
            server = self._servers[source]
            self.stats.opcua_values += await server.write(batch, self._clocks[source].now())
            self.stats.opcua_rejected = sum(s.rejected for s in self._servers.values())
        await self._publish(messages)
        self.stats.ticks += 1

    async def run(self, duration_s: float | None = None) -> SimulatorStats:
        """Tick at the configured speed for ``duration_s`` seconds, or until cancelled; the run's counts."""
        loop = asyncio.get_running_loop()
        speed = self.config.speed
        limit = None if duration_s is None else math.floor(duration_s * speed - 1e-9) + 1
        started = loop.time()
        try:
            async for _ in ticks(speed, limit):
                await self.tick()
            if duration_s is not None:
                await asyncio.sleep(max(0.0, started + duration_s - loop.time()))
        finally:
            self.stats.elapsed_s = round(loop.time() - started, 3)
            if self.publisher is not None:
                self._count_mqtt()
            log.info("simulator_summary", **self.stats.as_dict())
        return self.stats

    def _values(self, machine: _Machine, elapsed: float) -> dict[str, Scalar | None]:
        values = cast(dict[str, Scalar | None], machine.replay.next())
        if machine.drives:
            values = dict(values)  # a plain replay gives its own row: scale a copy
            for source, signal, drive in machine.drives:
                written = self._servers[source].value(signal.node_id)
                if drive.follow(written, elapsed):
                    log.info("simulator_setpoint", node_id=signal.machine, prop=signal.prop, value=drive.target)
                drive.apply(values)
        for fault, pdef in machine.faults:
            value = values[fault.prop]
            if fault.active(elapsed) and value is not None:
                values[fault.prop] = apply_fault(fault, value, pdef)
        return values

    async def _publish(self, messages: list[tuple[str, MqttMessage, dict[str, Scalar | None]]]) -> None:
        if self.publisher is None:
            return
        for source, message, values in messages:
            payload = message.payload(values, self._clocks[source].now_us() // 1000)
            if payload is not None:
                await self.publisher.publish(message.topic, payload)
        self._count_mqtt()

    def _count_mqtt(self) -> None:
        assert self.publisher is not None
        self.stats.mqtt_messages = self.publisher.sent
        self.stats.mqtt_acked = self.publisher.acked
        self.stats.mqtt_dropped = self.publisher.dropped

    def _attach_faults(self) -> None:
        by_node = {m.plan.node: m for m in self._machines}
        for fault in self.config.faults:
            pdef = check_fault(fault, self.config.site)
            if fault.node not in by_node:
                raise ScenarioError(f"fault on {fault.node}.{fault.prop}: {fault.node} is not simulated")
            if fault.prop in by_node[fault.node].plan.feed.setpoints:
                raise ScenarioError(f"fault on {fault.node}.{fault.prop}: a setpoint is written, not replayed")
            by_node[fault.node].faults.append((fault, pdef))

    def _make_clocks(self) -> dict[str, SourceClock]:
        cfg = self.config
        sources = cfg.site.sources
        for name in [*cfg.clock_skew_s, *cfg.bad_clock]:
            if name != ALL_SOURCES and name not in sources:
                raise ScenarioError(f"clock option names source {name!r}, which the site does not have")
        default_skew = cfg.clock_skew_s.get(ALL_SOURCES, 0.0)
        return {
            name: SourceClock(
                skew_s=cfg.clock_skew_s.get(name, default_skew),
                bad=name in cfg.bad_clock or ALL_SOURCES in cfg.bad_clock,
            )
            for name in sources
        }

    def _opcua_signals(self) -> dict[str, tuple[str, list[ServedVariable]]]:
        """OPC-UA source id → (endpoint to serve it at, its variables over all machines)."""
        cfg = self.config
        for name in cfg.opcua_endpoints:
            if not isinstance(cfg.site.sources.get(name), OpcUaSource):
                raise ScenarioError(
                    f"--opcua-endpoint names {name!r}, which is not an OPC-UA source of the site"
                )
        out: dict[str, tuple[str, list[ServedVariable]]] = {}
        for machine in self._machines:
            for served in (machine.plan.opcua, machine.plan.setpoints):
                for source, signals in served.items():
                    src = cfg.site.sources[source]
                    assert isinstance(src, OpcUaSource)  # the site checks binding kinds against sources
                    out.setdefault(source, (cfg.opcua_endpoints.get(source, src.endpoint), []))[1].extend(signals)
        return out


def _replay(plan: MachinePlan, paced: bool) -> Replay[dict[str, Scalar]] | PacedReplay:
    feed = plan.feed
    if not paced or feed.demo_row_s <= 1:
        return Replay(plan.rows, plan.start)
    return PacedReplay(plan.rows, feed.demo_row_s, plan.start, hold=feed.per_cycle, counters=feed.counters)


def _drives(plan: MachinePlan) -> list[tuple[str, ServedVariable, Drive]]:
    return [
        (source, signal, Drive(plan.feed.setpoints[signal.prop], plan.driven[signal.prop]))
        for source, signals in plan.setpoints.items()
        for signal in signals
    ]


def _present(signals: list[ServedVariable], values: dict[str, Scalar | None]) -> dict[str, Scalar]:
    """Node id → value of the signals that have one this tick (a stale fault leaves its signal out)."""
    out: dict[str, Scalar] = {}
    for s in signals:
        value = values[s.prop]
        if value is not None:
            out[s.node_id] = value
    return out


def default_mqtt_url(site: Site) -> str:
    """The broker to publish to when none is given: the first MQTT source's URL, else the local default."""
    for src in site.sources.values():
        if isinstance(src, MqttSource) and src.url:
            return src.url
    return DEFAULT_MQTT_URL


async def run_simulator(config: SimulatorConfig, duration_s: float | None = None) -> SimulatorStats:
    """Start the simulated plant, run it for ``duration_s`` seconds (or until cancelled), stop it."""
    async with Simulator(config) as sim:
        return await sim.run(duration_s)
