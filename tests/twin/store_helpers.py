"""Shared pieces of the store, site-sync and ingest tests: a small plant, batches, a ready store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from plant.site import Site, parse_site
from plant.wire import UplinkBatch, Value
from twin.config import TwinSettings
from twin.db import make_engine
from twin.store import TwinStore
from twin.tables import Base, HistoryRow, TwinProperty

SITE_YAML = """
site: {id: plant}
asset_types:
  pump:
    properties:
      temp: {unit: degC, range: [0, 120]}
      count: {dtype: int}
      running: {dtype: bool}
      mode: {dtype: string}
nodes:
  - id: plant
    kind: site
    children:
      - id: hall
        kind: area
        children:
          - {id: p1, kind: machine, type: pump, attributes: {vendor: acme}}
          - {id: p2, kind: machine, type: pump}
"""

NOW = 1_750_000_000_000_000  # µs, June 2025
SEC = 1_000_000


def site(text: str = SITE_YAML) -> Site:
    """The test plant (or another site text)."""
    return parse_site(text, "test-site.yaml")


def make_store(url: str, plant: Site | None = None) -> TwinStore:
    """A store on a fresh schema with the test plant loaded."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    store = TwinStore(engine, TwinSettings())
    store.sync_site(plant or site())
    return store


def value(node: str = "p1", prop: str = "temp", v: Any = 20.5, ts: int = NOW, **kw: Any) -> Value:
    """One value (validated like a decoded one)."""
    return Value(node=node, prop=prop, value=v, ts=ts, **kw)


def batch(*values: Value, name: str = "b1", gateway: str = "gw1", **kw: Any) -> UplinkBatch:
    """A batch of these values (and frames or diagnoses given as keywords)."""
    return UplinkBatch(gateway=gateway, batch=name, sent=NOW, values=list(values), **kw)


def history_count(engine: Engine) -> int:
    """Rows in the history table."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(HistoryRow)).scalar_one())


def prop(engine: Engine, node: str, name: str) -> TwinProperty:
    """A property row with its latest state."""
    with Session(engine) as session:
        return session.scalars(
            select(TwinProperty).where(TwinProperty.node_id == node, TwinProperty.name == name)
        ).one()
