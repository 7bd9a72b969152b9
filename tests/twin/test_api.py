"""The REST API's read path on SQLite and PostgreSQL: tree, latest state, history, frames, health, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine

from plant.wire import to_us
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.tables import Base, DiagnosisRecord, FramePoint, HistoryRow, TwinNode, TwinProperty

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
HISTORY_ROWS = 250
FRAMES = 30


def _us(seconds: float) -> int:
    return to_us(T0 + timedelta(seconds=seconds))


def _iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _node(id: str, parent: str | None, path: str, kind: str, **kw: Any) -> TwinNode:
    return TwinNode(id=id, parent_id=parent, path=path, kind=kind, name=kw.pop("name", id.title()), **kw)


def seed(engine: Engine) -> None:
    """A small plant: site → hall → (line_1 → mill-1 → spindle, pump-1, lineX1, a retired press)."""
    with make_sessionmaker(engine)() as s:
        s.add_all(
            [
                _node("plant", None, "/plant/", "site", name="Demo plant"),
                _node("hall", "plant", "/plant/hall/", "area", name="Machining hall"),
                _node("line_1", "hall", "/plant/hall/line_1/", "line", position=0),
                _node("pump-1", "hall", "/plant/hall/pump-1/", "machine", type="pump", position=1),
                _node("lineX1", "hall", "/plant/hall/lineX1/", "line", position=2),
                _node("press", "hall", "/plant/hall/press/", "machine", position=3, retired_at=_us(0)),
            ]
        )
        s.flush()
        s.add_all(
            [
                _node(
                    "mill-1",
                    "line_1",
                    "/plant/hall/line_1/mill-1/",
                    "machine",
                    name="CNC mill 1",
                    type="cnc_mill",
                    criticality="high",
                    attributes={"vendor": "ACME"},
                ),
            ]
        )
        s.flush()
        s.add(_node("spindle", "mill-1", "/plant/hall/line_1/mill-1/spindle/", "component"))
        prop = TwinProperty
        mill_props = [
            prop(node_id="mill-1", name="torque", unit="N·m", range_low=0, range_high=80, value_num=42.5,
                 ts=_us(10), server_ts=_us(10), stored_ts=_us(11), quality=0, flags="clock_corrected"),
            prop(node_id="mill-1", name="tool_wear", unit="min", dtype="int", value_num=12.0, ts=_us(9),
                 quality=1),
            prop(node_id="mill-1", name="product_type", dtype="string", value_text="M", ts=_us(8), quality=0),
            prop(node_id="mill-1", name="running", dtype="bool", value_num=1.0, ts=_us(8), quality=2),
            prop(node_id="mill-1", name="spare", unit="K"),
        ]  # fmt: skip
        last = HISTORY_ROWS - 1
        pressure = prop(
            node_id="pump-1", name="pressure", unit="kPa", value_num=float(last), ts=_us(last), quality=0
        )
        other = TwinProperty(node_id="pump-1", name="current", unit="A")
        s.add_all([*mill_props, pressure, other])
        s.flush()
        s.add_all(
            HistoryRow(property_id=pressure.id, ts=_us(i), value_num=float(i), quality=i % 3)
            for i in range(HISTORY_ROWS)
        )
        s.add_all(
            FramePoint(node_id="pump-1", ts=_us(i), revision=i % 2,
                       values={"pressure": float(i), "current": None}, quality={"pressure": "good"})
            for i in range(FRAMES)
        )  # fmt: skip
        diag = {"model": "faults-tree", "version": "1", "source": "edge", "confidence": 0.9}
        s.add_all(
            [
                DiagnosisRecord(node_id="mill-1", task="faults", ts=_us(5), payload={"label": "no"}, **diag),
                DiagnosisRecord(node_id="mill-1", task="faults", ts=_us(7), payload={"label": "TWF"}, **diag),
                DiagnosisRecord(node_id="mill-1", task="anomaly", ts=_us(6), payload={"score": 0.2}, **diag),
            ]
        )
        s.commit()


@pytest.fixture(scope="module")
def engine(module_db_url: str) -> Iterator[Engine]:
    """The seeded plant, once for the module: the tests that share it only read."""
    engine = make_engine(module_db_url)
    Base.metadata.create_all(engine)
    seed(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def client(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.VIEWER, "tests")
    settings = TwinSettings(data_dir=tmp_path_factory.mktemp("api"), database_url=str(engine.url))
    with TestClient(create_app(settings, engine), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def _ids(tree: list[dict[str, Any]]) -> list[Any]:
    return [(n["id"], _ids(n["children"])) if n["children"] else n["id"] for n in tree]


def test_tree_shape_and_order(client: TestClient) -> None:
    body = client.get("/api/v1/nodes").json()
    assert _ids(body["items"]) == [
        ("plant", [("hall", [("line_1", [("mill-1", ["spindle"])]), "pump-1", "lineX1"])])
    ]
    assert body["count"] == 7
    mill = body["items"][0]["children"][0]["children"][0]["children"][0]
    assert {k: mill[k] for k in ("kind", "type", "criticality", "name", "parent_id", "attributes")} == {
        "kind": "machine",
        "type": "cnc_mill",
        "criticality": "high",
        "name": "CNC mill 1",
        "parent_id": "line_1",
        "attributes": {"vendor": "ACME"},
    }
    with_retired = client.get("/api/v1/nodes", params={"include_retired": True}).json()
    assert with_retired["count"] == 8


def test_subtree(client: TestClient) -> None:
    body = client.get("/api/v1/nodes", params={"root": "line_1"}).json()
    assert _ids(body["items"]) == [("line_1", [("mill-1", ["spindle"])])]
    assert body["count"] == 3
    leaf = client.get("/api/v1/nodes", params={"root": "spindle"}).json()
    assert leaf["count"] == 1
    assert leaf["items"][0]["children"] == []
    r = client.get("/api/v1/nodes", params={"root": "nope"})
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def test_latest_state(client: TestClient) -> None:
    body = client.get("/api/v1/nodes/mill-1").json()
    assert body["node"]["id"] == "mill-1"
    props = {p["name"]: p for p in body["properties"]}
    assert list(props) == ["torque", "tool_wear", "product_type", "running", "spare"]
    torque = props["torque"]
    assert torque["value"] == 42.5
    assert torque["unit"] == "N·m"
    assert (torque["range_low"], torque["range_high"]) == (0, 80)
    assert torque["quality"] == "good"
    assert torque["flags"] == ["clock_corrected"]
    assert datetime.fromisoformat(torque["ts"]) == T0 + timedelta(seconds=10)
    assert datetime.fromisoformat(torque["ts"]).tzinfo is not None
    assert props["tool_wear"]["value"] == 12
    assert isinstance(props["tool_wear"]["value"], int)
    assert props["tool_wear"]["quality"] == "uncertain"
    assert props["product_type"]["value"] == "M"
    assert props["running"]["value"] is True
    assert props["running"]["quality"] == "bad"
    assert props["spare"]["value"] is None
    assert props["spare"]["ts"] is None
    assert props["spare"]["quality"] is None
    assert datetime.fromisoformat(body["updated_ts"]) == T0 + timedelta(seconds=10)
    diagnoses = {d["task"]: d for d in body["diagnoses"]}
    assert set(diagnoses) == {"faults", "anomaly"}
    assert diagnoses["faults"]["payload"] == {"label": "TWF"}
    assert datetime.fromisoformat(diagnoses["faults"]["ts"]) == T0 + timedelta(seconds=7)
    one = client.get("/api/v1/nodes/mill-1/properties/torque").json()
    assert one == torque


def test_unknown_node_and_property_404(client: TestClient) -> None:
    for path in (
        "/api/v1/nodes/ghost",
        "/api/v1/nodes/ghost/frames",
        "/api/v1/nodes/ghost/properties/pressure",
        "/api/v1/nodes/ghost/properties/pressure/history",
        "/api/v1/nodes/pump-1/properties/ghost",
        "/api/v1/nodes/pump-1/properties/ghost/history",
    ):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 404
        assert "ghost" in r.json()["detail"]


def _walk(client: TestClient, url: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged series, following next_cursor; checks page sizes on the way."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        body = client.get(url, params={**params, **({"cursor": cursor} if cursor else {})}).json()
        assert body["count"] == len(body["items"]) <= params["limit"]
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert body["count"] == params["limit"]
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_history_paging_loses_and_repeats_nothing(client: TestClient, order: str) -> None:
    url = "/api/v1/nodes/pump-1/properties/pressure/history"
    items = _walk(client, url, limit=40, order=order)
    expected = list(range(HISTORY_ROWS)) if order == "asc" else list(range(HISTORY_ROWS - 1, -1, -1))
    assert [int(i["value"]) for i in items] == expected
    assert [datetime.fromisoformat(i["ts"]) for i in items] == [T0 + timedelta(seconds=v) for v in expected]
    assert [i["quality"] for i in items[:3]] == (["good", "uncertain", "bad"] if order == "asc" else
                                                 ["good", "bad", "uncertain"])  # fmt: skip
    # exactly a multiple of the limit: the last full page must not promise a page that is empty
    assert len(_walk(client, url, limit=50, order=order)) == HISTORY_ROWS


def test_history_time_range(client: TestClient) -> None:
    url = "/api/v1/nodes/pump-1/properties/pressure/history"
    body = client.get(url, params={"start": _iso(100), "end": _iso(110)}).json()
    assert [i["value"] for i in body["items"]] == [float(v) for v in range(100, 110)]  # [start, end)
    assert body["next_cursor"] is None
    assert body["unit"] == "kPa"
    assert body["property"] == "pressure"
    # the same range in another timezone is the same instants
    berlin = (T0 + timedelta(seconds=100)).astimezone(ZoneInfo("Europe/Berlin"))
    again = client.get(url, params={"start": berlin.isoformat(), "end": _iso(110)}).json()
    assert again["items"] == body["items"]
    paged = _walk(client, url, start=_iso(20), end=_iso(200), limit=7, order="desc")
    assert [int(i["value"]) for i in paged] == list(range(199, 19, -1))
    assert client.get(url, params={"start": _iso(10_000)}).json()["items"] == []


BAD_HISTORY_QUERIES = [
    ({"start": "yesterday"}, "start"),
    ({"end": "2024-05-01T08:00:00"}, "timezone"),
    ({"start": _iso(50), "end": _iso(50)}, "before end"),
    ({"start": _iso(60), "end": _iso(50)}, "before end"),
    ({"limit": 0}, "limit"),
    ({"limit": 10_001}, "limit"),
    ({"order": "sideways"}, "order"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "eyJrIjoxfQ"}, "cursor"),  # valid base64 JSON, missing fields
]


def test_history_bad_input_is_422(client: TestClient) -> None:
    for params, needle in BAD_HISTORY_QUERIES:
        r = client.get("/api/v1/nodes/pump-1/properties/pressure/history", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert needle in r.json()["detail"], (params, r.json())


def test_foreign_cursor_is_422(client: TestClient) -> None:
    url = "/api/v1/nodes/pump-1/properties/pressure/history"
    cursor = client.get(url, params={"limit": 5}).json()["next_cursor"]
    other_order = client.get(url, params={"limit": 5, "cursor": cursor, "order": "desc"})
    assert other_order.status_code == 422
    assert "order" in other_order.json()["detail"]
    frames = client.get("/api/v1/nodes/pump-1/frames", params={"limit": 5, "cursor": cursor})
    assert frames.status_code == 422
    assert "another series" in frames.json()["detail"]


def test_frames(client: TestClient) -> None:
    url = "/api/v1/nodes/pump-1/frames"
    items = _walk(client, url, limit=8, order="asc")
    assert [i["values"]["pressure"] for i in items] == [float(i) for i in range(FRAMES)]
    assert items[1]["revision"] == 1
    assert items[0]["values"]["current"] is None
    assert items[0]["quality"] == {"pressure": "good"}
    ranged = client.get(url, params={"start": _iso(5), "end": _iso(8), "order": "desc"}).json()
    assert [datetime.fromisoformat(i["ts"]) for i in ranged["items"]] == [
        T0 + timedelta(seconds=s) for s in (7, 6, 5)
    ]
    assert client.get("/api/v1/nodes/mill-1/frames").json()["items"] == []


def test_healthz_is_open(client: TestClient) -> None:
    r = client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_healthz_database_down(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'twin.db'}")
    app = create_app(TwinSettings(data_dir=tmp_path), engine)
    with TestClient(app) as c:
        r = c.get("/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"
    assert "database" in r.json()["detail"]
    engine.dispose()


def test_missing_schema_is_503_with_the_fix(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    app = create_app(TwinSettings(data_dir=tmp_path), engine)
    with TestClient(app) as c:
        r = c.get("/api/v1/nodes", headers={"Authorization": "Bearer ftk_0123456789ab_secret"})
    assert r.status_code == 503
    assert "factory-twin db upgrade" in r.json()["detail"]
    engine.dispose()


def test_openapi_and_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/api/v1/nodes/{node_id}/properties/{prop}/history" in spec["paths"]
    assert "/healthz" in spec["paths"]
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())


def test_reads_what_the_store_wrote(db_url: str, tmp_path: Path) -> None:
    """The example plant loaded and fed by the real store, read back through the API."""
    from plant.site import load_site
    from plant.wire import Diagnosis, Flag, Quality, UplinkBatch, Value
    from twin.store import TwinStore

    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    store = TwinStore(engine, TwinSettings(data_dir=tmp_path))
    store.sync_site(load_site(Path(__file__).resolve().parents[2] / "examples" / "plant.yaml"))
    now = to_us(datetime.now(UTC)) - 60_000_000
    values = [
        Value(node="mill-1", prop="torque", value=40.0 + i, ts=now + i * 1_000_000, quality=Quality.GOOD)
        for i in range(5)
    ]
    values += [
        Value(node="mill-1", prop="product_type", value="L", ts=now, flags=(Flag.CLOCK_CORRECTED,)),
        Value(node="engine-1", prop="cycle", value=17, ts=now, quality=Quality.UNCERTAIN),
    ]
    rul = Diagnosis(node="engine-1", task="rul", ts=now, model="rul", version="1", confidence=0.8, rul=99.0)
    result = store.apply(UplinkBatch(gateway="gw", batch="b1", sent=now, values=values, diagnoses=[rul]))
    assert not result.rejected
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.VIEWER)
    app = create_app(TwinSettings(data_dir=tmp_path), engine)
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        tree = c.get("/api/v1/nodes").json()
        assert tree["items"][0]["id"] == "demo-plant"
        assert tree["count"] >= 10
        sub = c.get("/api/v1/nodes", params={"root": "mill-1"}).json()
        assert [n["id"] for n in sub["items"][0]["children"]] == ["mill-1-spindle", "mill-1-tool"]
        mill = c.get("/api/v1/nodes/mill-1").json()
        props = {p["name"]: p for p in mill["properties"]}
        assert props["torque"]["value"] == 44.0
        assert props["torque"]["unit"] == "N·m"
        assert props["product_type"]["value"] == "L"
        assert props["product_type"]["flags"] == ["clock_corrected"]
        engine_1 = c.get("/api/v1/nodes/engine-1").json()
        cycle = next(p for p in engine_1["properties"] if p["name"] == "cycle")
        assert (cycle["value"], cycle["quality"]) == (17, "uncertain")
        assert [d["task"] for d in engine_1["diagnoses"]] == ["rul"]
        history = c.get("/api/v1/nodes/mill-1/properties/torque/history", params={"limit": 2}).json()
        assert [i["value"] for i in history["items"]] == [40.0, 41.0]
        assert history["next_cursor"]
    engine.dispose()


def test_history_and_frames_are_read_from_the_read_replica(engine: Engine, tmp_path: Path) -> None:
    replica = make_engine(f"sqlite:///{tmp_path / 'replica.db'}")
    Base.metadata.create_all(replica)
    seed(replica)
    with make_sessionmaker(replica)() as s:  # the replica lags: no history, no frames yet
        s.query(HistoryRow).delete()
        s.query(FramePoint).delete()
        s.commit()
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.VIEWER, "tests")  # keys are checked on the primary
    settings = TwinSettings(data_dir=tmp_path, database_url=str(engine.url), database_read_url=str(replica.url))
    try:
        with TestClient(create_app(settings, engine), headers={"Authorization": f"Bearer {key}"}) as c:
            history = c.get("/api/v1/nodes/pump-1/properties/pressure/history")
            assert (history.status_code, history.json()["items"]) == (200, [])
            assert c.get("/api/v1/nodes/pump-1/frames").json()["items"] == []
            assert c.get("/api/v1/nodes/pump-1").status_code == 200  # the rest reads the primary
    finally:
        replica.dispose()
