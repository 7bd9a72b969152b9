"""Hostile uplinks through the real Mosquitto: each kind of bad input ends (rejected with a code, or dead-lettered
and acknowledged), the worker lives on, and the next good batch lands; a worker that dies is restarted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from sqlalchemy import select, text

from plant.mqtt import BrokerUrl
from plant.wire import Ack, UplinkBatch, uplink_topic
from twin.api.app import create_app
from twin.dead_letters import DeadLetters, Row
from twin.ingest import Ingestor
from twin.intake import Intake
from twin.metrics import IngestCollector, registry_of
from twin.store import TwinStore
from twin.tables import DeadLetter
from twin.uplink_checks import WireLimits

from .store_helpers import NOW, batch, history_count, make_store, prop, value
from .uplink_client import GW, UplinkClient

pytestmark = pytest.mark.mosquitto


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[TwinStore]:
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = make_store(url)
    yield s
    s.engine.dispose()


@pytest.fixture
def ingest(store: TwinStore, mqtt_broker: tuple[str, int], root: str) -> Iterator[Ingestor]:
    ing = Ingestor(store, BrokerUrl(*mqtt_broker), client_id=f"{root}-ingest", topic_root=root,
                   limits=WireLimits(max_payload_bytes=256 * 1024)).start()
    yield ing
    ing.stop(leave=True)


def _raw_batch(gateway: str = GW, name: str = "raw", value_json: str = "20.5", prop_name: str = "temp",
               **value_fields: object) -> bytes:
    """A batch written by hand, so it can hold what no pydantic model would write."""
    extra = "".join(f', "{k}": {json.dumps(v) if not isinstance(v, int) else v}' for k, v in value_fields.items())
    item = f'{{"node": "p1", "prop": "{prop_name}", "value": {value_json}, "ts": {NOW}{extra}}}'
    good = f'{{"node": "p1", "prop": "temp", "value": 1.5, "ts": {NOW + 1}}}'
    return (f'{{"gateway": {json.dumps(gateway)}, "batch": "{name}", "sent": {NOW}, '
            f'"values": [{item}, {good}]}}').encode()


def _good(uplink: UplinkClient, name: str = "good", ts: int = NOW + 10) -> Ack:
    """The next good batch still lands and is answered."""
    uplink.send(batch(value(v=4.0, ts=ts), name=name, gateway=GW))
    ack = uplink.ack()
    while ack.batch != name:
        ack = uplink.ack()
    assert (ack.stored, ack.accepted) == (True, 1)
    return ack


def _settled(ingest: Ingestor, messages: int) -> None:
    """Wait until ``messages`` messages were acknowledged (dead letters of a group are written before that)."""
    deadline = time.monotonic() + 10
    while ingest.stats().messages < messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ingest.stats().messages == messages


def _dead(store: TwinStore) -> list[tuple[str, str, int, bytes | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(DeadLetter.reason, DeadLetter.gateway, DeadLetter.size, DeadLetter.payload)
                            .order_by(DeadLetter.id)).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.mark.parametrize("gateway", ["gw1/#", "+", "gw\x001", "g" * 70_000, "gw2"])
def test_a_foreign_or_unusable_gateway_is_dead_lettered_and_ingest_goes_on(
    ingest: Ingestor, uplink: UplinkClient, store: TwinStore, gateway: str
) -> None:
    uplink.send(_raw_batch(gateway))
    _good(uplink)
    _settled(ingest, 2)
    assert ingest.stats().dead_letters == {"bad_gateway" if gateway != "gw2" else "gateway_mismatch": 1}
    ((_reason, claimed, size, payload),) = _dead(store)
    assert claimed == (gateway[:64].replace("\x00", "?"))
    assert payload is not None
    assert size == len(payload)
    assert history_count(store.engine) == 1  # the good batch only
    assert ingest.stats().worker_restarts == 0


@pytest.mark.parametrize(("value_json", "prop_name", "code"), [
    ("1" + "0" * 399, "temp", "out_of_range"),  # beyond float64
    (str(2**63), "count", "out_of_range"),  # beyond int64
    (json.dumps("on\x00off"), "mode", "bad_string"),  # NUL: PostgreSQL cannot hold it
    (json.dumps("x" * 5000), "mode", "bad_string"),  # over the string limit
])
def test_a_value_no_column_can_hold_is_rejected_and_its_batch_stored(
    ingest: Ingestor, uplink: UplinkClient, store: TwinStore, value_json: str, prop_name: str, code: str
) -> None:
    uplink.send(_raw_batch(value_json=value_json, prop_name=prop_name))
    ack = uplink.ack()
    assert (ack.stored, ack.accepted) == (True, 1)
    assert [(r.kind, r.index, r.reason) for r in ack.rejected] == [("value", 0, code)]
    assert prop(store.engine, "p1", "temp").value_num == 1.5  # the good item of the batch
    assert ingest.stats().rejected == {code: 1}


@pytest.mark.parametrize("field", ["recv_ts", "server_ts"])
def test_a_timestamp_beyond_int64_is_rejected(
    ingest: Ingestor, uplink: UplinkClient, store: TwinStore, field: str
) -> None:
    uplink.send(_raw_batch(**{field: 2**63}))
    ack = uplink.ack()
    assert [(r.index, r.reason) for r in ack.rejected] == [(0, "bad_timestamp")]
    assert ack.accepted == 1
    _good(uplink)


def test_an_oversized_payload_is_refused_unparsed(ingest: Ingestor, uplink: UplinkClient, store: TwinStore) -> None:
    big = _raw_batch(value_json=json.dumps("y" * 300_000))
    uplink.send(big)
    _good(uplink)
    _settled(ingest, 2)
    ((reason, claimed, size, payload),) = _dead(store)
    assert (reason, claimed, size, payload) == ("too_large", GW, len(big), None)
    with store.engine.connect() as conn:
        assert conn.execute(select(DeadLetter.head)).scalar_one() == big[:256]


def test_garbage_bytes_are_dead_lettered(ingest: Ingestor, uplink: UplinkClient, store: TwinStore) -> None:
    for junk in (b"\x00\xff" * 40, b"[]", b'{"gateway": "gw1"', b"null", b"1e999999"):
        uplink.send(junk)
    _good(uplink)
    _settled(ingest, 6)
    assert [r[0] for r in _dead(store)] == ["undecodable"] * 5


def test_many_poisoned_batches_do_not_stall_ingest(ingest: Ingestor, uplink: UplinkClient, store: TwinStore) -> None:
    """More than the broker's in-flight window (20 by default): each must end, or the good batch never comes."""
    for n in range(40):
        uplink.send(_raw_batch(name=f"poison-{n}", recv_ts=2**64))
    _good(uplink, ts=NOW + 99)
    assert ingest.stats().rejected == {"bad_timestamp": 40}


