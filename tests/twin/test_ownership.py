"""Ownership: the site file says which gateway owns which nodes; ingest refuses another gateway's items."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from plant.errors import SiteError
from plant.wire import Diagnosis, Frame, uplink_topic
from twin.ingest import Ingestor
from twin.store import TwinStore
from twin.tables import TwinNode

from .store_helpers import NOW, batch, make_store, prop, site, value

OWNED = """
site: {id: plant}
asset_types:
  pump:
    properties:
      temp: {unit: degC, range: [0, 120]}
nodes:
  - id: plant
    kind: site
    children:
      - id: hall-a
        kind: area
        gateway: gw-a
        children:
          - {id: p1, kind: machine, type: pump}
          - {id: p2, kind: machine, type: pump, gateway: gw-b}
      - id: hall-c
        kind: area
        children:
          - {id: p3, kind: machine, type: pump}
"""


def test_owner_is_inherited_down_the_tree() -> None:
    assert site(OWNED).owners() == {"plant": None, "hall-a": "gw-a", "p1": "gw-a", "p2": "gw-b", "hall-c": None,
                                    "p3": None}


@pytest.mark.parametrize("bad", ["a/b", "+", "", "x" * 65])
def test_owner_must_be_a_gateway_id(bad: str) -> None:
    with pytest.raises(SiteError, match="gateway"):
        site(OWNED.replace("gateway: gw-b", f"gateway: {bad!r}"))


@pytest.fixture
def store(sqlite_url: str) -> Iterator[TwinStore]:
    s = make_store(sqlite_url, site(OWNED))
    yield s
    s.engine.dispose()


def test_site_sync_stores_each_nodes_owner(store: TwinStore) -> None:
    with store.engine.connect() as conn:
        rows = dict(conn.execute(select(TwinNode.id, TwinNode.gateway)).all())
    assert rows == {"plant": None, "hall-a": "gw-a", "p1": "gw-a", "p2": "gw-b", "hall-c": None, "p3": None}
    store.sync_site(site(OWNED.replace("gateway: gw-b", "gateway: gw-c")))
    with store.engine.connect() as conn:
        assert conn.execute(select(TwinNode.gateway).where(TwinNode.id == "p2")).scalar_one() == "gw-c"


def test_items_of_another_gateways_nodes_are_refused_with_their_own_index(store: TwinStore) -> None:
    ingest = Ingestor(store)  # handle() alone: no broker needed
    b = batch(
        value("p2", v=1.0, ts=NOW),  # gw-b's
        value("p1", v=2.0, ts=NOW),
        value("p1", prop="nope", v=3.0, ts=NOW),  # the store's own rejection, index 2 of the batch
        value("p3", v=4.0, ts=NOW),  # no owner: any gateway
        value("p2", v=5.0, ts=NOW + 1),  # gw-b's
        frames=[Frame(node="p2", ts=NOW, values={"temp": 1.0})],
        diagnoses=[Diagnosis(node="p1", task="anomaly", ts=NOW, model="m", version="1", confidence=0.9, score=0.1)],
        gateway="gw-a",
    )
    ack = ingest.handle(uplink_topic("gw-a"), b.model_dump_json().encode()).ack
    assert ack is not None
    assert ack.stored
    assert [(r.kind, r.index, r.reason) for r in ack.rejected] == [
        ("value", 0, "not_owner"), ("value", 2, "unknown_property"), ("value", 4, "not_owner"),
        ("frame", 0, "not_owner"),
    ]
    assert "gw-b" in ack.rejected[0].detail
    assert ack.accepted == 3  # p1, p3 and the diagnosis
    assert prop(store.engine, "p2", "temp").value_num is None  # nothing of gw-b's pump
    assert prop(store.engine, "p1", "temp").value_num == 2.0
    assert ingest.stats().rejected == {"not_owner": 3, "unknown_property": 1}


def test_the_owner_writes_its_nodes(store: TwinStore) -> None:
    ingest = Ingestor(store)
    payload = batch(value("p2", v=1.0, ts=NOW), gateway="gw-b").model_dump_json().encode()
    ack = ingest.handle(uplink_topic("gw-b"), payload).ack
    assert ack is not None
    assert (ack.accepted, ack.rejected) == (1, [])


def test_a_site_without_owners_lets_any_gateway_write(sqlite_url: str) -> None:
    store = make_store(sqlite_url)
    ingest = Ingestor(store)
    ack = ingest.handle(uplink_topic("anyone"), batch(value("p1", v=1.0, ts=NOW), gateway="anyone")
                        .model_dump_json().encode()).ack
    assert ack is not None
    assert (ack.accepted, ack.rejected) == (1, [])
    store.engine.dispose()
