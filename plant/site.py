"""The site model: one YAML file declares the plant, validated into pydantic objects.

A site file has four parts::

    site:        id and name of the plant
    sources:     where telemetry comes from (OPC-UA servers, MQTT brokers)
    asset_types: what kinds of machine exist, their properties and the models that diagnose them
    nodes:       the hierarchy site → area → line → machine → component, with each signal's binding

``load_site(path)`` reads and validates a file; every error names the file, the line and the field path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from plant.errors import SiteError
from plant.wire import GATEWAY_ID_PATTERN

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Ident = Annotated[str, Field(pattern=_ID)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeKind(StrEnum):
    """Levels of the plant hierarchy (ISA-95 equipment levels)."""

    SITE = "site"
    AREA = "area"
    LINE = "line"
    MACHINE = "machine"
    COMPONENT = "component"


_CHILD_KINDS: dict[NodeKind, set[NodeKind]] = {
    NodeKind.SITE: {NodeKind.AREA},
    NodeKind.AREA: {NodeKind.LINE, NodeKind.MACHINE},
    NodeKind.LINE: {NodeKind.MACHINE},
    NodeKind.MACHINE: {NodeKind.COMPONENT},
    NodeKind.COMPONENT: {NodeKind.COMPONENT},
}


class DataType(StrEnum):
    """The data type of a property's value."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    STRING = "string"


class Criticality(StrEnum):
    """How much the plant depends on an asset; raises or lowers alert priority."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Writable(_Model):
    """How a property may be written back to the machine (a setpoint): limits, rate, who, how many people.

    The platform checks these before it sends a command and the agent checks them again before it writes;
    a value outside ``limits`` or changing faster than ``max_rate`` is refused, never clamped.
    """

    limits: tuple[float, float] = Field(description="engineering limits, inclusive: the lowest and highest value")
    max_rate: float | None = Field(
        None, gt=0, description="most change per second from the last desired value; none: any step inside limits"
    )
    role: Literal["technician", "engineer", "admin"] = Field("engineer", description="the least role allowed")
    two_person: bool = Field(False, description="a second person must confirm the write before it is sent")
    expiry_s: float = Field(60.0, gt=0, le=3600, description="default time a command may wait before it is void")

    @field_validator("limits")
    @classmethod
    def _limits_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"limits low {v[0]} must be below high {v[1]}, both finite")
        return v


class PropertyDef(_Model):
    """One property of an asset type: a measured or derived value with its unit and range."""

    unit: str = ""
    dtype: DataType = DataType.FLOAT
    range: tuple[float, float] | None = None
    description: str = ""
    writable: Writable | None = Field(None, description="a setpoint the twin may write to the machine")

    @model_validator(mode="after")
    def _writable_numeric(self) -> PropertyDef:
        if self.writable is not None and self.dtype not in (DataType.FLOAT, DataType.INT):
            raise ValueError(f"a writable property must be a float or int, not {self.dtype}")
        return self

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (v[0] < v[1]):
            raise ValueError(f"range low {v[0]} must be below high {v[1]}")
        return v


class AlignmentDef(_Model):
    """How an asset's signals are put on a common time grid."""

    grid_ms: int = Field(1000, ge=10, le=3_600_000)
    tolerance_ms: int = Field(5000, ge=0)
    watermark_ms: int = Field(2000, ge=0)
    hold_ms: int | None = Field(
        None,
        ge=0,
        description="report-by-exception signals (OPC-UA subscriptions, Sparkplug B) keep their last value this "
        "long without a change; none: until the source says it is stale (connection lost, DEATH)",
    )


