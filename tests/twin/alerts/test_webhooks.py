"""Webhooks against a real receiver on loopback that fails, times out, answers 500 and 429 on purpose."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from plant.site import Site
from plant.wire import now_us
from tests.twin.alerts.conftest import fleet_site
from tests.twin.alerts.receiver import Receiver
from twin.alerts import AlertEngine, PropertyChange
from twin.db import make_engine
from twin.tables import WebhookDelivery, WebhookSubscription
from twin.webhooks import DeliveryWorker, TargetPolicy, WorkerConfig, replay, verify

FAST = WorkerConfig(
    batch=32, timeout_s=0.5, lease_s=5.0, backoff_base_s=0.05, backoff_cap_s=0.2, idle_poll_s=0.05
)
SECRET = "s3cr3t-for-tests"
LOCAL = TargetPolicy(allow_private=("127.0.0.1",))  # the receiver is on loopback: the plant's own, allowed


def subscribe(db: Engine, url: str, **kw: object) -> int:
    with Session(db) as s, s.begin():
        sub = WebhookSubscription(name="test", url=url, secret=SECRET, created_at=now_us(), **kw)
        s.add(sub)
        s.flush()
        return sub.id


def churn(db: Engine, site: Site, rounds: int, assets: int) -> list[str]:
    """Raise and clear the vibration alert of ``assets`` pumps ``rounds`` times: 2 events each time."""
    engine = AlertEngine(site, started=0)
    t0 = now_us()
    for r in range(rounds):
        for high in (True, False):
            with Session(db) as s, s.begin():
                ts = t0 + (2 * r + high) * 1000
                engine.process(
                    s, [PropertyChange(f"p{i}", "vib", 2.0 if high else 0.1, ts) for i in range(assets)]
                )
    with Session(db) as s:
        return list(s.scalars(select(WebhookDelivery.event_key).order_by(WebhookDelivery.id)))


def wait_until(until: Callable[[], bool], timeout: float) -> None:
    """Poll ``until()`` for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.02)


def drain(worker: DeliveryWorker, db: Engine, *, until: Callable[[], bool], timeout: float = 30.0) -> None:
    """Run the worker (its asyncio entry point, as the platform does) until ``until()`` holds."""

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.to_thread(wait_until, until, timeout)
        stop.set()
        await task

    asyncio.run(go())


def statuses(db: Engine) -> dict[str, int]:
    with Session(db) as s:
        rows = s.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).all()
    return {k: v for k, v in rows}


def assert_order_per_asset(receiver: Receiver, expected: list[str]) -> None:
    keys = receiver.first_delivery_keys()
    assert sorted(keys) == sorted(expected), "lost or unexpected events"
    by_asset: dict[str, list[int]] = {}
    for r in receiver.delivered():
        body = r.json()
        by_asset.setdefault(body["alert"]["node"], []).append(body["sequence"])
    for seqs in by_asset.values():
        firsts = list(dict.fromkeys(seqs))
        assert firsts == sorted(firsts), "events of one asset arrived out of order"


def test_delivered_signed_once_in_order(db: Engine) -> None:
    site = fleet_site(3)
    with Receiver() as rx:
        subscribe(db, rx.url)
        keys = churn(db, site, rounds=3, assets=3)
        assert len(keys) == 18
        drain(DeliveryWorker(db, policy=LOCAL, config=FAST), db, until=lambda: statuses(db).get("delivered") == 18)
    assert statuses(db) == {"delivered": 18}
    assert [r.key for r in rx.requests] == rx.first_delivery_keys()  # nothing sent twice
    assert_order_per_asset(rx, keys)
    r = rx.requests[0]
    assert verify(SECRET, r.headers["x-factorytwin-timestamp"], r.body, r.headers["x-factorytwin-signature"])
    assert not verify(
        "other", r.headers["x-factorytwin-timestamp"], r.body, r.headers["x-factorytwin-signature"]
    )
    assert r.headers["x-factorytwin-event"] == "alert.raised"
    assert r.json()["alert"]["rule"] == "vib-high"


