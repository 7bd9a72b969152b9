"""List an OPC-UA server's variables (node id, browse path, data type, unit), to help write a site model."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from asyncua import Client, ua

from edge_agent.connectors.opcua_session import connect_client, translate_error
from plant.site import OpcUaSecurity, OpcUaSource

_PROPERTY_TYPE = ua.NodeId(ua.ObjectIds.PropertyType)
_SERVER_OBJECT = ua.NodeId(ua.ObjectIds.Server)
_BATCH = 200


@dataclass(frozen=True, slots=True)
class VariableInfo:
    """One variable found on the server.

    Args:
        node_id: the node id as the site model wants it (``ns=2;s=engine-1.t2``).
        path: browse path from the Objects folder, ``ns:Name`` parts joined by ``/``.
        dtype: name of the data type (``Double``, ``Int32``, ...).
        unit: display name of the EngineeringUnits property, or empty.
    """

    node_id: str
    path: str
    dtype: str
    unit: str


async def browse_variables(
    url: str,
    *,
    timeout_s: float = 10.0,
    max_nodes: int = 10_000,
    include_server: bool = False,
    security: OpcUaSecurity | None = None,
    password: str | None = None,
) -> list[VariableInfo]:
    """Walk the server's address space from the Objects folder; ConnectorError if it cannot be reached."""
    source = OpcUaSource(
        kind="opcua", endpoint=url, security=security or OpcUaSecurity(), timeout_s=timeout_s
    )
    client = await connect_client(source, password)
    try:
        return await asyncio.wait_for(_walk(client, max_nodes, include_server), timeout_s * 10)
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise translate_error(exc, url) from exc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2.0)


async def _walk(client: Client, max_nodes: int, include_server: bool) -> list[VariableInfo]:
    queue: deque[tuple[ua.NodeId, str]] = deque([(ua.NodeId(ua.ObjectIds.ObjectsFolder), "")])
    variables: list[tuple[ua.NodeId, str]] = []
    units: dict[ua.NodeId, ua.NodeId] = {}  # variable → its EngineeringUnits property
    visited = 0
    while queue and visited < max_nodes:
        parent, path = queue.popleft()
        visited += 1
        refs = await client.get_node(parent).get_children_descriptions()
        for ref in refs:
            child = ref.NodeId
            name = f"{ref.BrowseName.NamespaceIndex}:{ref.BrowseName.Name}"
            child_path = f"{path}/{name}" if path else name
            if ref.NodeClass == ua.NodeClass.Variable and ref.TypeDefinition == _PROPERTY_TYPE:
                if ref.BrowseName.Name == "EngineeringUnits":
                    units[parent] = child
                continue
            if child == _SERVER_OBJECT and not include_server:
                continue
            if ref.NodeClass == ua.NodeClass.Variable:
                variables.append((child, child_path))
            if ref.NodeClass in (ua.NodeClass.Variable, ua.NodeClass.Object):
                queue.append((child, child_path))
    types = await _type_names(client, [v for v, _ in variables])
    unit_text = await _unit_names(client, units)
    return [
        VariableInfo(node.to_string(), path, types.get(node, ""), unit_text.get(node, ""))
        for node, path in variables
    ]


async def _read(client: Client, nodes: list[ua.NodeId], attr: ua.AttributeIds) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for start in range(0, len(nodes), _BATCH):
        out.extend(await client.uaclient.read_attributes(nodes[start : start + _BATCH], attr))
    return out


async def _type_names(client: Client, nodes: list[ua.NodeId]) -> dict[ua.NodeId, str]:
    dtypes = await _read(client, nodes, ua.AttributeIds.DataType)
    ids = {dv.Value.Value for dv in dtypes if dv.Value is not None and dv.Value.Value is not None}
    names: dict[ua.NodeId, str] = {}
    for dt_id in ids:
        known = ua.ObjectIdNames.get(dt_id.Identifier) if dt_id.NamespaceIndex == 0 else None
        if known is None:
            with contextlib.suppress(ua.UaError):
                known = (await client.get_node(dt_id).read_browse_name()).Name
        names[dt_id] = known or dt_id.to_string()
    return {
        node: names.get(dv.Value.Value, "") if dv.Value is not None else ""
        for node, dv in zip(nodes, dtypes, strict=True)
    }


async def _unit_names(client: Client, units: dict[ua.NodeId, ua.NodeId]) -> dict[ua.NodeId, str]:
    owners = list(units)
    values = await _read(client, [units[o] for o in owners], ua.AttributeIds.Value)
    out: dict[ua.NodeId, str] = {}
    for owner, dv in zip(owners, values, strict=True):
        eu = dv.Value.Value if dv.Value is not None else None
        text = getattr(getattr(eu, "DisplayName", None), "Text", None)
        if text:
            out[owner] = str(text)
    return out
