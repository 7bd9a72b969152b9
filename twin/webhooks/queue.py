"""The delivery queue: signatures, event bodies (native, Alertmanager v4), enqueue, replay."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from plant.wire import from_us, now_us
from twin.errors import NotFound
from twin.tables import Alert, AlertTransition, WebhookDelivery, WebhookSubscription, WorkOrder, WorkOrderEvent

log = structlog.get_logger(__name__)

FORMATS = ("native", "alertmanager")
_SUBS_CACHE = "factory_twin.webhook_subscriptions"
PENDING, SENDING, DELIVERED, DEAD = "pending", "sending", "delivered", "dead"
US = 1_000_000
_EVENT_NAMES = {
    "raise": "alert.raised",
    "reactivate": "alert.reactivated",
    "return": "alert.returned",
    "acknowledge": "alert.acknowledged",
    "shelve": "alert.shelved",
    "unshelve": "alert.unshelved",
    "suppress": "alert.suppressed",
    "unsuppress": "alert.unsuppressed",
    "escalate": "alert.escalated",
    "deescalate": "alert.deescalated",
    "flapping": "alert.flapping",
    "stable": "alert.stable",
    "change": "alert.changed",
    "comment": "alert.commented",
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-FactoryTwin-Signature value: ``sha256=`` and the hex HMAC-SHA256 of ``timestamp.body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: float = 300.0) -> bool:
    """Receiver side: the signature matches and the timestamp is recent."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _iso(us: int | None) -> str | None:
    return None if us is None else from_us(us).isoformat().replace("+00:00", "Z")


def alert_dict(alert: Alert) -> dict[str, Any]:
    """The alert as events and the API show it."""
    return {
        "id": alert.id,
        "key": alert.key,
        "node": alert.node_id,
        "path": alert.node_path,
        "asset_type": alert.asset_type,
        "rule": alert.rule,
        "kind": alert.kind,
        "condition": alert.condition,
        "state": alert.state,
        "active": alert.active,
        "priority": alert.priority,
        "severity": alert.severity,
        "message": alert.message,
        "value": alert.value,
        "unit": alert.unit,
        "limit": alert.limit,
        "reason": alert.reason,
        "occurrences": alert.occurrences,
        "group_id": alert.group_id,
        "flapping": alert.flapping,
        "suppressed": alert.suppressed,
        "shelved_until": _iso(alert.shelved_until),
        "raised_at": _iso(alert.raised_at),
        "returned_at": _iso(alert.returned_at),
        "acked_by": alert.acked_by,
        "evidence": alert.evidence,
    }


def render(fmt: str, sub_name: str, event_key: str, alert: Alert, t: AlertTransition) -> str:
    """The body of one event for one subscription format, rendered once and stored."""
    if fmt == "alertmanager":
        return json.dumps(_alertmanager(sub_name, alert, t), separators=(",", ":"))
    body = {
        "id": event_key,
        "type": _EVENT_NAMES.get(t.action, f"alert.{t.action}"),
        "version": 1,
        "sequence": t.id,
        "occurred_at": _iso(t.at),
        "alert": alert_dict(alert),
        "transition": {
            "action": t.action,
            "actor": t.actor,
            "reason": t.reason,
            "from_state": t.from_state,
            "to_state": t.to_state,
            "priority": t.priority,
            "at": _iso(t.at),
        },
    }
    return json.dumps(body, separators=(",", ":"), default=str)


def _alertmanager(receiver: str, alert: Alert, t: AlertTransition) -> dict[str, Any]:
    """Prometheus Alertmanager webhook payload, version 4, one alert per message."""
    status = "firing" if alert.active else "resolved"
    labels = {
        "alertname": alert.rule,
        "node": alert.node_id,
        "asset_type": alert.asset_type,
        "condition": alert.condition,
        "kind": alert.kind,
        "severity": alert.priority,
    }
    annotations = {
        "summary": alert.message or f"{alert.rule} {alert.condition} on {alert.node_id}",
        "description": alert.reason,
        "state": alert.state,
        "event": t.action,
        "occurrences": str(alert.occurrences),
    }
    item = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(alert.raised_at),
        "endsAt": _iso(alert.returned_at) if not alert.active else "0001-01-01T00:00:00Z",
        "generatorURL": f"/api/v1/alerts/{alert.id}",
        "fingerprint": hashlib.sha256(alert.key.encode()).hexdigest()[:16],
    }
    group = {"alertname": alert.rule, "node": alert.node_id}
    return {
        "version": "4",
        "groupKey": f"{{}}:{{alertname={alert.rule!r}, node={alert.node_id!r}}}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [item],
    }


WORK_ORDER_KIND = "work_order"  # a subscription's ``kinds`` entry for work-order events


