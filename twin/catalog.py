"""The twin's property catalog held in memory: which (node, property) pairs exist, their ids and data types.

Apply looks every incoming value up here instead of in the database. The catalog is reloaded when the site
is synchronised and, at most once per ``refresh_s``, when a batch names a pair it does not know (another
process may have synchronised the site).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, select

from twin.tables import TwinNode, TwinProperty


@dataclass(frozen=True, slots=True)
class PropInfo:
    """One live property of the twin.

    Args:
        id: primary key of the property row (history rows point to it).
        node: id of the node the property belongs to.
        name: property name.
        dtype: ``float``, ``int``, ``bool`` or ``string``.
        low: the least plausible number: the declared range's low end less the catalog's margin (-inf: none).
        high: the greatest plausible number (inf: none).
    """

    id: int
    node: str
    name: str
    dtype: str
    low: float = -math.inf
    high: float = math.inf


class Catalog:
    """The live nodes and properties, thread-safe, reloaded on demand.

    Args:
        refresh_s: the least time between two reloads triggered by unknown names.
        range_margin: spans of its declared range a number may lie outside it and still be plausible (a real
            excursion, the reason alerts exist, stays well within; 1e300 from a broken sensor does not).
    """

    def __init__(self, refresh_s: float = 1.0, range_margin: float = 10.0) -> None:
        self.refresh_s = refresh_s
        self.range_margin = range_margin
        self._lock = threading.Lock()
        self._props: dict[tuple[str, str], PropInfo] = {}
        self._by_id: dict[int, PropInfo] = {}
        self._nodes: set[str] = set()
        self._retired_nodes: set[str] = set()
        self._retired_props: set[tuple[str, str]] = set()
        self._loaded_at: float | None = None

    @property
    def loaded(self) -> bool:
        """Whether the catalog holds a loaded copy."""
        return self._loaded_at is not None

    def invalidate(self) -> None:
        """Forget everything; the next apply reloads."""
        with self._lock:
            self._loaded_at = None

    def load(self, conn: Connection) -> None:
        """Read nodes and properties from the database, replacing what is held."""
        nodes = conn.execute(select(TwinNode.id, TwinNode.retired_at)).all()
        props = conn.execute(
            select(TwinProperty.id, TwinProperty.node_id, TwinProperty.name, TwinProperty.dtype,
                   TwinProperty.retired_at, TwinProperty.range_low, TwinProperty.range_high)
        ).all()
        live_nodes = {n.id for n in nodes if n.retired_at is None}
        by_key: dict[tuple[str, str], PropInfo] = {}
        retired_props: set[tuple[str, str]] = set()
        for p in props:
            if p.retired_at is None and p.node_id in live_nodes:
                low, high = self._plausible(p.range_low, p.range_high)
                by_key[(p.node_id, p.name)] = PropInfo(p.id, p.node_id, p.name, p.dtype, low, high)
            else:
                retired_props.add((p.node_id, p.name))
        with self._lock:
            self._props = by_key
            self._by_id = {p.id: p for p in by_key.values()}
            self._nodes = live_nodes
            self._retired_nodes = {n.id for n in nodes if n.retired_at is not None}
            self._retired_props = retired_props
            self._loaded_at = time.monotonic()

    def _plausible(self, low: float | None, high: float | None) -> tuple[float, float]:
        if low is None or high is None or not high > low:
            return -math.inf, math.inf
        slack = (high - low) * self.range_margin
        return low - slack, high + slack

    def may_refresh(self) -> bool:
        """Whether a reload for an unknown name is allowed now (rate limit)."""
        return self._loaded_at is None or time.monotonic() - self._loaded_at >= self.refresh_s

    def add(self, info: PropInfo) -> None:
        """Add one property created outside a site sync (diagnosis properties)."""
        with self._lock:
            # copy on write: views handed out earlier stay unchanged
            self._props = {**self._props, (info.node, info.name): info}
            self._by_id = {**self._by_id, info.id: info}

    def snapshot(self) -> CatalogView:
        """A consistent read-only view for one apply."""
        with self._lock:
            return CatalogView(self._props, self._by_id, self._nodes, self._retired_nodes,
                               self._retired_props)


@dataclass(frozen=True, slots=True)
class CatalogView:
    """The catalog as it was when one apply started.

    Args:
        props: live properties by (node, name).
        by_id: live properties by id.
        nodes: ids of live nodes.
        retired_nodes: ids of nodes removed from the site file.
        retired_props: (node, name) of properties removed from their asset type.
    """

    props: dict[tuple[str, str], PropInfo]
    by_id: dict[int, PropInfo]
    nodes: set[str]
    retired_nodes: set[str]
    retired_props: set[tuple[str, str]]
