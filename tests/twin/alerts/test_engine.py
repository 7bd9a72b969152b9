"""The alert engine on the example plant: a fault scenario, chattering, stale data, suppression, restart."""

from __future__ import annotations

import math

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from plant.site import Site
from plant.wire import Diagnosis
from tests.twin.alerts.conftest import fleet_site
from twin.alerts import AlertEngine, PropertyChange
from twin.alerts.noise import alarm_rate
from twin.tables import Alert, AlertTransition

T0 = 1_790_000_000_000_000  # µs, a fixed start so the replay is deterministic
S = 1_000_000


def mill(t: int, *, temp: float = 310.0, torque: float = 40.0, speed: float = 1500.0, wear: float = 100.0):
    ts = T0 + t * S
    return [
        PropertyChange("mill-1", "process_temperature", temp, ts),
        PropertyChange("mill-1", "torque", torque, ts),
        PropertyChange("mill-1", "rotational_speed", speed, ts),
        PropertyChange("mill-1", "tool_wear", wear, ts),
    ]


def pump(t: int, *, vib: float = 0.2, temp: float = 80.0, current: float = 2.4, flow: float = 32.0):
    ts = T0 + t * S
    return [
        PropertyChange("pump-1", "accelerometer1_rms", vib, ts),
        PropertyChange("pump-1", "accelerometer2_rms", 0.25, ts),
        PropertyChange("pump-1", "temperature", temp, ts),
        PropertyChange("pump-1", "current", current, ts),
        PropertyChange("pump-1", "flow_rate", flow, ts),
        PropertyChange("pump-1", "pressure", 30.0, ts),
    ]


def fault_diag(t: int, label: str, p: float) -> Diagnosis:
    return Diagnosis(
        node="mill-1",
        task="faults",
        ts=T0 + t * S,
        model="mill-faults",
        version="1",
        confidence=p,
        label=label,
        probability=p,
    )


def step(engine: AlertEngine, db: Engine, changes=(), diagnoses=(), tick: int | None = None) -> None:
    with Session(db) as s, s.begin():
        engine.process(s, changes, diagnoses)
        if tick is not None:
            engine.tick(s, T0 + tick * S)


def alerts(db: Engine) -> list[Alert]:
    with Session(db) as s:
        return list(s.scalars(select(Alert).order_by(Alert.id)))