def test_failures_retried_nothing_lost_nothing_repeated(db: Engine) -> None:
    script = {0: "500", 1: "drop", 2: "slow:1.0", 3: "429:1", 5: "503", 7: "drop", 9: "500"}
    retry_times: dict[str, float] = {}

    def plan(n: int, body: bytes) -> str:
        return script.get(n, "ok")

    site = fleet_site(4)
    with Receiver(plan) as rx:
        subscribe(db, rx.url)
        keys = churn(db, site, rounds=3, assets=4)
        worker = DeliveryWorker(db, policy=LOCAL, config=FAST)
        drain(worker, db, until=lambda: statuses(db).get("delivered") == len(keys))
    assert statuses(db) == {"delivered": len(keys)}
    assert_order_per_asset(rx, keys)
    # the only key seen twice with success is the slow one: the receiver answered after our timeout
    accepted = [r.key for r in rx.delivered()]
    assert len(accepted) - len(set(accepted)) <= 1
    # 429 with Retry-After: 1 was honoured
    throttled = rx.requests[3]
    for r in rx.requests[4:]:
        if r.key == throttled.key:
            retry_times[r.key] = r.at - throttled.at
            break
    assert retry_times[throttled.key] >= 0.95


def test_dead_letter_after_n_then_replay(db: Engine) -> None:
    site = fleet_site(1)
    failing = threading.Event()
    failing.set()
    with Receiver(lambda n, body: "500" if failing.is_set() else "ok") as rx:
        sub = subscribe(db, rx.url, max_attempts=3)
        keys = churn(db, site, rounds=1, assets=1)  # raise, return on one asset
        drain(DeliveryWorker(db, policy=LOCAL, config=FAST), db, until=lambda: statuses(db).get("dead") == 2)
        assert statuses(db) == {"dead": 2}
        assert len(rx.requests) == 6  # 3 tries each; a dead row does not hold the next one back
        with Session(db) as s:
            errors = s.scalars(select(WebhookDelivery.last_error)).all()
        assert all("gave up after 3 tries" in e for e in errors)
        failing.clear()
        with Session(db) as s, s.begin():
            assert replay(s, subscription_id=sub) == 2
        drain(DeliveryWorker(db, policy=LOCAL, config=FAST), db, until=lambda: statuses(db).get("delivered") == 2)
    assert rx.first_delivery_keys() == keys


def test_restart_loses_nothing(db: Engine) -> None:
    site = fleet_site(2)
    with Receiver() as rx:
        subscribe(db, rx.url)
        keys = churn(db, site, rounds=2, assets=2)
        # a worker claims a batch and dies before sending (its process is killed): its lease runs out
        dying = DeliveryWorker(db, policy=LOCAL, config=WorkerConfig(batch=3, timeout_s=0.1, lease_s=0.3))
        assert len(dying._claim()) == 2  # one per asset: later events of an asset wait for earlier ones
        db.dispose()
        # the platform restarts: a new engine on the same database
        fresh = make_engine(db.url.render_as_string(hide_password=False))
        try:
            drain(
                DeliveryWorker(fresh, policy=LOCAL, config=FAST),
                fresh,
                until=lambda: statuses(fresh).get("delivered") == len(keys),
            )
            assert statuses(fresh) == {"delivered": len(keys)}
        finally:
            fresh.dispose()
    assert_order_per_asset(rx, keys)
    assert len(rx.requests) == len(keys)


def test_receiver_down_then_up(db: Engine) -> None:
    site = fleet_site(2)
    with Receiver() as rx:
        url = rx.url
    subscribe(db, url)  # nothing listens there now: connection refused
    keys = churn(db, site, rounds=1, assets=2)
    worker = DeliveryWorker(db, policy=LOCAL, config=FAST)

    def attempts() -> list[int]:
        with Session(db) as s:
            return list(s.scalars(select(WebhookDelivery.attempts)).all())

    drain(worker, db, until=lambda: max(attempts()) >= 2, timeout=10)  # retried, however loaded the machine
    assert statuses(db) == {"pending": 4}
    assert max(attempts()) >= 2
    rx2 = Receiver()
    with Session(db) as s, s.begin():
        s.execute(WebhookSubscription.__table__.update().values(url=rx2.url))
    with rx2:
        drain(DeliveryWorker(db, policy=LOCAL, config=FAST), db, until=lambda: statuses(db).get("delivered") == 4)
    assert_order_per_asset(rx2, keys)