def test_a_refused_batch_is_dead_lettered_and_replayed_after_a_fix(
    ingest: Ingestor, uplink: UplinkClient, store: TwinStore
) -> None:
    """The database refuses a batch for its content: it is kept as a dead letter, the agent told to drop it."""
    from click.testing import CliRunner

    from factory_twin.cli import cli

    _refuse_value(store, 666.0)
    uplink.send(batch(value(v=666.0, ts=NOW), value(v=1.0, ts=NOW + 1), name="refused", gateway=GW))
    ack = uplink.ack()
    assert ack.stored
    assert [r.reason for r in ack.rejected] == ["dead_lettered"] * 2
    assert ingest.stats().dead_letters == {"store_refused": 1}
    _good(uplink)
    listed = CliRunner().invoke(cli, ["ingest", "dead-letters", "--json", "--database-url", _url(store)])
    assert listed.exit_code == 0, listed.output
    (row,) = [json.loads(line) for line in listed.output.splitlines()]
    assert (row["reason"], row["gateway"], row["replayable"], row["replayed_at"]) == ("store_refused", GW, True, None)
    failed = CliRunner().invoke(cli, ["ingest", "replay", str(row["id"]), "--database-url", _url(store)])
    assert failed.exit_code == 1
    assert "store_refused" in failed.output
    _refuse_value(store, None)  # the fix
    done = CliRunner().invoke(cli, ["ingest", "replay", str(row["id"]), "--database-url", _url(store)])
    assert done.exit_code == 0, done.output
    assert "stored (accepted 2" in done.output
    assert history_count(store.engine) == 3
    again = CliRunner().invoke(cli, ["ingest", "dead-letters", "--reason", "store_refused", "--json",
                                     "--database-url", _url(store)])
    assert json.loads(again.output)["replayed_at"] is not None


