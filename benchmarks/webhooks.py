"""Webhook delivery rate and latency from twin update to webhook received, against a raw httpx POST loop.

    python benchmarks/webhooks.py [--quick] [--pg]

A threaded HTTP receiver on loopback takes every request. The baseline POSTs the same bodies in a plain
``httpx.Client`` loop. The platform path: the alert engine turns one property change per asset into an alert,
writes it with its delivery row in one transaction, and a ``DeliveryWorker`` claims, signs and POSTs it and
records the outcome. ``ratio`` = platform events/s ÷ raw POSTs/s (target ≥ 0.5). Latency: updates paced one
every 20 ms, each committed and the worker woken, p50/p99 from the update (before the alert engine runs) to
the receiver's arrival, and from the commit of the alert change to the arrival.
Alertmanager 0.25 on the same kind of machine (shared/PEERS.md): 1,017 webhooks/s, p99 5.4 ms (group_wait 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import structlog
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from plant.site import Site
from plant.wire import now_us
from twin.alerts import AlertEngine, PropertyChange
from twin.db import make_engine
from twin.tables import Base, WebhookSubscription
from twin.webhooks import DeliveryWorker, TargetPolicy, WorkerConfig

TARGET = 0.5
PG_ADMIN = os.environ.get("FACTORY_TWIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ALERTMANAGER = {"webhooks_per_s": 1017, "p99_ms": 5.4}


class Sink:
    """A loopback receiver noting each request's arrival (µs) and the alert's raise time from the body."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = now_us()
                raised = json.loads(body).get("alert", {}).get("evidence", {}).get("ts", 0)
                with sink.lock:
                    sink.arrivals.append((got, raised))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


def fleet(n: int) -> Site:
    """``n`` pumps with one HI limit rule, no delays."""
    return Site.model_validate(
        {
            "site": {"id": "bench"},
            "asset_types": {
                "pump": {
                    "properties": {"vib": {"unit": "g"}},
                    "alerts": [
                        {"id": "vib-high", "kind": "limit", "property": "vib", "hi": 1.0, "severity": "high"}
                    ],
                }
            },
            "nodes": [
                {
                    "id": "bench",
                    "kind": "site",
                    "children": [
                        {
                            "id": "hall",
                            "kind": "area",
                            "children": [
                                {"id": f"p{i}", "kind": "machine", "type": "pump"} for i in range(n)
                            ],
                        }
                    ],
                }
            ],
        }
    )


def raw_loop(url: str, bodies: list[bytes]) -> float:
    """POSTs per second of a plain httpx loop."""
    with httpx.Client(timeout=5.0) as client:
        start = time.perf_counter()
        for b in bodies:
            client.post(url, content=b, headers={"Content-Type": "application/json"}).raise_for_status()
        return len(bodies) / (time.perf_counter() - start)


class WorkerThread:
    """A delivery worker on its own event loop thread, like a platform process runs it."""

    def __init__(self, db: Engine) -> None:
        self.worker = DeliveryWorker(
            db,
            policy=TargetPolicy(allow_private=("127.0.0.1",)),  # the sink is on loopback
            config=WorkerConfig(batch=64, concurrency=2, timeout_s=5.0, lease_s=300.0, idle_poll_s=0.2),
        )
        self.stop: asyncio.Event | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()
        while self.stop is None:
            time.sleep(0.01)

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        await self.worker.run(self.stop)

    def close(self) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def wait_for(sink: Sink, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while sink.count() < n and time.monotonic() < deadline:
        time.sleep(0.002)
    if sink.count() < n:
        raise SystemExit(f"only {sink.count()} of {n} webhooks arrived")


def run(db_url: str, events: int, paced: int) -> dict[str, Any]:
    """Rate (queue full) and latency (paced updates) on one database."""
    db = make_engine(db_url)
    Base.metadata.create_all(db)
    sink = Sink()
    with Session(db) as s, s.begin():
        s.add(WebhookSubscription(name="bench", url=sink.url, secret="b" * 32, created_at=now_us()))
    site = fleet(events)
    engine = AlertEngine(site)
    # the queue: one alert per asset, 100 assets per transaction (one ingest batch each)
    t_update = now_us()
    for lo in range(0, events, 100):
        with Session(db) as s, s.begin():
            engine.process(
                s, [PropertyChange(f"p{i}", "vib", 2.0, t_update) for i in range(lo, min(events, lo + 100))]
            )
    with Session(db) as s:
        bodies = [r[0].encode() for r in s.execute(text("SELECT body FROM webhook_deliveries ORDER BY id"))]
    raw = raw_loop(sink.url, bodies)
    sink.arrivals.clear()
    start = time.perf_counter()
    wt = WorkerThread(db)
    wait_for(sink, events)
    rate = events / (time.perf_counter() - start)
    # latency: clear every alert, then raise them again one at a time
    with Session(db) as s, s.begin():
        engine.process(s, [PropertyChange(f"p{i}", "vib", 0.1, now_us()) for i in range(events)])
    wait_for(sink, 2 * events)
    sink.arrivals.clear()
    committed: dict[int, int] = {}
    for i in range(paced):
        update_ts = now_us()
        with Session(db) as s, s.begin():
            engine.process(s, [PropertyChange(f"p{i}", "vib", 2.0, update_ts)])
        committed[update_ts] = now_us()
        wt.worker.wake()
        time.sleep(0.02)
    wait_for(sink, paced)
    wt.close()
    lat = sorted((got - raised) / 1000 for got, raised in sink.arrivals)
    after_commit = sorted((got - committed[raised]) / 1000 for got, raised in sink.arrivals)
    db.dispose()
    return {
        "events_per_s": round(rate, 1),
        "raw_posts_per_s": round(raw, 1),
        "ratio": round(rate / raw, 3),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "commit_to_received_p50_ms": pct(after_commit, 0.5),
        "commit_to_received_p99_ms": pct(after_commit, 0.99),
    }


def pct(values: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank)."""
    return round(values[max(0, min(len(values) - 1, round(q * len(values)) - 1))], 2)


def main() -> None:
    """Run and print one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer events; under a minute")
    ap.add_argument("--pg", action="store_true", help="also on PostgreSQL (FACTORY_TWIN_TEST_PG)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    events, paced = (1000, 150) if args.quick else (5000, 500)
    out: dict[str, Any] = {
        "name": "webhooks",
        "target": TARGET,
        "events": events,
        "paced": paced,
        "alertmanager": ALERTMANAGER,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = run(f"sqlite:///{tmp}/bench.db", events, paced)
    if args.pg:
        name = f"ft_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            out["postgres"] = run(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", events, paced)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    runs = [v for k, v in out.items() if k in ("sqlite", "postgres")]
    out["ratio"] = min(r["ratio"] for r in runs)
    out["p99_ms"] = max(r["p99_ms"] for r in runs)
    out["ok"] = out["ratio"] >= TARGET
    print(json.dumps(out))


if __name__ == "__main__":
    main()
