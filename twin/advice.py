"""Maintenance advice: ranked causes and actions for each open alert, from the knowledge base, and a due date.

Matching. An alert's fault label (``HDF``), rule id (``pump-anomaly``) and rule kind (``stale``) are
looked up in that order; an exact label is worth more than a rule, a rule more than a kind.

Confidence. Each cause of a matched entry becomes one piece of advice with confidence
``cause likelihood × match weight × diagnosis confidence`` (1 for rule-based alerts). When the diagnosis
behind an alert is not confident (below ``INSPECT_BELOW``) the advice is to inspect, with the entry's
inspection steps, never a specific repair.

Due date. With a RUL in the evidence: plan before ``diagnosis time + RUL × rul_unit_hours − lead_time_h``;
otherwise from the priority (critical 4 h, high 24 h, medium 3 d, low 7 d after the alert was raised).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from twin.alerts.lifecycle import NORMAL, PRIORITIES
from twin.knowledge.base import KnowledgeBody, body_of
from twin.tables import Alert, KnowledgeEntry

H = 3_600 * 1_000_000  # µs per hour
INSPECT_BELOW = 0.5
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


def due_date(session: Session, alert: Alert) -> tuple[int, str]:
    """When the work for an alert should be done (µs) and why."""
    ev = alert.evidence or {}
    rul = ev.get("rul")
    if isinstance(rul, int | float) and isinstance(ev.get("ts"), int):
        rows = _entries_for(session, alert)
        body = body_of(rows[0][0]) if rows else _NO_ENTRY
        due = int(ev["ts"] + (rul * body.rul_unit_hours - body.lead_time_h) * H)
        unit = ev.get("unit") or "units"
        return due, f"RUL {rul:g} {unit} × {body.rul_unit_hours:g} h, less {body.lead_time_h:g} h lead time"
    hours = DUE_BY_PRIORITY_H.get(alert.priority, 72.0)
    return alert.raised_at + int(hours * H), f"{alert.priority} priority: within {hours:g} h"


def maintenance_plan(
    session: Session, *, now: int, subtree: str | None = None, limit: int = 500
) -> list[PlanItem]:
    """The open work across the plant (or a subtree), most urgent first, with the evidence for each item."""
    stmt = select(Alert).where(Alert.state != NORMAL, Alert.suppressed.is_(False))
    if subtree:
        stmt = stmt.where(Alert.node_path.contains(f"/{subtree}/", autoescape=True))
    items = []
    for alert in session.scalars(stmt.order_by(Alert.id).limit(limit)):
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
            )
        )
    return sorted(items, key=lambda i: (i.due, PRIORITIES.index(i.priority), i.alert_id))
