"""Load a site model into the twin: nodes and properties created or updated to match the file, idempotently.

Each asset type's view for people (key signals, alarm limits, models) is kept in ``twin_asset_types`` for the
dashboard, replaced at every sync.

A node removed from the site file is not deleted: its history and diagnoses stay readable. It is marked
retired (``retired_at``) and refuses new values (reason ``retired``) until a site file brings it back. Only
nodes under the file's top-level nodes are retired: another site's file, loaded into the same twin, describes
other subtrees, and loading one leaves the other's nodes (and the asset types they use) alone. The
same holds for a property removed from its asset type. Diagnosis properties (``diag.<task>.<field>``) are
created by the store, not the site file, and are never retired here.

Each file's model is kept in ``twin_sites`` (by its ``site.id``), so the alert leader judges every site's
values by that site's rules whichever process leads; each site file needs its own ``site.id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from plant.site import AssetType, Node, PropertyDef, Site
from plant.wire import now_us
from twin import audit
from twin.commands import writable_spec
from twin.db import make_sessionmaker
from twin.tables import AssetTypeRecord, TwinNode, TwinProperty, TwinSite

log = structlog.get_logger(__name__)

DIAGNOSIS_PREFIX = "diag."
SITE_ACTOR = "site file"  # who the audit trail names for a change the site file made


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What a site sync changed.

    Args:
        nodes_created: nodes new to the twin.
        nodes_updated: nodes whose place, name, type or attributes changed (or that came back).
        nodes_retired: nodes no longer in the site file.
        props_created: properties new to the twin.
        props_updated: properties whose unit, type, range or description changed (or that came back).
        props_retired: properties no longer in their asset type.
    """

    nodes_created: int = 0
    nodes_updated: int = 0
    nodes_retired: int = 0
    props_created: int = 0
    props_updated: int = 0
    props_retired: int = 0

    @property
    def changed(self) -> bool:
        """Whether anything changed."""
        return any((self.nodes_created, self.nodes_updated, self.nodes_retired,
                    self.props_created, self.props_updated, self.props_retired))


def sync_site(engine: Engine, site: Site, now: int | None = None) -> SyncReport:
    """Make the twin's nodes and properties match ``site``; a second run changes nothing."""
    stamp = now if now is not None else now_us()
    with make_sessionmaker(engine).begin() as session:
        counts = _Counts()
        nodes = {n.id: n for n in session.scalars(select(TwinNode))}
        seen_nodes = _sync_nodes(session, site, nodes, counts)
        session.flush()
        props = {(p.node_id, p.name): p for p in session.scalars(select(TwinProperty))}
        seen_props = _sync_properties(session, site, props, counts)
        roots = tuple(f"/{n.id}/" for n in site.nodes)  # the subtrees this file describes; other sites' are not
        for node_id, row in nodes.items():
            if node_id not in seen_nodes and row.retired_at is None and row.path.startswith(roots):
                row.retired_at = stamp
                counts.nodes_retired += 1
        for key, prop in props.items():
            retire = key not in seen_props and not prop.name.startswith(DIAGNOSIS_PREFIX)
            if retire and prop.retired_at is None and key[0] in seen_nodes:
                prop.retired_at = stamp
                counts.props_retired += 1
        elsewhere = {n.type for n in nodes.values() if n.type and not n.path.startswith(roots)}
        _sync_asset_types(session, site, stamp, keep=elsewhere)
        _store_model(session, site, stamp)
        if any(vars(counts).values()):  # the plant's model changed: in the audit trail, with what changed
            audit.record(session, SITE_ACTOR, "site.reload", f"site:{site.site.id}", after=dict(vars(counts)),
                         address="local")
    report = SyncReport(**vars(counts))
    log.info("site_synchronised", site=site.site.id, **vars(counts))
    return report


class _Counts:
    def __init__(self) -> None:
        self.nodes_created = self.nodes_updated = self.nodes_retired = 0
        self.props_created = self.props_updated = self.props_retired = 0


def _store_model(session: Session, site: Site, stamp: int) -> None:
    model = site.model_dump(mode="json", by_alias=True)
    row = session.get(TwinSite, site.site.id)
    if row is None:
        session.add(TwinSite(id=site.site.id, model=model, updated_at=stamp))
    elif row.model != model:
        row.model, row.updated_at = model, stamp


def stored_sites(session: Session) -> list[Site]:
    """Every site's model as last loaded; one this version cannot read any more is left out (with a warning)
    until its file is loaded again."""
    sites: list[Site] = []
    for row in session.scalars(select(TwinSite).order_by(TwinSite.id)):
        try:
            sites.append(Site.model_validate(row.model))
        except ValidationError as exc:
            log.warning("stored_site_unreadable", hint="load its site file again", site=row.id,
                        error=str(exc).splitlines()[0])
    return sites


