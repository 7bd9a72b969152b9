"""``/api/v1/webhooks``: subscriptions, their deliveries, and replay (admin only).

A subscription's secret is shown once, when it is created; the signature and headers are documented in
twin/webhooks/__init__.py. Target URLs are checked by the target policy (twin/webhooks/target.py): the form,
the host allowlist (``webhook_allowlist``) and literal addresses here, every resolved address at delivery.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from sqlalchemy import delete, func, select

from plant.wire import from_us, now_us
from twin import audit, webhooks
from twin.api.deps import AdminDep, SessionDep, SettingsDep, require_role
from twin.auth import Role
from twin.config import TwinSettings
from twin.errors import ConfigError, InvalidRequest, NotFound
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
from twin.webhooks.target import TargetPolicy

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


def _check_url(url: str, settings: TwinSettings) -> None:
    try:
        TargetPolicy.from_settings(settings).check_url(url)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None


def _snapshot(sub: WebhookSubscription) -> dict[str, Any]:
    """A subscription as the audit trail records it (never its secret)."""
    return _public(sub).model_dump(mode="json")


def _get(session: SessionDep, sub_id: RowId) -> WebhookSubscription:
    sub = session.get(WebhookSubscription, sub_id)
    if sub is None:
        raise NotFound(f"webhook subscription {sub_id} does not exist")
    return sub


@router.get("", response_model=list[SubscriptionPublic])
def list_subscriptions(session: SessionDep) -> list[SubscriptionPublic]:
    """Every subscription."""
    return [_public(s) for s in session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.id))]


@router.post("", response_model=SubscriptionCreated, status_code=201)
def create_subscription(
    session: SessionDep, settings: SettingsDep, who: AdminDep, body: SubscriptionCreate
) -> SubscriptionCreated:
    """Subscribe a URL to alert events; the secret is in this answer only."""
    _check_url(body.url, settings)
    secret = body.secret or secrets.token_urlsafe(32)
    sub = WebhookSubscription(
        name=body.name,
        url=body.url,
        secret=secret,
        format=body.format,
        priorities=list(body.priorities),
        subtree=body.subtree,
        kinds=list(body.kinds),
        max_attempts=body.max_attempts,
        enabled=body.enabled,
        created_at=now_us(),
    )
    session.add(sub)
    session.flush()
    audit.record(session, who, "webhook.create", f"webhook:{sub.id}", after=_snapshot(sub))
    session.commit()
    return SubscriptionCreated(**_public(sub).model_dump(), secret=secret)


@router.get("/{sub_id}", response_model=SubscriptionPublic)
def get_subscription(session: SessionDep, sub_id: RowId) -> SubscriptionPublic:
    """One subscription."""
    return _public(_get(session, sub_id))


@router.patch("/{sub_id}", response_model=SubscriptionPublic)
def update_subscription(
    session: SessionDep, settings: SettingsDep, who: AdminDep, sub_id: RowId, body: SubscriptionUpdate
) -> SubscriptionPublic:
    """Change a subscription; queued events keep the body rendered when they were queued."""
    sub = _get(session, sub_id)
    before = _snapshot(sub)
    changes = body.model_dump(exclude_unset=True)
    if "url" in changes:
        if changes["url"] is None:
            raise InvalidRequest("url cannot be empty")
        _check_url(changes["url"], settings)
    for name, value in changes.items():
        if value is None and name not in ("subtree",):
            raise InvalidRequest(f"{name} cannot be null")
        setattr(sub, name, value)
    audit.record(session, who, "webhook.update", f"webhook:{sub.id}", before=before, after=_snapshot(sub))
    session.commit()
    return _public(sub)


@router.delete("/{sub_id}", status_code=204)
def delete_subscription(session: SessionDep, who: AdminDep, sub_id: RowId) -> None:
    """Remove a subscription and its queued deliveries."""
    sub = _get(session, sub_id)
    audit.record(session, who, "webhook.delete", f"webhook:{sub.id}", before=_snapshot(sub))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub_id))
    session.delete(sub)
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
    _get(session, sub_id)
    conds = [WebhookDelivery.subscription_id == sub_id]
    if status:
        conds.append(WebhookDelivery.status == status)
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*conds)) or 0
    rows = session.scalars(
        select(WebhookDelivery).where(*conds).order_by(WebhookDelivery.id.desc()).limit(limit).offset(offset)
    )
    items = [_delivery(d) for d in rows]
    return DeliveryPage(items=items, count=len(items), total=total)


@router.post("/{sub_id}/replay", response_model=Replayed)
def replay(session: SessionDep, who: AdminDep, sub_id: RowId, body: ReplayRequest | None = None) -> Replayed:
    """Queue deliveries again with their original Idempotency-Key (dead-lettered ones by default)."""
    _get(session, sub_id)
    body = body or ReplayRequest()
    if body.delivery_ids is not None:
        owned = set(
            session.scalars(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.subscription_id == sub_id, WebhookDelivery.id.in_(body.delivery_ids)
                )
            )
        )
        missing = set(body.delivery_ids) - owned
        if missing:
            raise NotFound(f"deliveries {sorted(missing)} do not belong to subscription {sub_id}")
        n = webhooks.replay(session, delivery_ids=sorted(owned))
    else:
        n = webhooks.replay(session, subscription_id=sub_id, status=body.status)
    audit.record(session, who, "webhook.replay", f"webhook:{sub_id}", after={"replayed": n})
    session.commit()
    return Replayed(replayed=n)