class Severity(StrEnum):
    """How bad a rule's condition is; with the asset's criticality it gives an alert's priority."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class PropertyCondition(_Model):
    """A test on another property of the same asset, e.g. "the spindle is stopped" (speed below 50)."""

    property: Ident
    below: float | None = None
    above: float | None = None
    equals: str | float | bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> PropertyCondition:
        if self.below is None and self.above is None and self.equals is None:
            raise ValueError("a condition needs 'below', 'above' or 'equals'")
        return self


class Escalation(_Model):
    """Raise the priority one step when an alert stays active and unacknowledged this long."""

    after_s: float = Field(gt=0)
    max_steps: int = Field(1, ge=1, le=3)
    deescalate_after_s: float | None = Field(None, gt=0, description="back to base once returned this long")


class AlertRuleDef(_Model):
    """One alert rule of an asset type. ``kind`` says which fields apply; see twin/alerts/rules.py."""

    id: Ident
    kind: Literal["limit", "rate", "stale", "quality", "fault", "anomaly", "rul", "all", "any"]
    property: Ident | None = None
    hi: float | None = None
    hihi: float | None = None
    lo: float | None = None
    lolo: float | None = None
    deadband: float = Field(0.0, ge=0)
    on_delay_s: float = Field(0.0, ge=0)
    off_delay_s: float = Field(0.0, ge=0)
    max_rate: float | None = Field(None, gt=0, description="rate rules: units per second, either direction")
    window_s: float = Field(10.0, gt=0, description="rate rules: span the rate is measured over")
    after_s: float | None = Field(None, gt=0, description="stale rules: no good value for this long")
    grace_s: float = Field(0.0, ge=0, description="stale rules: wait this long after start before judging")
    mode: str | None = Field(None, description="fault rules: the fault label, '*' for any but 'none'")
    probability: float = Field(0.5, ge=0, le=1)
    ratio: float = Field(1.0, gt=0, description="anomaly rules: score above ratio × threshold")
    horizon: float | None = Field(None, gt=0, description="rul rules: RUL below this, in the model's unit")
    rules: list[Ident] = Field(default_factory=list, description="all/any rules: ids of rules of this type")
    severity: Severity = Severity.MEDIUM
    message: str = ""
    notify: bool = Field(True, description="false: only a building block of all/any rules")
    suppress_when: PropertyCondition | None = None
    escalate: Escalation | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> AlertRuleDef:
        needs: dict[str, tuple[str, ...]] = {
            "limit": ("property",), "rate": ("property", "max_rate"), "stale": ("property", "after_s"),
            "quality": ("property",), "fault": ("mode",), "rul": ("horizon",),
        }
        for name in needs.get(self.kind, ()):
            if getattr(self, name) is None:
                raise ValueError(f"a {self.kind} rule needs {name!r}")
        if self.kind == "limit":
            self._check_limits()
        if self.kind in ("all", "any") and len(self.rules) < 2:
            raise ValueError(f"an {self.kind} rule combines at least two rules")
        return self

    def _check_limits(self) -> None:
        if all(v is None for v in (self.hi, self.hihi, self.lo, self.lolo)):
            raise ValueError("a limit rule needs at least one of hi, hihi, lo, lolo")
        if self.hi is not None and self.hihi is not None and self.hihi < self.hi:
            raise ValueError(f"hihi {self.hihi} must not be below hi {self.hi}")
        if self.lo is not None and self.lolo is not None and self.lolo > self.lo:
            raise ValueError(f"lolo {self.lolo} must not be above lo {self.lo}")


class AssetType(_Model):
    """A kind of machine or component: its properties and the diagnostic models that watch it."""

    description: str = ""
    properties: dict[Ident, PropertyDef]
    key_signals: list[Ident] = Field(
        default_factory=list,
        description="the properties people look at first (an asset page opens on their trends, limits drawn)",
    )
    models: list[Literal["rul", "faults", "anomaly"]] = []
    alignment: AlignmentDef = AlignmentDef()
    alerts: list[AlertRuleDef] = []

    @model_validator(mode="after")
    def _alert_references(self) -> AssetType:
        for i, name in enumerate(self.key_signals):
            if name not in self.properties:
                raise ValueError(f"key_signals[{i}]: no property {name!r}")
            if self.properties[name].dtype == DataType.STRING:
                raise ValueError(f"key_signals[{i}]: {name!r} holds text, it has no trend")
        ids = [r.id for r in self.alerts]
        for i, rule in enumerate(self.alerts):
            if ids.count(rule.id) > 1:
                raise ValueError(f"alerts[{i}]: rule id {rule.id!r} is used twice")
            props = [rule.property, rule.suppress_when.property if rule.suppress_when else None]
            for prop in props:
                if prop is not None and prop not in self.properties:
                    raise ValueError(f"alerts[{i}] ({rule.id}): no property {prop!r}")
            for ref in rule.rules:
                if ref not in ids or ref == rule.id:
                    raise ValueError(f"alerts[{i}] ({rule.id}): unknown rule {ref!r}")
        _no_cycles({r.id: r.rules for r in self.alerts})
        return self


def _no_cycles(graph: dict[str, list[str]]) -> None:
    """Raise ValueError when all/any rules refer to each other in a loop."""
    done: set[str] = set()

    def visit(rule: str, trail: tuple[str, ...]) -> None:
        if rule in trail:
            raise ValueError(f"alert rules refer to each other in a loop: {' -> '.join((*trail, rule))}")
        if rule in done:
            return
        for ref in graph.get(rule, []):
            visit(ref, (*trail, rule))
        done.add(rule)

    for rule in graph:
        visit(rule, ())


class SecurityMode(StrEnum):
    """OPC-UA message security modes."""

    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaSecurity(_Model):
    """OPC-UA security: mode, policy, client certificate and optional user credentials."""

    mode: SecurityMode = SecurityMode.NONE
    policy: Literal["Basic256Sha256"] = "Basic256Sha256"
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None
    username: str | None = None
    password_env: str | None = Field(None, description="environment variable holding the password")

    @model_validator(mode="after")
    def _cert_for_secure_modes(self) -> OpcUaSecurity:
        if self.mode != SecurityMode.NONE and not (self.certificate and self.private_key):
            raise ValueError(f"security mode {self.mode} needs 'certificate' and 'private_key'")
        return self


class OpcUaSource(_Model):
    """An OPC-UA server the agent subscribes to."""

    kind: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    security: OpcUaSecurity = OpcUaSecurity()
    publishing_interval_ms: int = Field(1000, ge=10)
    batch_size: int = Field(500, ge=1, le=10_000)
    timeout_s: float = Field(10.0, gt=0)


class MqttSource(_Model):
    """An MQTT broker carrying plain JSON telemetry or Sparkplug B."""

    kind: Literal["mqtt"]
    url: str | None = Field(None, pattern=r"^mqtts?://")
    format: Literal["json", "sparkplug"] = "json"
    protocol: Literal["auto", "5", "3.1.1"] = Field("auto", description="MQTT version; auto tries 5, then 3.1.1")
    username: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    client_id: str | None = None


Source = Annotated[OpcUaSource | MqttSource, Field(discriminator="kind")]


class Deadband(_Model):
    """OPC-UA data-change deadband."""

    kind: Literal["absolute", "percent"] = "absolute"
    value: float = Field(ge=0)


class OpcUaBinding(_Model):
    """Where one property comes from on an OPC-UA server."""

    source: Ident
    node_id: str
    mode: Literal["subscribe", "poll"] = "subscribe"
    sampling_ms: int = Field(1000, ge=0)
    queue_size: int = Field(10, ge=1)
    deadband: Deadband | None = None
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0


class MqttBinding(_Model):
    """Where one property comes from on an MQTT broker (JSON topic or Sparkplug metric)."""

    source: Ident
    topic: str | None = None
    path: str | None = Field(None, description="dotted JSON path of the value, e.g. 'data.temp'")
    ts_path: str | None = Field(None, description="dotted JSON path of the source timestamp")
    metric: str | None = Field(None, description="Sparkplug metric name")
    device: str | None = Field(None, description="Sparkplug 'group/edge_node[/device]'")
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    command_topic: str | None = Field(None, description="writable JSON properties: the topic a write goes to")
    command_field: str = Field("value", description="the JSON field of the written value on command_topic")

    @model_validator(mode="after")
    def _topic_or_metric(self) -> MqttBinding:
        if not self.topic and not (self.metric and self.device):
            raise ValueError("an MQTT binding needs 'topic' (JSON) or 'device' and 'metric' (Sparkplug B)")
        return self


def _binding_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "opcua" if "node_id" in v else "mqtt"
    return "opcua" if isinstance(v, OpcUaBinding) else "mqtt"


Binding = Annotated[
    Annotated[OpcUaBinding, Tag("opcua")] | Annotated[MqttBinding, Tag("mqtt")],
    Discriminator(_binding_kind),
]


class Node(_Model):
    """A node of the plant hierarchy; machines and components carry a type and bindings."""

    id: Ident
    kind: NodeKind
    name: str = ""
    type: Ident | None = None
    criticality: Criticality = Criticality.MEDIUM
    attributes: dict[str, str | int | float | bool] = {}
    bindings: dict[Ident, Binding] = {}
    gateway: str | None = Field(
        None,
        pattern=GATEWAY_ID_PATTERN,
        description="the gateway that owns this node and its subtree: only its uplink may write their values",
    )
    children: list[Node] = []

    @property
    def display_name(self) -> str:
        """The name shown to people: ``name`` or else the id."""
        return self.name or self.id


class SiteInfo(_Model):
    """The plant itself."""

    id: Ident
    name: str = ""
    timezone: str = "UTC"


class Site(_Model):
    """A whole site file, validated; node ids are unique and every reference resolves."""

    site: SiteInfo
    sources: dict[Ident, Source] = {}
    asset_types: dict[Ident, AssetType] = {}
    nodes: list[Node]

    @model_validator(mode="after")
    def _references_resolve(self) -> Site:
        seen: set[str] = set()
        for path, node, parent in self._walk_with_paths():
            if node.id in seen:
                raise ValueError(f"{path}: node id {node.id!r} is used twice")
            seen.add(node.id)
            if parent is None and node.kind != NodeKind.SITE:
                raise ValueError(f"{path}: top-level nodes must be of kind 'site', not {node.kind!r}")
            if parent is not None and node.kind not in _CHILD_KINDS[parent.kind]:
                raise ValueError(f"{path}: a {parent.kind} cannot contain a {node.kind}")
            self._check_bindings(path, node)
        return self

    def _check_bindings(self, path: str, node: Node) -> None:
        if node.type is None:
            if node.bindings:
                raise ValueError(f"{path}: bindings need a 'type' on the node")
            return
        atype = self.asset_types.get(node.type)
        if atype is None:
            raise ValueError(f"{path}.type: unknown asset type {node.type!r}")
        for prop, binding in node.bindings.items():
            if prop not in atype.properties:
                raise ValueError(f"{path}.bindings.{prop}: asset type {node.type!r} has no property {prop!r}")
            source = self.sources.get(binding.source)
            if source is None:
                raise ValueError(f"{path}.bindings.{prop}.source: unknown source {binding.source!r}")
            if isinstance(binding, OpcUaBinding) != isinstance(source, OpcUaSource):
                raise ValueError(
                    f"{path}.bindings.{prop}: binding kind does not match source {binding.source!r} ({source.kind})"
                )
            writable = atype.properties[prop].writable is not None
            if writable and isinstance(binding, MqttBinding) and not (binding.command_topic or binding.metric):
                raise ValueError(f"{path}.bindings.{prop}: a writable MQTT property needs 'command_topic'"
                                 " (JSON) or 'metric' (Sparkplug B)")

    def _walk_with_paths(self) -> Iterator[tuple[str, Node, Node | None]]:
        stack: list[tuple[str, Node, Node | None]] = [
            (f"nodes[{i}]", n, None) for i, n in reversed(list(enumerate(self.nodes)))
        ]
        while stack:
            path, node, parent = stack.pop()
            yield path, node, parent
            for i, child in reversed(list(enumerate(node.children))):
                stack.append((f"{path}.children[{i}]", child, node))

    def walk(self) -> Iterator[tuple[Node, Node | None]]:
        """Every node with its parent, depth first, parents before children."""
        for _, node, parent in self._walk_with_paths():
            yield node, parent

    def node(self, node_id: str) -> Node:
        """The node with this id; KeyError if none."""
        for n, _ in self.walk():
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def owners(self) -> dict[str, str | None]:
        """Each node's owning gateway: its own ``gateway``, else its nearest ancestor's; None for no owner."""
        owner: dict[str, str | None] = {}
        for node, parent in self.walk():
            owner[node.id] = node.gateway or (owner[parent.id] if parent is not None else None)
        return owner

    def assets(self) -> Iterator[Node]:
        """Nodes that have an asset type (machines and typed components)."""
        return (n for n, _ in self.walk() if n.type is not None)

    def property_def(self, node_id: str, prop: str) -> PropertyDef:
        """The definition of ``prop`` on node ``node_id``; KeyError if either is unknown."""
        node = self.node(node_id)
        if node.type is None:
            raise KeyError(f"{node_id}.{prop}")
        return self.asset_types[node.type].properties[prop]

    def writable(self, node_id: str, prop: str) -> tuple[PropertyDef, Writable, Binding]:
        """The property, its write rules and its binding; KeyError naming what is missing."""
        pdef = self.property_def(node_id, prop)
        if pdef.writable is None:
            raise KeyError(f"{node_id}.{prop} is not writable")
        binding = self.node(node_id).bindings.get(prop)
        if binding is None:
            raise KeyError(f"{node_id}.{prop} has no binding to write to")
        return pdef, pdef.writable, binding


def parse_site(text: str, origin: str = "<string>") -> Site:
    """Validate a site from YAML text; ``origin`` names it in errors."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SiteError(f"{origin}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise SiteError(f"{origin}: a site file must be a mapping with 'site' and 'nodes'")
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        raise SiteError(_describe(exc, root, origin)) from None