def sites_mark(session: Session) -> tuple[int, int]:
    """A mark of the stored site models that changes whenever one is added or loaded changed."""
    count, newest = session.execute(select(func.count(), func.max(TwinSite.updated_at))).one()
    return int(count), int(newest or 0)


def _sync_nodes(session: Session, site: Site, rows: dict[str, TwinNode], counts: _Counts) -> set[str]:
    seen: set[str] = set()
    owners = site.owners()
    paths: dict[str, str] = {}
    positions: dict[str | None, int] = {}
    existing: list[tuple[TwinNode, dict[str, Any]]] = []
    for node, parent in site.walk():
        parent_id = parent.id if parent else None
        path = f"{paths[parent_id] if parent_id else '/'}{node.id}/"
        paths[node.id] = path
        position = positions.get(parent_id, 0)
        positions[parent_id] = position + 1
        wanted = _node_fields(node, parent_id, path, position) | {"gateway": owners[node.id]}
        row = rows.get(node.id)
        if row is None:
            row = TwinNode(id=node.id, **wanted)
            session.add(row)
            rows[node.id] = row
            counts.nodes_created += 1
        else:
            existing.append((row, wanted))
        seen.add(node.id)
    # new nodes first: an existing node may move under one of them
    session.flush()
    counts.nodes_updated += sum(_assign(row, wanted) for row, wanted in existing)
    return seen


def _node_fields(node: Node, parent_id: str | None, path: str, position: int) -> dict[str, Any]:
    return {
        "parent_id": parent_id,
        "path": path,
        "kind": str(node.kind),
        "name": node.display_name,
        "type": node.type,
        "criticality": str(node.criticality),
        "attributes": dict(node.attributes),
        "position": position,
        "retired_at": None,
    }


def _sync_properties(
    session: Session, site: Site, rows: dict[tuple[str, str], TwinProperty], counts: _Counts
) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    for node in site.assets():
        assert node.type is not None  # assets() yields typed nodes only
        for name, pdef in site.asset_types[node.type].properties.items():
            key = (node.id, name)
            wanted = _property_fields(pdef)
            row = rows.get(key)
            if row is None:
                session.add(TwinProperty(node_id=node.id, name=name, flags="", **wanted))
                counts.props_created += 1
            elif _assign(row, wanted):
                counts.props_updated += 1
            seen.add(key)
    return seen


def _property_fields(pdef: PropertyDef) -> dict[str, Any]:
    low, high = pdef.range if pdef.range else (None, None)
    return {
        "unit": pdef.unit,
        "dtype": str(pdef.dtype),
        "range_low": low,
        "range_high": high,
        "description": pdef.description,
        "retired_at": None,
    }


def _assign(row: Any, wanted: dict[str, Any]) -> bool:
    changed = False
    for key, value in wanted.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed


def asset_type_spec(atype: AssetType) -> dict[str, Any]:
    """What people look at on an asset of this type: key signals, each property's alarm limits and rate limits."""
    limits: dict[str, list[dict[str, Any]]] = {}
    rates: dict[str, list[dict[str, Any]]] = {}
    for rule in atype.alerts:
        if rule.property is None or not rule.notify:
            continue
        if rule.kind == "limit":
            for name in ("hihi", "hi", "lo", "lolo"):
                value = getattr(rule, name)
                if value is not None:
                    limits.setdefault(rule.property, []).append(
                        {"rule": rule.id, "name": name.upper(), "value": value, "severity": str(rule.severity)}
                    )
        elif rule.kind == "rate":
            rates.setdefault(rule.property, []).append(
                {"rule": rule.id, "max_rate": rule.max_rate, "window_s": rule.window_s, "severity": str(rule.severity)}
            )
    key = list(atype.key_signals) or [p for p in limits if p in atype.properties][:2]
    spec: dict[str, Any] = {"key_signals": key, "models": list(atype.models), "limits": limits, "rates": rates}
    writable = {name: writable_spec(pdef) for name, pdef in atype.properties.items() if pdef.writable is not None}
    if writable:
        spec["writable"] = writable
    return spec


def _sync_asset_types(session: Session, site: Site, stamp: int, keep: set[str]) -> None:
    rows = {r.id: r for r in session.scalars(select(AssetTypeRecord))}
    for type_id, atype in site.asset_types.items():
        spec = asset_type_spec(atype)
        row = rows.pop(type_id, None)
        if row is None:
            session.add(AssetTypeRecord(id=type_id, description=atype.description, spec=spec, updated_at=stamp))
        elif row.spec != spec or row.description != atype.description:
            row.spec, row.description, row.updated_at = spec, atype.description, stamp
    for gone in rows.values():  # a view, not history: an asset type gone from the site goes with it
        if gone.id not in keep:  # unless another site's nodes use it
            session.delete(gone)
