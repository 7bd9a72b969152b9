"""ISA-18.2 lifecycle and noise control: states, audit rows, shelving, escalation, flapping, grouping."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from plant.site import Site
from plant.wire import now_us
from tests.twin.alerts.test_engine import T0, S, alerts, mill, pump, step
from twin.alerts import AlertEngine, lifecycle
from twin.errors import Conflict, NotFound
from twin.tables import WebhookDelivery, WebhookSubscription


def trail(db: Engine, alert_id: int) -> list[tuple[str, str, str, str]]:
    with Session(db) as s:
        return [(t.action, t.from_state, t.to_state, t.actor) for t in lifecycle.transitions(s, alert_id)]


def deliveries(db: Engine, node: str | None = None) -> list[str]:
    stmt = select(WebhookDelivery.event).order_by(WebhookDelivery.id)
    if node is not None:
        stmt = stmt.where(WebhookDelivery.node_id == node)
    with Session(db) as s:
        return list(s.scalars(stmt))


def subscribe_all(db: Engine) -> None:
    with Session(db) as s, s.begin():
        s.add(
            WebhookSubscription(name="all", url="http://127.0.0.1:9/x", secret="x" * 16, created_at=now_us())
        )


def test_return_unacknowledged_then_reactivate_then_acknowledge(site: Site, db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    temps = [315.0] * 8 + [310.0] * 12 + [315.0] * 8 + [310.0] * 12
    for t, temp in enumerate(temps):
        step(engine, db, mill(t, temp=temp))
    (a,) = alerts(db)
    assert (a.state, a.occurrences) == ("returned_unack", 2)  # the second excursion counted, not raised again
    with Session(db) as s, s.begin():
        lifecycle.acknowledge(s, a.id, actor="ana", reason="coolant refilled")
    (a,) = alerts(db)
    assert a.state == "normal"
    assert a.open_key is None
    assert a.acked_by == "ana"
    assert trail(db, a.id) == [
        ("raise", "normal", "active_unack", "system"),
        ("return", "active_unack", "returned_unack", "system"),
        ("reactivate", "returned_unack", "active_unack", "system"),
        ("return", "active_unack", "returned_unack", "system"),
        ("acknowledge", "returned_unack", "normal", "ana"),
    ]
    with Session(db) as s, s.begin(), pytest.raises(Conflict):
        lifecycle.acknowledge(s, a.id, actor="ana")
    with Session(db) as s, pytest.raises(NotFound):
        lifecycle.acknowledge(s, 4242, actor="ana")
    for t in range(40, 50):  # a new excursion after closing is a new alert
        step(engine, db, mill(t, temp=315.0))
    assert [x.state for x in alerts(db)] == ["normal", "active_unack"]


def test_shelved_alert_is_quiet_until_expiry(site: Site, db: Engine) -> None:
    subscribe_all(db)
    engine = AlertEngine(site, started=T0)
    for t in range(0, 8):
        step(engine, db, mill(t, temp=315.0))
    (a,) = alerts(db)
    with Session(db) as s, s.begin():
        lifecycle.shelve(
            s, a.id, actor="ben", until=T0 + 100 * S, reason="planned coolant work", at=T0 + 8 * S
        )
    for t in range(8, 60):  # returns and comes back while shelved: stored, not sent
        step(engine, db, mill(t, temp=315.0 if (t // 20) % 2 == 0 else 310.0))
    assert deliveries(db) == ["alert.raised", "alert.shelved"]
    step(engine, db, tick=101)  # (pump-1 sent nothing all along: its stale rule fires too, unrelated)
    (a,) = [x for x in alerts(db) if x.node_id == "mill-1"]
    assert a.shelved_until is None
    assert deliveries(db, "mill-1")[-1] == "alert.unshelved"
    actions = [x[0] for x in trail(db, a.id)]
    assert actions == ["raise", "shelve", "return", "reactivate", "unshelve"]
    with Session(db) as s, s.begin(), pytest.raises(Conflict):
        lifecycle.shelve(s, a.id, actor="ben", until=T0, reason="in the past", at=T0 + 200 * S)


def test_escalation_when_unacknowledged_and_deescalation_on_ack(site: Site, db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 12):  # motor temperature high: severity high on a medium pump → high
        step(engine, db, pump(t, temp=100.0))
    (a,) = alerts(db)
    assert a.priority == "high"
    step(engine, db, pump(500, temp=100.0), tick=500)
    assert alerts(db)[0].priority == "high"  # not yet 900 s
    step(engine, db, pump(920, temp=100.0), tick=920)
    a = alerts(db)[0]
    assert (a.priority, a.escalations) == ("critical", 1)
    step(engine, db, tick=2000)  # max one step
    assert alerts(db)[0].priority == "critical"
    with Session(db) as s, s.begin():
        lifecycle.acknowledge(s, a.id, actor="cem", reason="on it", at=T0 + 2001 * S)
    a = alerts(db)[0]
    assert (a.priority, a.state) == ("high", "active_ack")
    actions = [(x[0], x[3]) for x in trail(db, a.id)]
    assert actions == [
        ("raise", "system"),
        ("escalate", "system"),
        ("acknowledge", "cem"),
        ("deescalate", "cem"),
    ]


def test_flapping_counted_not_sent(site: Site, db: Engine) -> None:
    subscribe_all(db)
    engine = AlertEngine(site, started=T0)
    t = 0
    for _ in range(7):  # above for 7 s (on-delay 5), below for 17 s (off-delay 15): seven cycles in < 10 min
        for _ in range(7):
            step(engine, db, pump(t, vib=0.35))
            t += 1
        for _ in range(17):
            step(engine, db, pump(t, vib=0.2))
            t += 1
    (a,) = alerts(db)
    assert a.occurrences == 7
    assert a.flapping
    sent = deliveries(db)
    assert sent.count("alert.flapping") == 1
    assert len(sent) == 2 * 3 + 1 + 1  # raise/return/reactivate until the 4th activation marks it, then quiet
    step(engine, db, tick=t + 700)
    assert not alerts(db)[0].flapping
    assert deliveries(db)[-1] == "alert.stable"


def test_alerts_of_one_machine_share_a_group(site: Site, db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 12):  # both vibration limits of pump-1 within seconds: one cause
        step(
            engine,
            db,
            [
                *pump(t, vib=0.35),
            ],
        )
    for t in range(12, 24):
        changes = pump(t, vib=0.35)
        changes[1] = changes[1].__class__("pump-1", "accelerometer2_rms", 0.4, T0 + t * S)
        step(engine, db, changes)
    for t in range(0, 12):  # the mill is another machine: its own group
        step(engine, db, mill(t, temp=315.0))
    rows = alerts(db)
    groups = {a.rule: a.group_id for a in rows}
    assert groups["pump-vibration"] == groups["motor-vibration"] == rows[0].id
    assert groups["process-temperature"] != groups["pump-vibration"]


def test_every_transition_has_an_audit_row(site: Site, db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 40):
        step(engine, db, mill(t, temp=315.0 if t < 10 else 310.0, torque=70.0 if 5 < t < 20 else 40.0))
    rows = alerts(db)
    assert len(rows) >= 2
    for a in rows:  # the states chain without gaps, from normal to the alert's state, each with an actor
        chain = trail(db, a.id)
        assert chain[0][:2] == ("raise", "normal")
        assert all(actor for *_, actor in chain)
        assert all(prev[2] == nxt[1] for prev, nxt in itertools.pairwise(chain))
        assert chain[-1][2] == a.state
