"""Command reports from a gateway, on SQLite and PostgreSQL: stored in the batch's own transaction with its values,
and refused item by item (a rejection of kind ``command``) instead of the whole batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plant.wire import uplink_topic
from twin.dead_letters import DeadLetters
from twin.intake import Intake
from twin.tables import AuditRecord, DeadLetter, HistoryRow, SetpointCommand

from .store_helpers import NOW, SITE_YAML, make_store, site

ROOT = "t/v1"


@pytest.fixture
def intake(db_url: str) -> Iterator[Intake]:
    store = make_store(db_url, site(SITE_YAML.replace("type: pump}", "type: pump, gateway: gw2}")))  # p2: gw2's
    with Session(store.engine) as s:
        for cid, gateway in (("cmd0001", "gw1"), ("cmd0002", "gw2")):
            s.add(SetpointCommand(id=cid, node_id="p1", prop="temp", gateway=gateway, value=50.0, state="sent",
                                  actor="key", created_at=NOW, expires_at=NOW + 60_000_000))
        s.commit()
    yield Intake(store, DeadLetters(store.engine), ROOT)
    store.engine.dispose()


def _report(cid: str, **kw: Any) -> dict[str, Any]:
    return {"id": cid, "node": "p1", "prop": "temp", "state": "applied", "value": 50.0, "at": NOW, **kw}


def test_reports_are_stored_with_the_values_and_bad_ones_refused_alone(intake: Intake) -> None:
    body = {"v": 1, "gateway": "gw1", "batch": "b-reports", "sent": NOW,
            "values": [{"node": "p2", "prop": "temp", "value": 1.0, "ts": NOW},  # another gateway's node
                       {"node": "p1", "prop": "temp", "value": 21.5, "ts": NOW}],
            "commands": [_report("cmd0001"), _report("cmd0001", detail="Bad\x00"), "not a report",
                         _report("cmd0002"), _report("nosuchcmd")]}
    outcome = intake.handle(uplink_topic("gw1", ROOT), json.dumps(body).encode())
    assert outcome.stored
    assert outcome.ack is not None
    assert outcome.ack.accepted == 1
    refused = {(r.kind, r.index, r.reason) for r in outcome.ack.rejected}
    assert refused == {("value", 0, "not_owner"), ("command", 1, "bad_report"), ("command", 2, "bad_report"),
                       ("command", 3, "not_owner"), ("command", 4, "not_owner")}
    assert "detail" in next(r.detail for r in outcome.ack.rejected if (r.kind, r.index) == ("command", 1))
    with Session(intake.store.engine) as s:
        assert s.get(SetpointCommand, "cmd0001").state == "applied"  # type: ignore[union-attr]
        assert s.get(SetpointCommand, "cmd0002").state == "sent"  # another gateway's: untouched
        assert s.scalar(select(func.count()).select_from(HistoryRow)) == 1
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == 0
        assert s.scalar(select(func.count()).select_from(AuditRecord)
                        .where(AuditRecord.action == "setpoint.applied")) == 1
    again = intake.handle(uplink_topic("gw1", ROOT), json.dumps(body).encode())  # resent: nothing changes
    assert again.stored
    with Session(intake.store.engine) as s:
        assert s.scalar(select(func.count()).select_from(AuditRecord)
                        .where(AuditRecord.action == "setpoint.applied")) == 1


def test_a_batch_the_database_cannot_store_keeps_no_report(intake: Intake) -> None:
    """One transaction: a value the database refuses takes the batch's reports with it."""
    body = {"v": 1, "gateway": "gw1", "batch": "b-refused", "sent": NOW,
            "values": [{"node": "p1", "prop": "temp", "value": 21.5, "ts": NOW}],
            "commands": [_report("cmd0001")]}
    _refuse_history(intake)  # the database refuses every history row from now on
    outcome = intake.handle(uplink_topic("gw1", ROOT), json.dumps(body).encode())
    assert not outcome.stored
    with Session(intake.store.engine) as s:
        assert s.get(SetpointCommand, "cmd0001").state == "sent"  # type: ignore[union-attr]
        assert s.scalar(select(func.count()).select_from(AuditRecord)
                        .where(AuditRecord.action == "setpoint.applied")) == 0
        assert s.scalar(select(func.count()).select_from(HistoryRow)) == 0


def _refuse_history(intake: Intake) -> None:
    table = HistoryRow.__tablename__
    with intake.store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"CREATE TRIGGER refuse BEFORE INSERT ON {table} BEGIN "
                                 "SELECT RAISE(ABORT, 'refused by the test'); END")
        else:
            conn.exec_driver_sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                                 "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$")
            conn.exec_driver_sql(f"CREATE TRIGGER refuse BEFORE INSERT ON {table} "
                                 "FOR EACH ROW EXECUTE FUNCTION refuse()")
