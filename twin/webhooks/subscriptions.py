"""Webhook subscriptions as an admin runs them: create, change and remove them, page their deliveries, replay.

A subscription's URL is checked by the target policy (twin/webhooks/target.py) when it is set: the form, the
host allowlist and literal addresses; a refusal is the caller's bad request. Functions here leave the commit
(and the audit record) to the caller.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.config import TwinSettings
from twin.db import get_or_missing
from twin.errors import ConfigError, InvalidRequest, NotFound
from twin.schemas.webhooks import SubscriptionCreate
from twin.tables import WebhookDelivery, WebhookSubscription
from twin.webhooks.queue import replay as replay_deliveries
from twin.webhooks.target import TargetPolicy

NULLABLE = ("subtree",)  # the fields a change may set to null


def check_url(url: str, settings: TwinSettings) -> None:
    """InvalidRequest when the target policy refuses ``url``."""
    try:
        TargetPolicy.from_settings(settings).check_url(url)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None


def all_subscriptions(session: Session) -> list[WebhookSubscription]:
    """Every subscription, oldest first."""
    return list(session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.id)))


def get(session: Session, sub_id: int) -> WebhookSubscription:
    """One subscription; NotFound if there is none."""
    return get_or_missing(session, WebhookSubscription, sub_id, f"webhook subscription {sub_id} does not exist")


def create(session: Session, settings: TwinSettings, body: SubscriptionCreate) -> tuple[WebhookSubscription, str]:
    """Add a subscription (flushed, for its id) and return it with its secret: the one given, or a new one."""
    check_url(body.url, settings)
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
    return sub, secret


def update(session: Session, settings: TwinSettings, sub: WebhookSubscription, changes: dict[str, Any]) -> None:
    """Apply the fields sent; queued events keep the body rendered when they were queued."""
    if "url" in changes:
        if changes["url"] is None:
            raise InvalidRequest("url cannot be empty")
        check_url(changes["url"], settings)
    for name, value in changes.items():
        if value is None and name not in NULLABLE:
            raise InvalidRequest(f"{name} cannot be null")
        setattr(sub, name, value)


def remove(session: Session, sub: WebhookSubscription) -> None:
    """Remove a subscription and its queued deliveries."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    session.delete(sub)


def deliveries(
    session: Session, sub_id: int, status: str | None, limit: int, offset: int
) -> tuple[list[WebhookDelivery], int]:
    """A page of the subscription's deliveries, newest first (optionally in one status), and how many there are."""
    get(session, sub_id)
    conds = [WebhookDelivery.subscription_id == sub_id]
    if status:
        conds.append(WebhookDelivery.status == status)
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*conds)) or 0
    rows = session.scalars(
        select(WebhookDelivery).where(*conds).order_by(WebhookDelivery.id.desc()).limit(limit).offset(offset)
    )
    return list(rows), total


def replay(session: Session, sub_id: int, *, delivery_ids: list[int] | None, status: str) -> int:
    """Queue the subscription's deliveries again: those named (NotFound for one of another subscription), or every
    one in ``status``. Returns how many."""
    get(session, sub_id)
    if delivery_ids is None:
        return replay_deliveries(session, subscription_id=sub_id, status=status)
    owned = set(
        session.scalars(
            select(WebhookDelivery.id).where(
                WebhookDelivery.subscription_id == sub_id, WebhookDelivery.id.in_(delivery_ids)
            )
        )
    )
    missing = set(delivery_ids) - owned
    if missing:
        raise NotFound(f"deliveries {sorted(missing)} do not belong to subscription {sub_id}")
    return replay_deliveries(session, delivery_ids=sorted(owned))
