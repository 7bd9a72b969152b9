"""The simulated OPC-UA server: one variable per bound signal, all of a tick's values written in one batch.

Address space: the namespace ``urn:factory-twin:simulator`` is registered first, so it gets index 2 and the
site's node ids (``ns=2;s=engine-1.t2``) resolve. Under Objects there is one object per machine
(``ns=2;s=engine-1``) holding its variables. Each variable has its property's DataType (Double, Int32, Boolean
or String); numeric ones are ``AnalogUnitType`` with an ``EngineeringUnits`` property (UNECE code where one is
known, else UnitId -1 and the unit's text) and, when the property has a range, an ``EURange``. Variables are
read-only, except a machine's setpoints (``ServedVariable.initial``): clients may write those, the replay never does,
and ``value`` reads what was written.

Timestamps: the SourceTimestamp is the device's clock (``SourceClock``: skewed or reset when asked), the
ServerTimestamp the simulator's own wall clock, as a gateway server in front of a PLC reports them.
Security mode None only: the simulator is a test fixture, not a plant.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStringParsingError

from factory_twin.simulator.errors import EndpointError, ScenarioError
from factory_twin.simulator.plan import ServedVariable
from plant.site import DataType
from plant.wire import Scalar

log = structlog.get_logger(__name__)

NAMESPACE_URI = "urn:factory-twin:simulator"
NAMESPACE_INDEX = 2  # 0 is OPC UA's own namespace, 1 the server's application URI, ours comes next
APPLICATION_URI = "urn:factory-twin:simulator:server"
_CEFACT_URI = "http://www.opcfoundation.org/UA/units/un/cefact"

_VARIANT = {
    DataType.FLOAT: ua.VariantType.Double,
    DataType.INT: ua.VariantType.Int32,
    DataType.BOOL: ua.VariantType.Boolean,
    DataType.STRING: ua.VariantType.String,
}
_INITIAL: dict[DataType, Scalar] = {
    DataType.FLOAT: 0.0,
    DataType.INT: 0,
    DataType.BOOL: False,
    DataType.STRING: "",
}

# UNECE Recommendation 20 common codes of the units the example plant uses (OPC UA Part 8, EUInformation).
_UNECE = {
    "K": ("KEL", "kelvin"),
    "°C": ("CEL", "degree Celsius"),
    "°R": ("A48", "degree Rankine"),
    "rpm": ("RPM", "revolutions per minute"),
    "N·m": ("NU", "newton metre"),
    "min": ("MIN", "minute [unit of time]"),
    "A": ("AMP", "ampere"),
    "V": ("VLT", "volt"),
    "bar": ("BAR", "bar [unit of pressure]"),
    "kPa": ("KPA", "kilopascal"),
    "psia": ("PS", "pound-force per square inch"),
    "l/min": ("L2", "litre per minute"),
}


def engineering_units(unit: str) -> ua.EUInformation:
    """The OPC-UA EUInformation of a unit text: its UNECE code where known, else UnitId -1."""
    code = _UNECE.get(unit)
    if code is None:
        return ua.EUInformation(
            NamespaceUri=_CEFACT_URI,
            UnitId=-1,
            DisplayName=ua.LocalizedText(unit),
            Description=ua.LocalizedText(unit),
        )
    unit_id = 0
    for ch in code[0]:  # Part 8: the code's characters packed into an Int32, first character highest
        unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=_CEFACT_URI,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(code[1]),
    )


class OpcUaSimServer:
    """An asyncua server at ``endpoint`` serving ``signals``; ``write`` sets a tick's values in one batch,
    ``value`` reads one (a setpoint a client wrote).

    Args:
        endpoint: the ``opc.tcp://host:port/path`` URL to listen on.
        signals: the variables to create; their node ids must be in namespace index 2.
        name: the server's application name.
    """

    def __init__(
        self, endpoint: str, signals: Sequence[ServedVariable], *, name: str = "factory-twin simulator"
    ) -> None:
        self.endpoint = endpoint
        self._signals = list(signals)
        self._name = name
        self._server: Server | None = None
        self._types: dict[str, DataType] = {s.node_id: s.pdef.dtype for s in self._signals}
        self._node_ids: dict[str, ua.NodeId] = {}
        self._writes: dict[str, ua.WriteValue] = {}
        self.written = 0
        self.rejected = 0

    async def __aenter__(self) -> OpcUaSimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Build the address space and listen; EndpointError if the endpoint cannot be served."""
        node_ids = {s.node_id: _parse_node_id(s, NAMESPACE_INDEX) for s in self._signals}  # fail before init
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self._name)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])  # no credentials to send in the clear
        server.set_force_server_timestamp(False)  # keep the timestamps write() sets
        await server.set_application_uri(APPLICATION_URI)
        idx = await server.register_namespace(NAMESPACE_URI)
        if idx != NAMESPACE_INDEX:  # a newer asyncua with more built-in namespaces would move ours
            raise ScenarioError(f"namespace {NAMESPACE_URI} got index {idx}, not {NAMESPACE_INDEX}")
        self._node_ids = node_ids
        self._writes = {
            key: ua.WriteValue(NodeId=nid, AttributeId=AttributeIds.Value) for key, nid in node_ids.items()
        }
        await self._build(server, idx)
        try:
            await server.start()
        except OSError as exc:
            reason = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise EndpointError(f"cannot serve OPC-UA at {self.endpoint}: {reason}") from exc
        self._server = server
        log.info("simulator_opcua_started", endpoint=self.endpoint, variables=len(self._signals))

    async def stop(self) -> None:
        """Stop listening; clients see the connection close."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def write(self, values: Mapping[str, Scalar], source_ts: datetime) -> int:
        """Set node id → value, stamped ``source_ts``, in one write; returns how many the server took."""
        if self._server is None:
            raise EndpointError(f"OPC-UA server at {self.endpoint} is not running")
        server_ts = cast(Any, datetime.now(UTC))  # asyncua types timestamps as its datetime subclass
        stamp = cast(Any, source_ts)
        items: list[ua.WriteValue] = []
        for node_id, value in values.items():
            item = self._writes.get(node_id)
            if item is None:
                raise ScenarioError(f"{node_id} is not served at {self.endpoint}")
            dtype = self._types[node_id]
            # The WriteValue is reused (the server keeps only its DataValue): one object fewer per value.
            item.Value = ua.DataValue(
                Value=ua.Variant(_coerce(value, dtype), _VARIANT[dtype]),
                SourceTimestamp=stamp,
                ServerTimestamp=server_ts,
            )
            items.append(item)
        if not items:
            return 0
        results = await self._server.iserver.isession.write(ua.WriteParameters(NodesToWrite=items))
        bad = [
            (item.NodeId.to_string(), r.name)
            for item, r in zip(items, results, strict=True)
            if not r.is_good()
        ]
        if bad:
            self.rejected += len(bad)
            log.warning("simulator_opcua_write_rejected", count=len(bad), first=bad[0])
        self.written += len(items) - len(bad)
        return len(items) - len(bad)

    def value(self, node_id: str) -> Scalar | None:
        """The value a variable holds now (None when it has none, or the server is not running)."""
        nid = self._node_ids.get(node_id)
        if self._server is None or nid is None:
            return None
        dv = self._server.read_attribute_value(nid)
        value = dv.Value.Value if dv.Value is not None else None
        return value if isinstance(value, int | float | bool | str) else None

    async def _build(self, server: Server, idx: int) -> None:
        machines: dict[str, Node] = {}
        items: list[ua.AddNodesItem] = []
        for signal in self._signals:
            node_id = self._node_ids[signal.node_id]
            if signal.machine not in machines:
                machines[signal.machine] = await server.nodes.objects.add_object(
                    _node_id(signal.machine, idx), ua.QualifiedName(signal.machine, idx)
                )
            items.extend(_variable_items(machines[signal.machine].nodeid, node_id, signal, idx))
        results = await server.iserver.isession.add_nodes(items)
        for item, result in zip(items, results, strict=True):
            if not result.StatusCode.is_good():
                raise ScenarioError(
                    f"cannot create OPC-UA node {item.RequestedNewNodeId}: {result.StatusCode.name}"
                )


def _parse_node_id(signal: ServedVariable, idx: int) -> ua.NodeId:
    where = f"{signal.machine}.{signal.prop}"
    try:
        node_id = ua.NodeId.from_string(signal.node_id)
    except (ValueError, UaStringParsingError) as exc:
        raise ScenarioError(f"{where}: node id {signal.node_id!r} does not parse: {exc}") from None
    if node_id.NamespaceIndex != idx:
        raise ScenarioError(
            f"{where}: node id {signal.node_id!r}: the simulator serves namespace index {idx} only"
        )
    return node_id


def _variable_items(
    parent: ua.NodeId, node_id: ua.NodeId, signal: ServedVariable, idx: int
) -> list[ua.AddNodesItem]:
    pdef = signal.pdef
    numeric = pdef.dtype in (DataType.FLOAT, DataType.INT)
    if numeric and signal.unit:
        type_def = ObjectIds.AnalogUnitType
    elif numeric:
        type_def = ObjectIds.BaseAnalogType
    else:
        type_def = ObjectIds.BaseDataVariableType
    initial = _INITIAL[pdef.dtype] if signal.initial is None else _coerce(signal.initial, pdef.dtype)
    variable = _item(
        parent,
        node_id,
        ua.QualifiedName(signal.prop, idx),
        ua.Variant(initial, _VARIANT[pdef.dtype]),
        type_def=type_def,
        data_type=_VARIANT[pdef.dtype].value,  # built-in types: the VariantType number is the DataType id
        description=pdef.description or signal.prop,
        writable=signal.initial is not None,
    )
    items = [variable]
    if numeric and signal.unit:
        eu = ua.Variant(engineering_units(signal.unit), ua.VariantType.ExtensionObject)
        items.append(_property(node_id, "EngineeringUnits", eu, ObjectIds.EUInformation))
    if numeric and pdef.range is not None:
        rng = ua.Variant(ua.Range(Low=pdef.range[0], High=pdef.range[1]), ua.VariantType.ExtensionObject)
        items.append(_property(node_id, "EURange", rng, ObjectIds.Range))
    return items


def _property(parent: ua.NodeId, name: str, value: ua.Variant, data_type: int) -> ua.AddNodesItem:
    # Standard property names (EngineeringUnits, EURange) live in namespace 0.
    node_id = _node_id(f"{parent.Identifier!s}.{name}", parent.NamespaceIndex)
    return _item(
        parent,
        node_id,
        ua.QualifiedName(name, 0),
        value,
        type_def=ObjectIds.PropertyType,
        data_type=data_type,
        description=name,
        reference=ObjectIds.HasProperty,
    )


def _item(
    parent: ua.NodeId,
    node_id: ua.NodeId,
    name: ua.QualifiedName,
    value: ua.Variant,
    *,
    type_def: int,
    data_type: int,
    description: str,
    reference: int = ObjectIds.HasComponent,
    writable: bool = False,
) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name.Name)
    attrs.Description = ua.LocalizedText(description)
    attrs.DataType = _node_id(data_type)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = name
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = _node_id(reference)
    item.TypeDefinition = _node_id(type_def)
    item.NodeAttributes = attrs
    return item


def _node_id(identifier: str | int, namespace: int = 0) -> ua.NodeId:
    # asyncua annotates NodeId's fields with its own int and str subclasses; plain values are what it takes.
    return ua.NodeId(cast(Any, identifier), cast(Any, namespace))


def _coerce(value: Scalar, dtype: DataType) -> Scalar:
    """The value as the Python type the variable's Variant needs (a fault may give a float for an Int32)."""
    if dtype == DataType.FLOAT:
        return float(value)
    if dtype == DataType.INT:
        return int(value)
    if dtype == DataType.BOOL:
        return bool(value)
    return str(value)