def _url(store: TwinStore) -> str:
    return store.engine.url.render_as_string(hide_password=False)


def _refuse_value(store: TwinStore, bad: float | None) -> None:
    """A database rule (a trigger) that refuses one value, as a column type or constraint would."""
    pg = store.engine.dialect.name == "postgresql"
    with store.engine.begin() as conn:
        if pg:
            conn.execute(text("DROP TRIGGER IF EXISTS refuse ON twin_history"))
            if bad is not None:
                conn.execute(text(
                    "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.value_num = "
                    f"{bad} THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22003'; END IF; RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"))
                conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON twin_history FOR EACH ROW "
                                  "EXECUTE FUNCTION refuse()"))
            return
        conn.execute(text("DROP TRIGGER IF EXISTS refuse"))
        if bad is not None:
            conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON twin_history WHEN NEW.value_num = {bad} "
                              "BEGIN SELECT RAISE(ABORT, 'refused'); END"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread is meant to die
def test_a_dead_worker_is_restarted_counted_and_reported(
    ingest: Ingestor, uplink: UplinkClient, store: TwinStore
) -> None:
    app = create_app(engine=store.engine)
    app.state.ingestor = ingest
    http = TestClient(app)
    assert http.get("/healthz").status_code == 200

    def die(b: UplinkBatch, _r: object) -> None:
        if b.batch == "fatal":
            raise SystemExit("a listener ended its thread")

    ingest.add_listener(die)
    uplink.send(batch(value(v=2.0, ts=NOW), name="fatal", gateway=GW))
    deadline = time.monotonic() + 10
    while ingest.stats().worker_restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ingest.stats().worker_restarts == 1
    _good(uplink)
    assert ingest.consuming() == 1
    uplink.send(b"garbage")
    _settled(ingest, 3)
    scraped = generate_latest(registry_of([IngestCollector(ingest)])).decode()
    assert "twin_ingest_worker_restarts_total 1.0" in scraped
    assert 'twin_ingest_dead_letters_total{reason="undecodable"} 1.0' in scraped
    assert "twin_ingest_workers_consuming 1.0" in scraped
    ingest.stop()
    health = http.get("/healthz")
    assert health.status_code == 503
    assert "ingest" in health.json()["detail"]


def test_a_refused_batch_in_a_group_ends_alone_and_the_others_are_stored(store: TwinStore) -> None:
    """A worker stores the batches in hand together; one the database refuses is redone alone, the rest land."""
    _refuse_value(store, 666.0)
    intake = Intake(store, DeadLetters(store.engine), "grp/v1")
    topic = uplink_topic(GW, "grp/v1")
    sent = [batch(value(v=1.0, ts=NOW), name="first", gateway=GW).model_dump_json(),
            batch(value(v=666.0, ts=NOW + 1), value(v=2.0, ts=NOW + 2), name="refused", gateway=GW).model_dump_json(),
            "not json",
            batch(value(v=3.0, ts=NOW + 3), name="last", gateway=GW).model_dump_json()]
    deferred: list[Row] = []
    outcomes = intake.handle_many([(topic, s.encode()) for s in sent], deferred)
    assert [(o.stored, o.dead_letter) for o in outcomes] == [
        (True, None), (False, "store_refused"), (False, "undecodable"), (True, None)]
    assert [o.ack.batch if o.ack else None for o in outcomes] == ["first", "refused", None, "last"]
    assert [len(deferred), history_count(store.engine), prop(store.engine, "p1", "temp").value_num] == [1, 2, 3.0]