@pytest.mark.postgres
def test_two_workers_on_postgres_deliver_each_event_once(pg_url: str, pg_db: Engine) -> None:
    site = fleet_site(20)
    with Receiver(lambda n, body: "500" if n % 7 == 3 else "ok") as rx:
        subscribe(pg_db, rx.url)
        keys = churn(pg_db, site, rounds=3, assets=20)
        engines = [make_engine(pg_url), make_engine(pg_url)]
        workers = [
            DeliveryWorker(e, policy=LOCAL, config=FAST, worker_id=f"replica-{i}") for i, e in enumerate(engines)
        ]

        async def both() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(w.run(stop)) for w in workers]
            await asyncio.to_thread(wait_until, lambda: statuses(pg_db).get("delivered") == len(keys), 30)
            stop.set()
            await asyncio.gather(*tasks)

        asyncio.run(both())
        for e in engines:
            e.dispose()
    assert statuses(pg_db) == {"delivered": len(keys)}
    accepted = [r.key for r in rx.delivered()]
    assert sorted(accepted) == sorted(keys)  # each event delivered once, by one of the two replicas
    assert_order_per_asset(rx, keys)
    with Session(pg_db) as s:
        claimers = {c.split(":")[0] for c in s.scalars(select(WebhookDelivery.claimed_by))}
    assert claimers == {"replica-0", "replica-1"}


def test_alertmanager_format_and_filters(db: Engine) -> None:
    site = fleet_site(2)
    with Receiver() as rx:
        subscribe(db, rx.url, format="alertmanager", subtree="p1")
        subscribe(db, rx.url, priorities=["low"])  # matches nothing: the pumps' alerts are high
        churn(db, site, rounds=1, assets=2)
        drain(DeliveryWorker(db, policy=LOCAL, config=FAST), db, until=lambda: statuses(db).get("delivered") == 2)
    bodies = [r.json() for r in rx.requests]
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    assert bodies[0]["version"] == "4"
    assert bodies[0]["alerts"][0]["labels"]["node"] == "p1"
    assert bodies[0]["alerts"][0]["labels"]["severity"] == "high"
    assert bodies[1]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"


def test_a_host_that_left_the_allowlist_is_dead_lettered(db: Engine) -> None:
    with Receiver() as rx:
        subscribe(db, rx.url)
        churn(db, fleet_site(1), rounds=1, assets=1)
        policy = TargetPolicy(hosts=("hooks.example.com",), allow_private=("127.0.0.1",))
        drain(DeliveryWorker(db, policy=policy, config=FAST), db, until=lambda: statuses(db).get("dead") == 2)
    assert rx.requests == []
    with Session(db) as s:
        assert "allowlist" in s.scalars(select(WebhookDelivery.last_error)).first()


def test_bodies_are_stable_across_retries(db: Engine) -> None:
    with Receiver(lambda n, body: "500" if n == 0 else "ok") as rx:
        subscribe(db, rx.url)
        churn(db, fleet_site(1), rounds=1, assets=1)
        drain(DeliveryWorker(db, policy=LOCAL, config=FAST), db, until=lambda: statuses(db).get("delivered") == 2)
    first, second = rx.requests[0], rx.requests[1]
    assert first.key == second.key
    assert first.body == second.body
    assert json.loads(first.body)["id"] == first.key


def test_disabled_subscription_pauses_then_resumes(db: Engine) -> None:
    with Receiver() as rx:
        sub = subscribe(db, rx.url)
        keys = churn(db, fleet_site(1), rounds=1, assets=1)
        with Session(db) as s, s.begin():
            s.get(WebhookSubscription, sub).enabled = False
        assert DeliveryWorker(db, policy=LOCAL, config=FAST).run_batch() == 0
        assert statuses(db) == {"pending": 2}
        with Session(db) as s, s.begin():
            s.get(WebhookSubscription, sub).enabled = True
        drain(DeliveryWorker(db, policy=LOCAL, config=FAST), db, until=lambda: statuses(db).get("delivered") == 2)
    assert rx.first_delivery_keys() == keys
