"""Webhooks: alert and work-order events queued in the database with the change, then delivered signed, once, in
order.

Queue. ``enqueue_event`` adds one ``webhook_deliveries`` row per matching subscription in the caller's
session, so the event commits or rolls back with the alert change: a restart loses nothing.

Delivery. ``DeliveryWorker`` claims due rows, POSTs them, and records the outcome. Claiming is one UPDATE that
marks rows ``sending`` with a lease; on PostgreSQL its candidate SELECT uses ``FOR UPDATE SKIP LOCKED``, so
several platform replicas each take different rows and every event is sent by one of them. SQLite serialises
writers, so the same UPDATE is atomic there; run one platform process per SQLite file. A worker that dies
while sending leaves its rows to be reclaimed when the lease ends (the receiver then sees the same
Idempotency-Key again). A row is claimable only when no earlier row of the same subscription and asset is
pending or sending, so events of one asset arrive in order; a dead-lettered row no longer holds later ones
back.

Retries. Network errors, timeouts, 408, 5xx and 429 are retried with exponential backoff and jitter
(``base × 2^(n-1)``, capped, times 0.5–1.0); a ``Retry-After`` (seconds or HTTP date) on 429 or 503 is
honoured instead. Other 4xx answers are final. After ``max_attempts`` tries the row is dead-lettered;
``replay`` re-queues.

Headers sent with every POST::

    Content-Type: application/json
    X-FactoryTwin-Event: alert.raised | alert.acknowledged | ... | workorder.created | workorder.completed | ...
    X-FactoryTwin-Delivery: <delivery row id>           (differs per subscription)
    Idempotency-Key: <event key>                         (the same on every retry and replay: dedupe on it)
    X-FactoryTwin-Timestamp: <unix seconds>
    X-FactoryTwin-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

Receivers should recompute the signature over the raw body and reject timestamps older than a few minutes.

    target.py         TargetPolicy: where deliveries may go, checked on the resolved address of each send (SSRF)
    queue.py          signatures, event bodies (native, Alertmanager v4), enqueue, replay
    worker.py         DeliveryWorker: claim, send, record, backoff, dead letters
    subscriptions.py  what an admin does with subscriptions: create, change, remove, page deliveries, replay
"""

from twin.webhooks.queue import (
    DEAD,
    DELIVERED,
    FORMATS,
    PENDING,
    SENDING,
    alert_dict,
    enqueue_event,
    matches,
    render,
    replay,
    sign,
    verify,
)
from twin.webhooks.target import TargetPolicy, TargetRefused, forbidden_reason
from twin.webhooks.worker import DeliveryWorker, WorkerConfig, backoff_s, retry_after_s

__all__ = [
    "DEAD",
    "DELIVERED",
    "FORMATS",
    "PENDING",
    "SENDING",
    "DeliveryWorker",
    "TargetPolicy",
    "TargetRefused",
    "WorkerConfig",
    "alert_dict",
    "backoff_s",
    "enqueue_event",
    "forbidden_reason",
    "matches",
    "render",
    "replay",
    "retry_after_s",
    "sign",
    "verify",
]
