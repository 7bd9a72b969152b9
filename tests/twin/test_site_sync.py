"""Loading a site file into the twin: idempotent, follows edits, keeps what was removed (retired)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from plant.site import load_site
from twin.db import make_engine
from twin.site_sync import sync_site
from twin.tables import AssetTypeRecord, Base, TwinNode, TwinProperty

from .store_helpers import NOW, SITE_YAML, batch, history_count, make_store, prop, site, value

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant.yaml"


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    return empty_engine


def _nodes(engine: Engine) -> dict[str, TwinNode]:
    with Session(engine) as s:
        return {n.id: n for n in s.scalars(select(TwinNode))}


def test_example_plant_loads_and_a_second_sync_changes_nothing(engine: Engine) -> None:
    plant = load_site(EXAMPLE)
    first = sync_site(engine, plant)
    assert first.nodes_created == sum(1 for _ in plant.walk())
    assert first.props_created == sum(
        len(plant.asset_types[n.type].properties) for n in plant.assets() if n.type)
    assert not sync_site(engine, plant).changed
    nodes = _nodes(engine)
    mill = nodes["mill-1"]
    assert mill.path.startswith("/demo-plant/")
    assert mill.path.endswith("/mill-1/")
    assert mill.type == "cnc_mill"
    assert mill.kind == "machine"
    torque = prop(engine, "mill-1", "torque")
    assert (torque.unit, torque.dtype, torque.range_low, torque.range_high) == ("N·m", "float", 0.0, 80.0)


def test_edits_are_followed(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    sync_site(engine, site())
    edited = (SITE_YAML.replace("vendor: acme", "vendor: globex")
              .replace("temp: {unit: degC, range: [0, 120]}", "temp: {unit: K, range: [273, 393]}"))
    report = sync_site(engine, site(edited))
    assert (report.nodes_updated, report.props_updated, report.nodes_created) == (1, 2, 0)
    assert _nodes(engine)["p1"].attributes == {"vendor": "globex"}
    assert prop(engine, "p2", "temp").unit == "K"
    engine.dispose()


def test_removed_nodes_and_properties_are_retired_with_their_history(sqlite_url: str) -> None:
    store = make_store(sqlite_url)
    store.apply(batch(value("p2", "temp", 1.0), value("p1", "mode", "auto")), now_us=NOW)
    store.apply(batch(value("p1", "temp", 2.0)), now_us=NOW)
    smaller = (SITE_YAML.replace("          - {id: p2, kind: machine, type: pump}\n", "")
               .replace("      mode: {dtype: string}\n", ""))
    report = sync_site(store.engine, site(smaller), now=NOW)
    assert (report.nodes_retired, report.props_retired) == (1, 1)  # p2 itself; p1.mode (p2's stay under p2)
    assert _nodes(store.engine)["p2"].retired_at == NOW
    assert prop(store.engine, "p1", "mode").retired_at == NOW
    assert prop(store.engine, "p1", "temp").retired_at is None
    assert history_count(store.engine) == 3  # nothing deleted
    assert not sync_site(store.engine, site(smaller)).changed
    back = sync_site(store.engine, site())  # the node and property come back
    assert (back.nodes_updated, back.props_updated) == (1, 1)
    assert _nodes(store.engine)["p2"].retired_at is None


def test_diagnosis_properties_are_not_retired(sqlite_url: str) -> None:
    store = make_store(sqlite_url)
    with Session(store.engine) as s, s.begin():
        s.add(TwinProperty(node_id="p1", name="diag.rul.rul", dtype="float", flags=""))
    assert not sync_site(store.engine, site()).changed
    assert prop(store.engine, "p1", "diag.rul.rul").retired_at is None


def test_moved_node_gets_new_parent_and_path(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    sync_site(engine, site())
    moved = SITE_YAML.replace(
        "          - {id: p2, kind: machine, type: pump}\n",
        "      - id: yard\n        kind: area\n        children:\n"
        "          - {id: p2, kind: machine, type: pump}\n",
    )
    report = sync_site(engine, site(moved))
    assert report.nodes_created == 1
    assert report.nodes_updated == 1
    p2 = _nodes(engine)["p2"]
    assert (p2.parent_id, p2.path, p2.position) == ("yard", "/plant/yard/p2/", 0)
    engine.dispose()


SECOND_SITE = """
site: {id: north}
asset_types:
  fan:
    properties:
      speed: {unit: rpm}
nodes:
  - id: north
    kind: site
    children:
      - id: roof
        kind: area
        children:
          - {id: f1, kind: machine, type: fan}
"""


def test_loading_one_site_leaves_another_sites_nodes_and_asset_types_alone(sqlite_url: str) -> None:
    store = make_store(sqlite_url)  # the test plant, site "plant"
    north = sync_site(store.engine, site(SECOND_SITE), now=NOW)
    assert (north.nodes_created, north.nodes_retired) == (3, 0)
    again = sync_site(store.engine, site(), now=NOW)  # reloading the first site
    assert (again.nodes_retired, again.props_retired) == (0, 0)
    nodes = _nodes(store.engine)
    assert nodes["f1"].retired_at is None
    assert nodes["p1"].retired_at is None
    with Session(store.engine) as s:
        assert {r.id for r in s.scalars(select(AssetTypeRecord))} == {"pump", "fan"}
    smaller = SITE_YAML.replace("          - {id: p2, kind: machine, type: pump}\n", "")
    assert sync_site(store.engine, site(smaller), now=NOW).nodes_retired == 1  # its own nodes still retire
    assert _nodes(store.engine)["f1"].retired_at is None
