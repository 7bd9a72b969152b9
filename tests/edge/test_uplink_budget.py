"""The agent's uplink against the real platform ingest with a tight budget: refused batches wait for the
retry time the ack names and go again; every value is stored, none twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edge_agent.platform_link import PlatformLink
from edge_agent.uplink import Uplink
from plant.mqtt import BrokerUrl
from plant.wire import Value, ack_topic
from tests.mqtt_peer import forget_sessions
from tests.twin.store_helpers import NOW, history_count, make_store
from twin.budget import GatewayBudget
from twin.ingest import Ingestor

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
N = 3000
RATE = 600.0


def test_agent_honours_over_budget_and_loses_nothing(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, sqlite_url: str
) -> None:
    gateway = f"{topic_prefix}-gw"
    store = make_store(sqlite_url)
    ingest = Ingestor(store, BrokerUrl(*mqtt_broker), client_id=f"{topic_prefix}-ingest", gateway=gateway,
                      budget=GatewayBudget(rate=RATE, burst=RATE)).start()

    async def main() -> Uplink:
        box = await Outbox.open(tmp_path / "o.sqlite", chunk_items=100)
        await box.put([Value(node="p1", prop="temp", value=float(i % 100), ts=NOW + i) for i in range(N)])
        link = PlatformLink(BrokerUrl(*mqtt_broker, False), f"{topic_prefix}-agent", [ack_topic(gateway)],
                            lambda _t, _p: None)
        up = Uplink(box, link, gateway, batch_size=500, interval_s=0.05, ack_timeout_s=10.0)
        link.on_message = up.on_message
        await link.start()
        task = asyncio.create_task(up.run())
        loop = asyncio.get_running_loop()
        started = loop.time()
        while box.db.count() and loop.time() < started + 60:  # noqa: ASYNC110 - acks come from the ingest thread
            await asyncio.sleep(0.05)
        elapsed = loop.time() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.stop()
        assert box.db.count() == 0
        await box.close()
        # the budget paced the drain: N values at RATE/s after a burst of RATE
        assert elapsed >= (N - RATE) / RATE * 0.8
        return up

    try:
        up = asyncio.run(main())
        assert up.stats.over_budget > 0
        # it waits as told instead of hammering: about one refusal per pause, not one per poll
        assert up.stats.over_budget <= 3 * N / 500
        assert up.stats.items_acked == N
        assert up.stats.timeouts == 0
        assert history_count(store.engine) == N  # every value, once
        stats = ingest.stats()
        assert (stats.values, stats.duplicates, stats.failed) == (N, 0, 0)
        assert ingest.budget.refused_batches()[gateway] == up.stats.over_budget
    finally:
        ingest.stop()
        forget_sessions(*mqtt_broker, [f"{topic_prefix}-ingest"])
        store.engine.dispose()
