"""What to serve where: the site's bindings turned into OPC-UA variables and MQTT messages per machine.

The simulator serves exactly the signals the site binds. For every machine whose asset type has a feed
(``datasets.FEEDS``), each binding becomes an OPC-UA variable (its ``node_id`` on the server of its
source) or a field of a JSON message (its ``path`` in the message on its ``topic``, with the source
timestamp at its ``ts_path``). A binding's ``scale`` and ``offset`` are undone before sending, so the
agent's conversion gives back the data set's value. A property the feed declares a setpoint (``Feed.setpoints``)
is no column of the data set: it becomes a writable OPC-UA variable starting at its nominal value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from factory_twin.simulator.datasets import FEEDS, Feed, convert
from factory_twin.simulator.errors import ScenarioError
from factory_twin.simulator.setpoints import Driven
from plant.site import Binding, DataType, MqttBinding, Node, OpcUaBinding, PropertyDef, Site
from plant.wire import Scalar

log = structlog.get_logger(__name__)

Row = dict[str, Scalar]


@dataclass(frozen=True)
class ServedVariable:
    """One OPC-UA variable to serve.

    Args:
        machine: twin node id of the machine.
        prop: property name.
        node_id: the binding's node id, e.g. ``ns=2;s=engine-1.t2``.
        pdef: the property's definition (data type, unit, range, description).
        unit: the unit the value is sent in (the binding's, else the property's).
        initial: for a setpoint, the value it starts at: clients may write it, the replay never does.
    """

    machine: str
    prop: str
    node_id: str
    pdef: PropertyDef
    unit: str
    initial: Scalar | None = None


@dataclass(frozen=True)
class MqttField:
    """One property's place in a JSON message: a dotted path such as ``vib.acc1_rms``."""

    prop: str
    path: str


@dataclass(frozen=True)
class MqttMessage:
    """The JSON message one machine sends on one topic each tick.

    Args:
        topic: the binding's topic (the publisher may put a prefix in front).
        fields: the properties it carries and their paths.
        ts_paths: where the source timestamp goes (epoch ms).
    """

    topic: str
    fields: tuple[MqttField, ...]
    ts_paths: tuple[str, ...]

    def payload(self, values: Mapping[str, Scalar | None], ts_ms: int) -> dict[str, Any] | None:
        """The JSON object of one tick: values at their paths, ``ts_ms`` at each ts path; None if no value."""
        out: dict[str, Any] = {}
        for f in self.fields:
            value = values.get(f.prop)
            if value is not None:
                _put(out, f.path, value, self.topic)
        if not out:
            return None
        for path in self.ts_paths:
            _put(out, path, ts_ms, self.topic)
        return out


def _put(obj: dict[str, Any], path: str, value: object, topic: str) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        child = obj.setdefault(key, {})
        if not isinstance(child, dict):
            raise ScenarioError(f"topic {topic}: path {path!r} runs through {key!r}, which holds a value")
        obj = child
    if leaf in obj:
        raise ScenarioError(f"topic {topic}: two bindings write path {path!r}")
    obj[leaf] = value


@dataclass
class MachinePlan:
    """One simulated machine: its rows, typed per bound property, and where each signal goes.

    Args:
        node: twin node id.
        asset_type: asset type id.
        feed: the data set feed that replays it.
        rows: one dict per data row, property → value as sent (scale and offset undone).
        start: the row to start at (machines of one type start at different rows).
        opcua: OPC-UA source id → variables.
        mqtt: MQTT source id → messages.
        setpoints: OPC-UA source id → the machine's setpoint variables.
        driven: setpoint property → the bound signals it drives.
    """

    node: str
    asset_type: str
    feed: Feed
    rows: list[Row]
    start: int = 0
    opcua: dict[str, list[ServedVariable]] = field(default_factory=dict)
    mqtt: dict[str, list[MqttMessage]] = field(default_factory=dict)
    setpoints: dict[str, list[ServedVariable]] = field(default_factory=dict)
    driven: dict[str, tuple[Driven, ...]] = field(default_factory=dict)


def plan_site(site: Site, data_dir: Path, machines: Collection[str] | None = None) -> list[MachinePlan]:
    """A plan per bound machine of the site that has a feed (only ``machines`` if given)."""
    chosen = [n for n in site.assets() if n.bindings and (machines is None or n.id in machines)]
    if machines is not None:
        unknown = sorted(set(machines) - {n.id for n in chosen})
        if unknown:
            raise ScenarioError(f"no bound machine(s) {', '.join(unknown)} in site {site.site.id!r}")
    per_type = Counter(n.type for n in chosen if n.type in FEEDS)
    seen: Counter[str | None] = Counter()
    plans: list[MachinePlan] = []
    loaded: dict[str, list[dict[str, str]]] = {}
    for node in chosen:
        assert node.type is not None  # site.assets() yields typed nodes only
        feed = FEEDS.get(node.type)
        if feed is None:
            log.warning("simulator_no_feed", node_id=node.id, asset_type=node.type)
            continue
        if node.type not in loaded:
            loaded[node.type] = feed.load(data_dir)
        raw = loaded[node.type]
        # Several machines of one type start spread over the rows, so they do not send identical values.
        start = len(raw) * seen[node.type] // per_type[node.type]
        seen[node.type] += 1
        plans.append(_plan_machine(site, node, node.type, feed, raw, start))
    return plans


