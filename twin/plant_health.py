"""Each node's health for the plant tree, from its open alerts and its latest diagnoses.

Levels, worst last: ``unknown`` (no value yet), ``ok``, ``warning`` (a low or medium alert, an anomaly
score over its threshold, a fault diagnosed, no new value for STALE_AFTER_US), ``alarm`` (a high or critical
alert). A parent is as bad as its worst
descendant, so a site shows red when one pump does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from plant.wire import from_us, now_us
from twin.scopes import Sites, within
from twin.tables import Alert, DiagnosisRecord, TwinNode, TwinProperty

LEVELS = ("unknown", "ok", "warning", "alarm")
STALE_AFTER_US = 300_000_000  # a machine silent for five minutes is worth a look
_ALERT_LEVEL = {"critical": "alarm", "high": "alarm", "medium": "warning", "low": "warning"}
_HEALTHY_LABELS = {"", "none", "normal", "healthy", "ok"}


@dataclass
class NodeHealth:
    """One node's health: its own and the worst of its subtree.

    Args:
        level: the worst level in the node's subtree, itself included.
        own: the node's own level.
        reasons: why the node itself is not ok, in words.
        open_alerts: open alerts on the node and below.
    """

    level: str = "unknown"
    own: str = "unknown"
    reasons: list[str] = field(default_factory=list)
    open_alerts: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"level": self.level, "own": self.own, "reasons": self.reasons,
                "open_alerts": self.open_alerts}


def worse(a: str, b: str) -> str:
    """The worse of two levels."""
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


def plant_health(session: Session, now: int | None = None, sites: Sites = None) -> dict[str, NodeHealth]:
    """Health of every current node (of ``sites`` only, if given), by node id, at ``now`` (µs; the current time
    by default)."""
    current = select(TwinNode).where(TwinNode.retired_at.is_(None), within(TwinNode.path, sites))
    nodes = {n.id: n.path for n in session.scalars(current)}
    health = {node_id: NodeHealth() for node_id in nodes}
    newest = session.execute(
        select(TwinProperty.node_id, func.max(TwinProperty.ts))
        .where(TwinProperty.ts.is_not(None), TwinProperty.retired_at.is_(None))
        .group_by(TwinProperty.node_id)
    )
    stale_before = (now if now is not None else now_us()) - STALE_AFTER_US
    for node_id, ts in newest:
        h = health.get(node_id)
        if h is None or ts is None:
            continue
        h.own = "ok"
        if ts < stale_before:
            h.own = "warning"
            h.reasons.append(f"no new value since {from_us(ts):%Y-%m-%d %H:%M} UTC")
    _apply_diagnoses(session, health)
    counts: dict[str, int] = defaultdict(int)
    for node_id, priority, condition, message in session.execute(
        select(Alert.node_id, Alert.priority, Alert.condition, Alert.message).where(Alert.state != "normal")
    ):
        h = health.get(node_id)
        if h is None:
            continue
        counts[node_id] += 1
        h.own = worse(h.own, _ALERT_LEVEL.get(priority, "warning"))
        h.reasons.append(f"{priority} alert: {condition} {message}".strip())
    _roll_up(nodes, health, counts)
    return health


def _apply_diagnoses(session: Session, health: dict[str, NodeHealth]) -> None:
    d = DiagnosisRecord
    newest = select(d.node_id, d.task, func.max(d.ts).label("ts")).group_by(d.node_id, d.task).subquery()
    rows = session.execute(
        select(d.node_id, d.task, d.payload).join(
            newest, and_(d.node_id == newest.c.node_id, d.task == newest.c.task, d.ts == newest.c.ts)
        )
    )
    for node_id, task, payload in rows:
        h = health.get(node_id)
        if h is None:
            continue
        reason = _diagnosis_reason(task, payload or {})
        h.own = worse(h.own, "ok")
        if reason:
            h.own = worse(h.own, "warning")
            h.reasons.append(reason)


def _diagnosis_reason(task: str, p: dict[str, Any]) -> str | None:
    """Why a diagnosis is a warning, or None when it says healthy."""
    score, threshold = p.get("score"), p.get("threshold")
    if task == "anomaly" and isinstance(score, int | float) and isinstance(threshold, int | float):
        return f"anomaly score {score:.3g} over threshold {threshold:.3g}" if score > threshold else None
    label, prob = p.get("label"), p.get("probability")
    if task != "faults" or not isinstance(label, str) or label.lower() in _HEALTHY_LABELS:
        return None
    if isinstance(prob, int | float):
        return f"fault diagnosed: {label} ({prob:.0%})" if prob >= 0.5 else None
    return f"fault diagnosed: {label}"


def _roll_up(nodes: dict[str, str], health: dict[str, NodeHealth], counts: dict[str, int]) -> None:
    """Give each node the worst level and the alert count of its subtree (paths list the ancestors)."""
    for h in health.values():
        h.level = h.own
    for node_id, path in nodes.items():
        own = health[node_id]
        for ancestor in {a for a in path.strip("/").split("/") if a}:
            if ancestor in health:
                health[ancestor].level = worse(health[ancestor].level, own.own)
                health[ancestor].open_alerts += counts.get(node_id, 0)
