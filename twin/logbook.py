"""An asset's logbook: what happened to it and what was done, from every source that knows, newest first.

The logbook stores nothing of its own: it is a query over sources, each a function reading its own tables for
a scope (an asset and everything below it, a time range) and returning ``Entry`` rows::

    work_orders   created, assigned, started, noted, done, cancelled        (work_order_events)
    alerts        raised, came back, changed condition, returned, acknowledged, commented, shelved
    models        the model versions that diagnosed the asset, from when    (twin_diagnoses)
    setpoints     setpoint writes asked for, and what the machine said      (twin_commands)

A new source (setpoint changes, say) is one function added to ``SOURCES``. ``GET /api/v1/logbook`` serves it,
``/api/v1/logbook.csv`` exports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from twin.exports import csv_text, iso
from twin.scopes import Sites, within
from twin.tables import (
    Alert,
    AlertTransition,
    DiagnosisRecord,
    SetpointCommand,
    TwinNode,
    WorkOrder,
    WorkOrderEvent,
)

ALERT_ACTIONS = {
    "raise": "raised",
    "reactivate": "came back",
    "change": "changed",
    "return": "returned to normal",
    "acknowledge": "acknowledged",
    "comment": "comment",
    "shelve": "shelved",
    "unshelve": "unshelved",
}
WORK_ORDER_ACTIONS = {
    "create": "created",
    "update": "updated",
    "start": "started",
    "note": "note",
    "complete": "done",
    "cancel": "cancelled",
}
CSV_COLUMNS = ("at", "node", "source", "kind", "title", "detail", "actor", "ref")


@dataclass(frozen=True)
class LogbookQuery:
    """Which entries: of an asset and everything below it (``path``; the plant when empty), in [start, end).

    Args:
        path: the node path (``/site/area/machine/``) or "" for the whole plant.
        start: µs, inclusive.
        end: µs, exclusive.
        limit: most entries per source.
        sites: only entries of these sites (twin/scopes.py); None: every site.
    """

    path: str
    start: int
    end: int
    limit: int = 500
    sites: Sites = None


@dataclass(frozen=True)
class Entry:
    """One line of the logbook."""

    at: int  # µs
    node: str
    source: str  # work_orders, alerts, models, setpoints
    kind: str  # created, done, raised, returned, comment, version...
    title: str
    detail: str
    actor: str
    ref: str  # what it is about: "work-order/12", "alert/5", "model/rul@1.2.0"


Source = Callable[[Session, LogbookQuery], list[Entry]]


def _work_orders(session: Session, scope: LogbookQuery) -> list[Entry]:
    e, w = WorkOrderEvent, WorkOrder
    stmt = (
        select(e, w.node_id, w.task)
        .join(w, w.id == e.work_order_id)
        .where(e.at >= scope.start, e.at < scope.end, w.node_path.startswith(scope.path, autoescape=True),
               within(w.node_path, scope.sites))
        .order_by(e.at.desc(), e.id.desc())
        .limit(scope.limit)
    )
    return [
        Entry(ev.at, node, "work_orders", WORK_ORDER_ACTIONS.get(ev.action, ev.action),
              f"Work order #{ev.work_order_id} {WORK_ORDER_ACTIONS.get(ev.action, ev.action)}: {task}",
              ev.note, ev.actor, f"work-order/{ev.work_order_id}")
        for ev, node, task in session.execute(stmt)
    ]  # fmt: skip


def _alerts(session: Session, scope: LogbookQuery) -> list[Entry]:
    t, a = AlertTransition, Alert
    stmt = (
        select(t, a.node_id, a.rule, a.condition, a.message)
        .join(a, a.id == t.alert_id)
        .where(
            t.at >= scope.start,
            t.at < scope.end,
            t.action.in_(ALERT_ACTIONS),
            a.node_path.startswith(scope.path, autoescape=True),
            within(a.node_path, scope.sites),
        )
        .order_by(t.at.desc(), t.id.desc())
        .limit(scope.limit)
    )
    return [
        Entry(tr.at, node, "alerts", ALERT_ACTIONS[tr.action],
              f"Alert #{tr.alert_id} {ALERT_ACTIONS[tr.action]}: {message or rule} ({condition})",
              tr.reason, tr.actor, f"alert/{tr.alert_id}")
        for tr, node, rule, condition, message in session.execute(stmt)
    ]  # fmt: skip


def _nodes(scope: LogbookQuery) -> Select[str]:
    return select(TwinNode.id).where(TwinNode.path.startswith(scope.path, autoescape=True),
                                     within(TwinNode.path, scope.sites))


def _models(session: Session, scope: LogbookQuery) -> list[Entry]:
    nodes = _nodes(scope)
    d = DiagnosisRecord
    stmt = (
        select(d.node_id, d.task, d.model, d.version, func.min(d.ts).label("first"))
        .where(d.node_id.in_(nodes), d.ts >= scope.start, d.ts < scope.end)
        .group_by(d.node_id, d.task, d.model, d.version)
        .order_by(func.min(d.ts).desc())
        .limit(scope.limit)
    )
    return [
        Entry(first, node, "models", "version", f"{task} model {model} {version} diagnosing",
              f"first diagnosis by {model} {version} in this range", "system", f"model/{task}@{version}")
        for node, task, model, version, first in session.execute(stmt)
    ]  # fmt: skip


SETPOINT_STATES = {
    "awaiting_confirmation": "awaiting confirmation",
    "pending": "requested",
    "sent": "requested",
    "applied": "applied",
    "rejected": "rejected",
    "failed": "failed",
    "expired": "expired",
}


def _setpoints(session: Session, scope: LogbookQuery) -> list[Entry]:
    c = SetpointCommand
    nodes = _nodes(scope)
    stmt = (
        select(c)
        .where(c.node_id.in_(nodes), c.created_at < scope.end,
               ((c.created_at >= scope.start) | (c.ended_at >= scope.start)))
        .order_by(c.created_at.desc())
        .limit(scope.limit)
    )
    out: list[Entry] = []
    for cmd in session.scalars(stmt):
        ref = f"command/{cmd.id}"
        if scope.start <= cmd.created_at:
            why = f"because: {cmd.reason}" if cmd.reason else ""
            out.append(Entry(cmd.created_at, cmd.node_id, "setpoints", "requested",
                             f"Setpoint {cmd.prop} → {cmd.value:g} requested (was {_num(cmd.previous)})",
                             why, cmd.actor, ref))
        if cmd.ended_at is not None and scope.start <= cmd.ended_at < scope.end:
            kind = SETPOINT_STATES.get(cmd.state, cmd.state)
            detail = cmd.detail or (f"read back {_num(cmd.reported)}" if cmd.reported is not None else "")
            out.append(Entry(cmd.ended_at, cmd.node_id, "setpoints", kind,
                             f"Setpoint {cmd.prop} → {cmd.value:g} {kind}" + (f" ({cmd.outcome})" if cmd.outcome
                                                                              else ""),
                             detail, f"gateway {cmd.gateway}", ref))
    return out


def _num(value: float | None) -> str:
    return "unset" if value is None else f"{value:g}"


SOURCES: dict[str, Source] = {"work_orders": _work_orders, "alerts": _alerts, "models": _models,
                              "setpoints": _setpoints}


def entries(session: Session, scope: LogbookQuery, sources: list[str] | None = None) -> list[Entry]:
    """The entries of the chosen sources (all by default), newest first, at most ``scope.limit``."""
    out: list[Entry] = []
    for name in sources or list(SOURCES):
        out += SOURCES[name](session, scope)
    out.sort(key=lambda e: (e.at, e.source, e.ref), reverse=True)
    return out[: scope.limit]


def to_csv(rows: list[Entry]) -> str:
    """The entries as CSV (header first, times ISO 8601 UTC)."""
    return csv_text(CSV_COLUMNS, ([iso(e.at) if c == "at" else getattr(e, c) for c in CSV_COLUMNS] for e in rows))
