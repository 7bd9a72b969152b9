"""Flood control: a gateway over its values-per-second budget gets its whole batch refused, with a retry time,
and the other gateways are not affected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plant.mqtt import BrokerUrl
from tests.mqtt_peer import forget_sessions
from twin.budget import GatewayBudget
from twin.ingest import Ingestor
from twin.metrics import IngestCollector, registry_of
from twin.store import TwinStore

from .store_helpers import NOW, batch, history_count, make_store, value
from .uplink_client import UplinkClient


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_admits_the_rate_and_the_burst() -> None:
    clock = Clock()
    budget = GatewayBudget(100, 200, clock)
    assert budget.take("a", 200) is None  # a full bucket: the burst
    wait = budget.take("a", 50)
    assert wait == pytest.approx(0.5)  # 50 tokens at 100/s
    assert budget.take("b", 200) is None  # another gateway has its own bucket
    clock.t += 0.5
    assert budget.take("a", 50) is None
    assert budget.refused_batches() == {"a": 1}


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    budget = GatewayBudget(100, 200, clock)
    assert budget.take("a", 1000) is None
    wait = budget.take("a", 1)
    assert wait == pytest.approx(8.01)  # 800 of debt, then one token
    clock.t += 10
    assert budget.take("a", 150) is None


def test_no_budget_admits_everything() -> None:
    budget = GatewayBudget(0, 0)
    assert not budget.enabled
    assert all(budget.take("a", 10**9) is None for _ in range(3))


def test_buckets_of_many_gateway_ids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from twin import budget as module

    monkeypatch.setattr(module, "MAX_GATEWAYS", 10)
    clock = Clock()
    b = GatewayBudget(1, 1, clock)
    for i in range(100):
        b.take(f"gw-{i}", 1)
        b.take(f"gw-{i}", 1)  # refused: empty bucket
        clock.t += 5  # the earlier buckets refill: forgotten when room is needed
    assert len(b._buckets) <= 10
    assert len(b.refused_batches()) <= 11  # ten gateways and "other"


@pytest.fixture
def store(sqlite_url: str) -> Iterator[TwinStore]:
    s = make_store(sqlite_url)
    yield s
    s.engine.dispose()


@pytest.mark.mosquitto
def test_over_budget_batches_are_refused_whole_and_others_still_land(
    store: TwinStore, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    root = f"{topic_prefix}/v1"
    ingest = Ingestor(store, BrokerUrl(*mqtt_broker), client_id=f"{root}-ingest", topic_root=root,
                      budget=GatewayBudget(rate=5, burst=10)).start()
    flood = UplinkClient(*mqtt_broker, root, gateway="flood")
    calm = UplinkClient(*mqtt_broker, root, gateway="calm")
    try:
        flood.send(batch(*(value(v=float(i), ts=NOW + i) for i in range(10)), name="f1", gateway="flood"))
        first = flood.ack()
        assert (first.stored, first.accepted) == (True, 10)
        flood.send(batch(*(value(v=1.0, ts=NOW + 100 + i) for i in range(5)), name="f2", gateway="flood"))
        over = flood.ack()
        assert (over.batch, over.stored, over.code, over.accepted) == ("f2", False, "over_budget", 0)
        assert over.retry_after is not None
        assert 0.5 < over.retry_after <= 1.0
        assert over.error
        assert "budget" in over.error
        calm.send(batch(value("p2", v=3.0, ts=NOW), name="c1", gateway="calm"))
        ok = calm.ack()
        assert (ok.stored, ok.accepted) == (True, 1)
        assert history_count(store.engine) == 11  # nothing of f2
        metrics = registry_of([IngestCollector(ingest)])
        assert metrics.get_sample_value("twin_ingest_over_budget_total", {"gateway": "flood"}) == 1
        assert metrics.get_sample_value("twin_ingest_over_budget_total", {"gateway": "calm"}) is None
    finally:
        flood.close()
        calm.close()
        ingest.stop()
        forget_sessions(*mqtt_broker, [f"{root}-ingest"])


def test_settings_give_every_ingestor_a_budget(store: TwinStore) -> None:
    from twin.config import TwinSettings

    settings = TwinSettings(mqtt_url="mqtt://127.0.0.1:1", ingest_gateway_budget=123, ingest_gateway_burst=456)
    ingest = Ingestor.from_settings(store, settings)
    assert (ingest.budget.rate, ingest.budget.burst) == (123, 456)


def test_refusals_are_logged_once_per_interval_per_gateway() -> None:
    clock = Clock()
    budget = GatewayBudget(1, 1, clock)
    assert budget.should_report("a")
    assert not budget.should_report("a")
    assert budget.should_report("b")
    clock.t += 10
    assert budget.should_report("a")