def test_fault_scenario_raises_one_alert_per_fault_and_chatter_raises_none(
    site: Site, sqlite_db: Engine
) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 900):
        temp = 310.0
        if 100 <= t < 200:  # fault 1: process temperature excursion, noisy around the HI limit
            temp = 313.4 + 0.25 * math.sin(t)
        torque = 40.0
        if 300 <= t < 310:
            torque = 40.0 + 2.5 * (t - 300)  # fault 2: slow ramp (below the rate limit) to high torque
        elif 310 <= t < 360:
            torque = 67.0 + (1.2 if t % 2 else -1.2)  # noisy, above HI
        elif 360 <= t < 370:
            torque = 67.0 - 2.7 * (t - 360)
        # chattering: vibration flips across its HI limit every second, motor temperature every 3 s
        vib = 0.31 if t % 2 else 0.29
        ptemp = 96.0 if (t // 3) % 2 else 94.0
        diags = []
        if t % 30 == 0:  # fault 3: the fault model sees heat dissipation failure for a while
            label, p = ("HDF", 0.9) if 500 <= t < 650 else ("none", 0.95)
            diags.append(fault_diag(t, label, p))
        changes = [*mill(t, temp=temp, torque=torque), *pump(t, vib=vib, temp=ptemp)]
        if t % 10 == 0:
            changes.append(PropertyChange("engine-1", "cycle", t // 10, T0 + t * S))
        step(engine, sqlite_db, changes, diags, tick=t if t % 10 == 0 else None)

    raised = alerts(sqlite_db)
    assert sorted(a.rule for a in raised) == ["failure-predicted", "process-temperature", "spindle-torque"]
    assert all(a.occurrences == 1 and a.node_id == "mill-1" for a in raised)
    assert all(a.state == "returned_unack" and not a.active for a in raised)
    by_rule = {a.rule: a for a in raised}
    assert by_rule["failure-predicted"].condition == "HDF"
    assert (
        by_rule["process-temperature"].priority == "critical"
    )  # severity high on a high-criticality machine
    with Session(sqlite_db) as s:
        assert alarm_rate(s, now=T0 + 900 * S, window_s=900) == {"machining": 3}


def test_hihi_raises_priority_of_the_same_alert(site: Site, sqlite_db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t, vib in enumerate([0.2] * 3 + [0.35] * 8 + [0.5] * 3 + [0.2] * 20):
        step(engine, sqlite_db, pump(t, vib=vib))
    (alert,) = alerts(sqlite_db)
    assert (alert.rule, alert.condition, alert.occurrences) == ("pump-vibration", "HIHI", 1)
    with Session(sqlite_db) as s:
        trail = [(t.action, t.reason) for t in s.scalars(select(AlertTransition).order_by(AlertTransition.id))]
    actions = [a for a, _ in trail]
    assert actions in (
        ["raise", "change", "escalate", "return"],
        ["raise", "change", "escalate", "deescalate", "return"],
    )
    # the change of condition is a transition of its own, with the numbers that caused it
    assert trail[1][1] == "HI → HIHI: accelerometer1_rms 0.5 g is above its HIHI limit of 0.45 g"
    assert (alert.unit, alert.limit) == ("g", 0.45)


def test_stale_data_after_grace_and_clears_on_good_value(site: Site, sqlite_db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    step(engine, sqlite_db, tick=50)  # within the 60 s grace: nothing, though pump-1 never sent a value
    assert alerts(sqlite_db) == []
    step(engine, sqlite_db, pump(55))
    step(engine, sqlite_db, tick=80)  # 25 s after its last value: not stale yet
    assert [a.rule for a in alerts(sqlite_db) if a.node_id == "pump-1"] == []
    step(engine, sqlite_db, tick=90)  # 35 s: stale
    stale = [a for a in alerts(sqlite_db) if a.node_id == "pump-1"]
    assert [a.rule for a in stale] == ["sensors-stale"]
    step(engine, sqlite_db, pump(91))
    (a,) = [a for a in alerts(sqlite_db) if a.node_id == "pump-1"]
    assert a.state == "returned_unack"


def test_bad_quality_rule_with_delay(site: Site, sqlite_db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 35):
        q = "bad" if 5 <= t < 20 else "good"
        step(
            engine,
            sqlite_db,
            [
                PropertyChange("pump-1", "pressure", None if q == "bad" else 30.0, T0 + t * S, q),
                PropertyChange("pump-1", "current", 2.4, T0 + t * S),
            ],
        )
    (a,) = alerts(sqlite_db)
    assert (a.rule, a.condition, a.state) == ("pressure-quality", "BAD", "returned_unack")


def test_rate_of_change_and_and_combination(site: Site, sqlite_db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 20):  # torque jumps 40 → 75 at once on a worn tool (faster than 6 N·m/s over 5 s)
        torque = 40.0 if t < 5 else 75.0
        step(engine, sqlite_db, mill(t, torque=torque, wear=210.0))
    rules = sorted(a.rule for a in alerts(sqlite_db))
    assert rules == ["overstrain-risk", "spindle-torque", "tool-wear", "torque-rate"]


def test_suppressed_by_design_while_machine_stopped(site: Site, sqlite_db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 30):  # stopped spindle, hot process: nothing raised
        step(engine, sqlite_db, mill(t, temp=315.0, speed=0.0))
    assert alerts(sqlite_db) == []
    for t in range(30, 45):  # running: raised after the on-delay
        step(engine, sqlite_db, mill(t, temp=315.0))
    (a,) = alerts(sqlite_db)
    for t in range(45, 50):  # stopped again: the open alert is suppressed, not returned
        step(engine, sqlite_db, mill(t, temp=315.0, speed=0.0))
    (a,) = alerts(sqlite_db)
    assert a.suppressed
    assert a.active
    with Session(sqlite_db) as s:
        reasons = [
            t.reason for t in s.scalars(select(AlertTransition).where(AlertTransition.action == "suppress"))
        ]
    assert reasons == ["by design: rotational_speed below 100"]


def test_restart_takes_up_open_alerts(site: Site, db: Engine) -> None:
    first = AlertEngine(site, started=T0)
    for t in range(0, 12):
        step(first, db, mill(t, temp=315.0))
    second = AlertEngine(site, started=T0)  # a new process on the same database
    with Session(db) as s:
        assert second.load(s) == 1
    for t in range(12, 40):
        step(second, db, mill(t, temp=315.0 if t < 20 else 310.0))
    (a,) = alerts(db)
    assert (a.state, a.occurrences) == ("returned_unack", 1)
    with Session(db) as s:
        n = s.scalar(select(func.count()).select_from(AlertTransition))
    assert n == 2  # raise, return: the restart raised nothing twice


def test_a_fault_alert_follows_the_mode_the_model_sees(site: Site, sqlite_db: Engine) -> None:
    """OSF, then PWF within the off-delay, then quiet, then HDF: one alert whose mode, value and reason follow."""
    engine = AlertEngine(site, started=T0)
    # quiet at 20 s, but PWF comes within the 60 s off-delay; quiet from 60 s on: returned at 120 s
    for t, label, p in ((0, "OSF", 0.9), (20, "none", 0.95), (40, "PWF", 0.8), (60, "none", 0.95),
                        (130, "none", 0.95), (300, "HDF", 0.7)):
        step(engine, sqlite_db, mill(t), [fault_diag(t, label, p)], tick=t)
    (a,) = [a for a in alerts(sqlite_db) if a.rule == "failure-predicted"]
    assert (a.condition, a.value, a.unit, a.limit) == ("HDF", 70.0, "%", 60.0)
    assert a.reason == "the fault model predicts HDF with 70% probability (alerts from 60%)"
    assert a.evidence["label"] == "HDF"
    with Session(sqlite_db) as s:
        mine = select(AlertTransition).where(AlertTransition.alert_id == a.id).order_by(AlertTransition.id)
        trail = [(t.action, t.reason) for t in s.scalars(mine)]
    assert [t[0] for t in trail] == ["raise", "change", "return", "reactivate"]
    assert trail[1][1].startswith("OSF → PWF: the fault model predicts PWF with 80% probability")
    assert trail[3][1].startswith("HDF (was PWF): ")


def test_every_kind_of_alert_says_its_value_unit_limit_and_why(site: Site, sqlite_db: Engine) -> None:
    engine = AlertEngine(site, started=T0)
    for t in range(0, 20):  # torque jumps 40 → 75 on a worn tool
        step(engine, sqlite_db, mill(t, torque=40.0 if t < 5 else 75.0, wear=210.0))
    by_rule = {a.rule: a for a in alerts(sqlite_db)}
    rate = by_rule["torque-rate"]
    assert rate.unit == "N·m/s"
    assert rate.limit is not None
    assert rate.reason.startswith("torque is rising ")
    assert "N·m/s over 5 s, faster than the limit of" in rate.reason
    wear = by_rule["tool-wear"]
    assert (wear.unit, wear.limit, wear.reason) == ("min", 200.0, "tool_wear 210 min is above its HI limit of 200 min")
    both = by_rule["overstrain-risk"]
    assert both.reason == (
        "torque 75 N·m is above its HIHI limit of 72 N·m and tool_wear 210 min is above its HI limit of 200 min"
    )
    assert (both.unit, both.limit) == ("N·m", 72.0)


def _vib(engine: AlertEngine, db: Engine, t: int, v: float, late: bool = False) -> None:
    with Session(db) as s, s.begin():
        engine.process(s, [PropertyChange("p0", "vib", v, T0 + t * S)], late=late)


def _activations(db: Engine) -> int:
    with Session(db) as s:
        return int(s.scalar(select(func.count()).select_from(AlertTransition).where(
            AlertTransition.action.in_(("raise", "reactivate")))) or 0)


def test_a_late_normal_value_does_not_return_an_alert_a_newer_value_holds(sqlite_db: Engine) -> None:
    engine = AlertEngine(fleet_site(1), started=T0)
    _vib(engine, sqlite_db, 10, 1.5)
    _vib(engine, sqlite_db, 5, 0.2, late=True)  # stored after the newer high value
    _vib(engine, sqlite_db, 10, 1.5)  # the newest judged again
    [alert] = alerts(sqlite_db)
    assert alert.active
    assert _activations(sqlite_db) == 1


def test_each_late_excursion_raises_and_ends_where_the_property_is(sqlite_db: Engine) -> None:
    engine = AlertEngine(fleet_site(1), started=T0)
    _vib(engine, sqlite_db, 20, 0.2)
    for t, v in ((12, 1.5), (13, 0.2), (14, 1.6), (15, 0.2), (16, 1.7)):
        _vib(engine, sqlite_db, t, v, late=True)
    _vib(engine, sqlite_db, 20, 0.2)  # the newest judged again: back to normal
    assert _activations(sqlite_db) == 3
    assert not any(a.active for a in alerts(sqlite_db))
