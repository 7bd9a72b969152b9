"""Maintenance advice: ranked causes and actions for each open alert, from the knowledge base, and a due date.

Matching. An alert's fault label (``HDF``), rule id (``pump-anomaly``) and rule kind (``stale``) are
looked up in that order; an exact label is worth more than a rule, a rule more than a kind.

Confidence. Each cause of a matched entry becomes one piece of advice with confidence
``cause likelihood × match weight × diagnosis confidence`` (1 for rule-based alerts). When the diagnosis
behind an alert is not confident (below ``INSPECT_BELOW``) the advice is to inspect, with the entry's
inspection steps, never a specific repair.

Due date. With a RUL in the evidence (``rul_due``): the work is due ``lead_time_h`` before the pessimistic end of
life, ``diagnosis time + lower bound of the RUL interval × rul_unit_hours − lead_time_h``. It is never before the
alert's activation: when the lower bound is already inside the lead time the work is due at once, and the reason
says so; a date more than ``MAX_AHEAD_H`` ahead is held at that. Otherwise the due date follows the priority
(critical 4 h, high 24 h, medium 3 d, low 7 d after the alert was raised). Every reason is a sentence with its
numbers; times in it are UTC, with the year when it is not the diagnosis's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plant.wire import from_us
from twin.alerts.lifecycle import NORMAL, PRIORITIES
from twin.knowledge.base import KnowledgeBody, body_of
from twin.scopes import Sites, within
from twin.tables import Alert, KnowledgeEntry, WorkOrder, WorkOrderAlert

H = 3_600 * 1_000_000  # µs per hour
INSPECT_BELOW = 0.5
# A due date further ahead than this is said as this far ahead: a model's RUL of millions of cycles (or a rule's
# horizon set that far) must give a date a calendar can hold, not an overflow that takes down the whole plan.
MAX_AHEAD_H = 100 * 8_766.0  # 100 years
DUE_BY_PRIORITY_H = {"critical": 4.0, "high": 24.0, "medium": 72.0, "low": 168.0}
_NO_ENTRY = KnowledgeBody.model_validate({"title": "-", "causes": [{"cause": "-"}]})  # defaults only
_MATCH_WEIGHT = (("condition", 1.0), ("rule", 0.9), ("kind", 0.6))


@dataclass
class Advice:
    """One recommendation for one alert."""

    kind: str  # "repair" or "inspect"
    title: str
    cause: str
    confidence: float
    actions: list[str]
    parts: list[dict[str, Any]]
    skills: list[str]
    duration_h: float | None
    safety: list[str]
    source: str  # "asset_type/condition@version"


@dataclass
class PlanItem:
    """One piece of open work: an alert, its best advice, when it is due, and why."""

    alert_id: int
    node: str
    path: str
    rule: str
    condition: str
    state: str
    priority: str
    due: int  # µs
    due_reason: str
    overdue: bool
    advice: list[Advice]
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    reason: str = ""  # why the alert is active, with its numbers
    work_orders: list[dict[str, Any]] = field(default_factory=list)  # {id, state, assignee} dealing with it

    def as_dict(self) -> dict[str, Any]:
        """A plain dict for JSON."""
        return asdict(self)


def diagnosis_confidence(alert: Alert) -> float | None:
    """The confidence of the diagnosis behind an alert; None for rule-based alerts."""
    ev = alert.evidence or {}
    if "task" not in ev:
        return None
    prob = ev.get("probability") if alert.kind == "fault" else None
    conf = ev.get("confidence")
    values = [float(v) for v in (prob, conf) if isinstance(v, int | float)]
    return min(values) if values else None


def _entries_for(session: Session, alert: Alert) -> list[tuple[KnowledgeEntry, float]]:
    keys = {"condition": alert.condition, "rule": alert.rule, "kind": alert.kind}
    rows = session.scalars(
        select(KnowledgeEntry).where(
            KnowledgeEntry.current.is_(True),
            KnowledgeEntry.asset_type == alert.asset_type,
            KnowledgeEntry.condition.in_(set(keys.values())),
        )
    ).all()
    by_condition = {r.condition: r for r in rows}
    out, seen = [], set()
    for name, weight in _MATCH_WEIGHT:
        row = by_condition.get(keys[name])
        if row is not None and row.id not in seen:
            seen.add(row.id)
            out.append((row, weight))
    return out


def advise(session: Session, alert: Alert) -> list[Advice]:
    """Ranked advice for one alert, most confident first."""
    diag = diagnosis_confidence(alert)
    out: list[Advice] = []
    for row, weight in _entries_for(session, alert):
        body = body_of(row)
        source = f"{row.asset_type}/{row.condition}@{row.version}"
        if diag is not None and diag < INSPECT_BELOW:
            out.append(_inspect(body, source, weight * diag))
            continue
        for cause in body.causes:
            actions = cause.actions or body.actions
            out.append(
                Advice(
                    kind="repair",
                    title=body.title,
                    cause=cause.cause,
                    confidence=round(cause.likelihood * weight * (diag if diag is not None else 1.0), 4),
                    actions=[a.action for a in actions],
                    parts=[p.model_dump() for p in body.parts],
                    skills=body.skills,
                    duration_h=body.duration_h or (sum(a.duration_h or 0 for a in actions) or None),
                    safety=body.safety,
                    source=source,
                )
            )
    if not out and diag is not None and diag < INSPECT_BELOW:
        out.append(_inspect(None, "", diag))
    return sorted(out, key=lambda a: -a.confidence)


def _inspect(body: KnowledgeBody | None, source: str, confidence: float) -> Advice:
    steps = (body.inspect if body and body.inspect else []) or ["Inspect the asset and confirm the condition"]
    causes = ", ".join(c.cause for c in body.causes) if body else "unknown"
    return Advice(
        kind="inspect",
        title=f"Inspect: {body.title}" if body else "Inspect",
        cause=f"possible: {causes}",
        confidence=round(confidence, 4),
        actions=steps,
        parts=[],
        skills=body.skills if body else [],
        duration_h=0.5,
        safety=body.safety if body else [],
        source=source,
    )


@dataclass(frozen=True)
class Due:
    """When work is due (µs) and why, in a sentence."""

    at: int
    reason: str
    now: bool = False  # due at once: the RUL's lower bound is inside the lead time


def rul_due(
    *,
    at: int,
    rul: float,
    low: float | None,
    high: float | None,
    unit: str,
    hours_per_unit: float,
    lead_h: float,
    not_before: int,
) -> Due:
    """The due date of work on an asset with remaining useful life ``rul`` (interval ``low``–``high``) seen at
    ``at`` (µs): ``lead_h`` before the lower bound runs out, never before ``not_before`` (the activation)."""
    plural = {"cycle": "cycles", "hour": "hours", "": "cycles"}.get(unit, unit)
    singular = plural[:-1] if plural.endswith("s") else plural
    bound = max(0.0, low if low is not None and low <= rul else rul)
    spread = f" ± {_num((high - low) / 2)}" if low is not None and high is not None and high >= low else ""
    seen = f"RUL {_num(rul)}{spread} {plural} ≈ {_num(rul * hours_per_unit)} h at {_num(hours_per_unit)} h/{singular}"
    left_h = bound * hours_per_unit
    lower = f"lower bound {_num(bound)} {plural} ≈ {_num(left_h)} h" if spread else f"≈ {_num(left_h)} h left"
    capped = left_h - lead_h > MAX_AHEAD_H
    due = at + int((MAX_AHEAD_H if capped else left_h - lead_h) * H)
    if left_h <= lead_h:
        return Due(not_before, f"{seen}; {lower} is inside the {_num(lead_h)} h lead time: due now", True)
    if due <= not_before:  # the activation came later than the diagnosis, by more than the time to spare
        return Due(not_before, f"{seen}; {lower}, less {_num(lead_h)} h lead time, has run out: due now", True)
    furthest = f" (the furthest a plan looks ahead, {_num(MAX_AHEAD_H / 8_766)} years)" if capped else ""
    return Due(due, f"{seen}; {lower}, less {_num(lead_h)} h lead time: change before {_when(due, at)}{furthest}")


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _when(us: int, since: int) -> str:
    """``us`` as a person reads a date soon after ``since``: the weekday, and the year when it is another one."""
    when, start = from_us(us), from_us(since)
    return f"{when:%a %d %b %H:%M} UTC" if when.year == start.year else f"{when:%a %d %b %Y %H:%M} UTC"


def due_date(session: Session, alert: Alert) -> tuple[int, str]:
    """When the work for an alert should be done (µs) and why."""
    ev = alert.evidence or {}
    rul = ev.get("rul")
    if isinstance(rul, int | float) and isinstance(ev.get("ts"), int):
        rows = _entries_for(session, alert)
        body = body_of(rows[0][0]) if rows else _NO_ENTRY
        low, high = ev.get("rul_low"), ev.get("rul_high")
        due = rul_due(
            at=ev["ts"],
            rul=float(rul),
            low=float(low) if isinstance(low, int | float) else None,
            high=float(high) if isinstance(high, int | float) else None,
            unit=str(ev.get("unit") or ""),
            hours_per_unit=body.rul_unit_hours,
            lead_h=body.lead_time_h,
            not_before=alert.activated_at,
        )
        return due.at, due.reason
    hours = DUE_BY_PRIORITY_H.get(alert.priority, 72.0)
    return alert.raised_at + int(hours * H), f"{alert.priority} priority: within {hours:g} h of the raise"


def maintenance_plan(
    session: Session, *, now: int, subtree: str | None = None, limit: int = 500, sites: Sites = None
) -> list[PlanItem]:
    """The open work across the plant (or a subtree, or some sites), most urgent first, with the evidence for
    each item."""
    stmt = select(Alert).where(Alert.state != NORMAL, Alert.suppressed.is_(False), within(Alert.node_path, sites))
    if subtree:
        stmt = stmt.where(Alert.node_path.contains(f"/{subtree}/", autoescape=True))
    items = []
    alerts = list(session.scalars(stmt.order_by(Alert.id).limit(limit)))
    orders = _work_orders(session, [a.id for a in alerts])
    for alert in alerts:
        due, why = due_date(session, alert)
        evidence = {
            "value": alert.value,
            "occurrences": alert.occurrences,
            "raised_at": alert.raised_at,
            "group_id": alert.group_id,
            **(alert.evidence or {}),
        }
        items.append(
            PlanItem(
                alert.id,
                alert.node_id,
                alert.node_path,
                alert.rule,
                alert.condition,
                alert.state,
                alert.priority,
                due,
                why,
                due < now,
                advise(session, alert),
                evidence,
                alert.message,
                alert.reason,
                orders.get(alert.id, []),
            )
        )
    return sorted(items, key=lambda i: (i.due, PRIORITIES.index(i.priority), i.alert_id))


def _work_orders(session: Session, alert_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Alert id → the open or running work orders dealing with it."""
    if not alert_ids:
        return {}
    rows = session.execute(
        select(WorkOrderAlert.alert_id, WorkOrder.id, WorkOrder.state, WorkOrder.assignee)
        .join(WorkOrder, WorkOrder.id == WorkOrderAlert.work_order_id)
        .where(WorkOrderAlert.alert_id.in_(alert_ids), WorkOrder.state.in_(("open", "in_progress")))
        .order_by(WorkOrder.id)
    )
    out: dict[int, list[dict[str, Any]]] = {}
    for alert_id, wo_id, state, assignee in rows:
        out.setdefault(alert_id, []).append({"id": wo_id, "state": state, "assignee": assignee})
    return out