def work_order_dict(wo: WorkOrder, alert_ids: list[int]) -> dict[str, Any]:
    """A work order as events show it."""
    return {
        "id": wo.id,
        "node": wo.node_id,
        "path": wo.node_path,
        "task": wo.task,
        "task_source": wo.task_source,
        "steps": wo.steps,
        "priority": wo.priority,
        "state": wo.state,
        "due": _iso(wo.due_at),
        "assignee": wo.assignee,
        "notes": wo.notes,
        "parts": wo.parts,
        "time_spent_h": wo.time_spent_h,
        "verdict": wo.verdict,
        "cause": wo.cause,
        "alert_ids": alert_ids,
        "created_at": _iso(wo.created_at),
        "created_by": wo.created_by,
        "started_at": _iso(wo.started_at),
        "finished_at": _iso(wo.finished_at),
    }


def enqueue_work_order_event(
    session: Session, wo: WorkOrder, e: WorkOrderEvent, *, linked: list[int]
) -> list[WebhookDelivery]:
    """Queue one work-order event (``workorder.created``, ``.started``, ``.completed``...) for every native
    subscription that takes work orders (``kinds`` empty or naming ``work_order``; priority and subtree as for
    alerts), in the caller's session. Alertmanager subscriptions carry alerts only."""
    key = f"ft-wo-{wo.id}-{e.id}"
    name = f"workorder.{_WORK_ORDER_EVENTS.get(e.action, e.action)}"
    body = {
        "id": key,
        "type": name,
        "version": 1,
        "sequence": e.id,
        "work_order": work_order_dict(wo, linked),
        "event": {"action": e.action, "actor": e.actor, "from_state": e.from_state, "to_state": e.to_state,
                  "note": e.note, "at": _iso(e.at)},
    }
    text = json.dumps(body, separators=(",", ":"), default=str)
    now = now_us()
    rows = [
        WebhookDelivery(subscription_id=sub.id, event_key=key, event=name, alert_id=None, node_id=wo.node_id,
                        body=text, status=PENDING, attempts=0, next_attempt_at=now, created_at=now, last_error="")
        for sub in _subscriptions(session)
        if sub.format == "native" and _takes_work_orders(sub, wo)
    ]
    session.add_all(rows)
    return rows


_WORK_ORDER_EVENTS = {"create": "created", "start": "started", "update": "updated", "note": "noted",
                      "complete": "completed", "cancel": "cancelled"}


def _takes_work_orders(sub: WebhookSubscription, wo: WorkOrder) -> bool:
    if sub.kinds and WORK_ORDER_KIND not in sub.kinds:
        return False
    if sub.priorities and wo.priority not in sub.priorities:
        return False
    return not sub.subtree or f"/{sub.subtree}/" in wo.node_path


def matches(sub: WebhookSubscription, alert: Alert) -> bool:
    """Whether an alert's events go to this subscription (priority, asset subtree, kind)."""
    if sub.priorities and alert.priority not in sub.priorities:
        return False
    if sub.kinds and alert.kind not in sub.kinds:
        return False
    return not sub.subtree or f"/{sub.subtree}/" in alert.node_path


def _subscriptions(session: Session) -> list[WebhookSubscription]:
    """The enabled subscriptions, read once per transaction: one ingest batch often carries many events."""
    tx = session.get_transaction()
    cached = session.info.get(_SUBS_CACHE)
    if cached is not None and cached[0] is tx:
        return list(cached[1])
    subs = list(session.scalars(select(WebhookSubscription).where(WebhookSubscription.enabled.is_(True))))
    session.info[_SUBS_CACHE] = (tx, subs)
    return subs


def enqueue_event(session: Session, alert: Alert, t: AlertTransition) -> list[WebhookDelivery]:
    """Queue one alert transition for every matching subscription, in the caller's transaction."""
    now = now_us()
    key = f"ft-{alert.id}-{t.id}"
    rows = []
    for sub in _subscriptions(session):
        if not matches(sub, alert):
            continue
        rows.append(
            WebhookDelivery(
                subscription_id=sub.id,
                event_key=key,
                event=_EVENT_NAMES.get(t.action, t.action),
                alert_id=alert.id,
                node_id=alert.node_id,
                body=render(sub.format, sub.name, key, alert, t),
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                last_error="",
            )
        )
    session.add_all(rows)
    return rows


def replay(
    session: Session,
    *,
    delivery_ids: list[int] | None = None,
    subscription_id: int | None = None,
    status: str = DEAD,
) -> int:
    """Queue deliveries again (same Idempotency-Key): by id, or every one of a subscription in ``status``."""
    stmt = update(WebhookDelivery).values(
        status=PENDING, attempts=0, next_attempt_at=now_us(), lease_until=None, claimed_by=None, last_error=""
    )
    if delivery_ids is not None:
        stmt = stmt.where(WebhookDelivery.id.in_(delivery_ids))
    elif subscription_id is not None:
        stmt = stmt.where(
            WebhookDelivery.subscription_id == subscription_id, WebhookDelivery.status == status
        )
    else:
        raise NotFound("replay needs delivery ids or a subscription")
    return session.execute(stmt).rowcount  # type: ignore[attr-defined, no-any-return]