def load_site(path: str | Path) -> Site:
    """Read and validate a site file; raises SiteError naming the file, line and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteError(f"{p}: cannot read site file: {exc.strerror}") from exc
    return parse_site(text, str(p))


def _describe(exc: ValidationError, root: yaml.Node | None, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
        msg = err["msg"].removeprefix("Value error, ")
        model_path = _path_in_message(msg)
        if model_path is not None:
            loc = model_path
            msg = msg.split(": ", 1)[1]
        line = _line_of(root, loc)
        where = f"{origin}:{line}" if line else origin
        lines.append(f"{where}: {_fmt_loc(loc) or '(top)'}: {msg}")
    return "invalid site file\n  " + "\n  ".join(lines)


_UNION_TAGS = {"opcua", "mqtt"}
_PATH_RE = re.compile(r"^((?:nodes\[\d+\])(?:\.children\[\d+\])*(?:\.[A-Za-z_][\w\-]*)*): ")


def _path_in_message(msg: str) -> list[str | int] | None:
    m = _PATH_RE.match(msg)
    if not m:
        return None
    out: list[str | int] = []
    for part in re.findall(r"[A-Za-z_][\w\-]*|\[\d+\]", m.group(1)):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out


def _fmt_loc(loc: list[Any] | tuple[Any, ...]) -> str:
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _line_of(root: yaml.Node | None, loc: list[Any] | tuple[Any, ...]) -> int | None:
    node = root
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        best = node.start_mark.line + 1
    return best


def is_finite_number(v: object) -> bool:
    """True for int/float values that are neither NaN nor infinite (bool excluded)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
