"""``/api/v1/webhooks``: subscriptions, their deliveries, and replay (admin only).

A subscription's secret is shown once, when it is created; the signature and headers are documented in
twin/webhooks/__init__.py. The work is twin/webhooks/subscriptions.py's, where target URLs are checked by the
target policy (twin/webhooks/target.py): the form, the host allowlist (``webhook_allowlist``) and literal addresses
when a URL is set, every resolved address at delivery.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from plant.wire import from_us
from twin import audit
from twin.api.deps import AdminDep, SessionDep, SettingsDep, require_role
from twin.auth import Role
from twin.fields import Offset, RowId
from twin.schemas.webhooks import (
    DeliveryPage,
    DeliveryPublic,
    Replayed,
    ReplayRequest,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPublic,
    SubscriptionUpdate,
)
from twin.tables import WebhookDelivery, WebhookSubscription
from twin.webhooks import subscriptions

router = APIRouter(prefix="/webhooks", tags=["webhooks"], dependencies=[Depends(require_role(Role.ADMIN))])


def _public(s: WebhookSubscription) -> SubscriptionPublic:
    return SubscriptionPublic(
        id=s.id,
        name=s.name,
        url=s.url,
        format=s.format,
        priorities=s.priorities,
        subtree=s.subtree,
        kinds=s.kinds,
        max_attempts=s.max_attempts,
        enabled=s.enabled,
        created_at=from_us(s.created_at),
    )


def _delivery(d: WebhookDelivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id,
        subscription_id=d.subscription_id,
        event_key=d.event_key,
        event=d.event,
        alert_id=d.alert_id,
        node=d.node_id,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=from_us(d.next_attempt_at),
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=from_us(d.created_at),
        delivered_at=from_us(d.delivered_at) if d.delivered_at else None,
    )


def _snapshot(sub: WebhookSubscription) -> dict[str, Any]:
    """A subscription as the audit trail records it (never its secret)."""
    return _public(sub).model_dump(mode="json")


@router.get("", response_model=list[SubscriptionPublic])
def list_subscriptions(session: SessionDep) -> list[SubscriptionPublic]:
    """Every subscription."""
    return [_public(s) for s in subscriptions.all_subscriptions(session)]


@router.post("", response_model=SubscriptionCreated, status_code=201)
def create_subscription(
    session: SessionDep, settings: SettingsDep, who: AdminDep, body: SubscriptionCreate
) -> SubscriptionCreated:
    """Subscribe a URL to alert events; the secret is in this answer only."""
    sub, secret = subscriptions.create(session, settings, body)
    audit.record(session, who, "webhook.create", f"webhook:{sub.id}", after=_snapshot(sub))
    session.commit()
    return SubscriptionCreated(**_public(sub).model_dump(), secret=secret)


@router.get("/{sub_id}", response_model=SubscriptionPublic)
def get_subscription(session: SessionDep, sub_id: RowId) -> SubscriptionPublic:
    """One subscription."""
    return _public(subscriptions.get(session, sub_id))


@router.patch("/{sub_id}", response_model=SubscriptionPublic)
def update_subscription(
    session: SessionDep, settings: SettingsDep, who: AdminDep, sub_id: RowId, body: SubscriptionUpdate
) -> SubscriptionPublic:
    """Change a subscription; queued events keep the body rendered when they were queued."""
    sub = subscriptions.get(session, sub_id)
    before = _snapshot(sub)
    subscriptions.update(session, settings, sub, body.model_dump(exclude_unset=True))
    audit.record(session, who, "webhook.update", f"webhook:{sub.id}", before=before, after=_snapshot(sub))
    session.commit()
    return _public(sub)


@router.delete("/{sub_id}", status_code=204)
def delete_subscription(session: SessionDep, who: AdminDep, sub_id: RowId) -> None:
    """Remove a subscription and its queued deliveries."""
    sub = subscriptions.get(session, sub_id)
    audit.record(session, who, "webhook.delete", f"webhook:{sub.id}", before=_snapshot(sub))
    subscriptions.remove(session, sub)
    session.commit()


@router.get("/{sub_id}/deliveries", response_model=DeliveryPage)
def list_deliveries(
    session: SessionDep,
    sub_id: RowId,
    status: Annotated[Literal["pending", "sending", "delivered", "dead"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[Offset, Query()] = 0,
) -> DeliveryPage:
    """A subscription's deliveries, newest first, optionally by status."""
    rows, total = subscriptions.deliveries(session, sub_id, status, limit, offset)
    items = [_delivery(d) for d in rows]
    return DeliveryPage(items=items, count=len(items), total=total)


@router.post("/{sub_id}/replay", response_model=Replayed)
def replay(session: SessionDep, who: AdminDep, sub_id: RowId, body: ReplayRequest | None = None) -> Replayed:
    """Queue deliveries again with their original Idempotency-Key (dead-lettered ones by default)."""
    body = body or ReplayRequest()
    n = subscriptions.replay(session, sub_id, delivery_ids=body.delivery_ids, status=body.status)
    audit.record(session, who, "webhook.replay", f"webhook:{sub_id}", after={"replayed": n})
    session.commit()
    return Replayed(replayed=n)