def _plan_machine(
    site: Site, node: Node, asset_type: str, feed: Feed, raw: list[dict[str, str]], start: int
) -> MachinePlan:
    pdefs = site.asset_types[asset_type].properties
    bound = {p: b for p, b in node.bindings.items() if p not in feed.setpoints}
    for prop, binding in bound.items():
        if prop not in feed.columns:
            raise ScenarioError(f"{node.id}.{prop}: the {feed.dataset} feed has no signal for {prop!r}")
        sent_unit = binding.unit or pdefs[prop].unit
        if sent_unit != feed.units[prop]:
            log.warning(
                "simulator_unit_mismatch", node_id=node.id, prop=prop, data=feed.units[prop], site=sent_unit
            )
    plan = MachinePlan(node=node.id, asset_type=asset_type, feed=feed, rows=[], start=start)
    plan.rows = [_row(bound, pdefs, feed, r, i) for i, r in enumerate(raw)]
    _plan_setpoints(node, pdefs, feed, plan)
    messages: dict[tuple[str, str], tuple[list[MqttField], set[str]]] = {}
    for prop, binding in bound.items():
        if isinstance(binding, OpcUaBinding):
            signal = ServedVariable(
                node.id, prop, binding.node_id, pdefs[prop], binding.unit or pdefs[prop].unit
            )
            plan.opcua.setdefault(binding.source, []).append(signal)
        else:
            _add_field(node.id, prop, binding, messages)
    for (source, topic), (fields, ts_paths) in messages.items():
        message = MqttMessage(topic, tuple(fields), tuple(sorted(ts_paths)))
        message.payload(plan.rows[0], 0)  # paths that clash fail now, not on the first tick
        plan.mqtt.setdefault(source, []).append(message)
    return plan


def _plan_setpoints(node: Node, pdefs: dict[str, PropertyDef], feed: Feed, plan: MachinePlan) -> None:
    """The machine's bound setpoints as writable OPC-UA variables, and the bound signals each drives."""
    for prop, setpoint in feed.setpoints.items():
        binding = node.bindings.get(prop)
        if binding is None:
            continue
        if not isinstance(binding, OpcUaBinding):
            raise ScenarioError(f"{node.id}.{prop}: the simulator serves a setpoint over OPC-UA only")
        if (binding.unit or pdefs[prop].unit) != setpoint.unit or (binding.scale, binding.offset) != (1.0, 0.0):
            raise ScenarioError(f"{node.id}.{prop}: the simulated setpoint is in {setpoint.unit}, unscaled")
        if pdefs[prop].dtype is not DataType.FLOAT:
            raise ScenarioError(f"{node.id}.{prop}: the simulated setpoint is a float")
        signal = ServedVariable(node.id, prop, binding.node_id, pdefs[prop], setpoint.unit, initial=setpoint.nominal)
        plan.setpoints.setdefault(binding.source, []).append(signal)
        plan.driven[prop] = tuple(
            Driven(p, exponent, node.bindings[p].scale, node.bindings[p].offset)
            for p, exponent in setpoint.drives.items()
            if p in node.bindings and pdefs[p].dtype is DataType.FLOAT
        )


def _add_field(
    node: str,
    prop: str,
    binding: MqttBinding,
    messages: dict[tuple[str, str], tuple[list[MqttField], set[str]]],
) -> None:
    if binding.topic is None or binding.path is None:
        raise ScenarioError(
            f"{node}.{prop}: the simulator sends plain JSON; the binding needs 'topic' and 'path'"
        )
    fields, ts_paths = messages.setdefault((binding.source, binding.topic), ([], set()))
    fields.append(MqttField(prop, binding.path))
    if binding.ts_path:
        ts_paths.add(binding.ts_path)


def _row(bound: Mapping[str, Binding], pdefs: dict[str, PropertyDef], feed: Feed, raw: dict[str, str],
         index: int) -> Row:
    row: Row = {}
    for prop, binding in bound.items():
        where = f"{feed.dataset} row {index}, column {feed.columns[prop]!r}"
        value = convert(raw[feed.columns[prop]], pdefs[prop].dtype, where)
        row[prop] = _unscale(value, binding.scale, binding.offset, pdefs[prop].dtype)
    return row


def _unscale(value: Scalar, scale: float, offset: float, dtype: DataType) -> Scalar:
    """The raw value a device sends so that raw × scale + offset gives ``value``."""
    if (scale == 1.0 and offset == 0.0) or isinstance(value, bool | str):
        return value
    if scale == 0.0:
        raise ScenarioError("a binding with scale 0 cannot be simulated (every raw value gives the offset)")
    raw = (value - offset) / scale
    return round(raw) if dtype == DataType.INT else raw
