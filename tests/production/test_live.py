"""Live updates across API replicas: LISTEN/NOTIFY on PostgreSQL, in-process on SQLite, one interface."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from sqlalchemy import text

from tests.twin.store_helpers import NOW, batch, site, value
from twin.db import make_engine
from twin.live import (
    MAX_PAYLOAD,
    RESYNC,
    LiveBus,
    LiveEvent,
    PostgresLiveBus,
    Subscription,
    decode,
    encode,
    live_bus_for,
)
from twin.store import TwinStore

from .helpers import prepare


def _conninfo(pg_url: str) -> str:
    return pg_url.replace("postgresql+psycopg://", "postgresql://")


async def _until_listening(*buses: PostgresLiveBus) -> None:
    for _ in range(100):
        if all(b.listening.is_set() for b in buses):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("LISTEN connection not up")


def test_in_process_bus_fans_out_filters_and_resyncs_a_slow_reader() -> None:
    async def main() -> None:
        bus = LiveBus()
        every = bus.subscribe()
        only_p2 = bus.subscribe(nodes={"p2"})
        slow = bus.subscribe(maxsize=2)
        # from another thread, as the ingest worker does
        t = threading.Thread(target=bus.publish, args=({"p1": ["temp"], "p2": ["count", "mode"]},))
        t.start()
        t.join()
        assert await every.get(2) == LiveEvent("p1", ("temp",))
        assert await every.get(2) == LiveEvent("p2", ("count", "mode"))
        assert await only_p2.get(2) == LiveEvent("p2", ("count", "mode"))
        bus.publish({"p3": ["x"]})
        assert await slow.get(2) == RESYNC  # three events for a queue of two: re-read everything
        async with only_p2:
            pass
        assert bus.subscribers == 2
        # closing ends an `async for` over the subscription (an SSE response stops)
        reader = asyncio.create_task(_drain(every))
        await asyncio.sleep(0.05)
        await bus.aclose()
        assert await asyncio.wait_for(reader, 2) == [LiveEvent("p3", ("x",))]
        assert bus.subscribers == 0

    asyncio.run(main())


async def _drain(sub: Subscription) -> list[LiveEvent]:
    return [e async for e in sub]


def test_sqlite_engines_share_one_bus_per_database(sqlite_url: str) -> None:
    a, b = make_engine(sqlite_url), make_engine(sqlite_url)
    assert live_bus_for(a) is live_bus_for(b)  # ingest and API of one process meet on it
    assert type(live_bus_for(a)) is LiveBus


@pytest.mark.postgres
def test_notify_reaches_every_replica_and_survives_a_lost_connection(pg_url: str) -> None:
    prepare(pg_url)
    engine = make_engine(pg_url)
    store = TwinStore(engine)
    store.sync_site(site())

    async def main() -> None:
        replica1, replica2 = PostgresLiveBus(_conninfo(pg_url)), PostgresLiveBus(_conninfo(pg_url))
        ingest = PostgresLiveBus(_conninfo(pg_url))
        s1, s2 = replica1.subscribe(), replica2.subscribe(nodes={"p2"})
        await _until_listening(replica1, replica2)
        # what the ingest side does after each stored batch
        b = batch(value("p1", "temp", 20.0), value("p2", "count", 3), value("p2", "mode", "auto"))
        result = store.apply(b, now_us=NOW + 1)
        await asyncio.to_thread(ingest.listener, b, result)
        got = {await s1.get(5), await s1.get(5)}
        assert got == {LiveEvent("p1", ("temp",)), LiveEvent("p2", ("count", "mode"))}
        assert await s2.get(5) == LiveEvent("p2", ("count", "mode"))
        # the LISTEN connection of replica 1 is cut: it reconnects by itself and says what it may have missed
        with engine.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"))
            conn.commit()
        assert await s1.get(10) == RESYNC
        await _until_listening(replica1)
        await asyncio.to_thread(ingest.publish, {"p1": ["temp"]})
        assert await s1.get(5) == LiveEvent("p1", ("temp",))
        for bus in (replica1, replica2, ingest):
            await bus.aclose()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


def test_payloads_stay_under_the_notify_limit_and_bad_ones_resync() -> None:
    changed = {f"node-{i:04d}": [f"prop-{j}" for j in range(40)] for i in range(100)}
    changed["huge"] = [f"p{j}" for j in range(5000)]
    payloads = encode(changed)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD for p in payloads)
    events = [e for p in payloads for e in decode(p)]
    assert {e.node for e in events} == set(changed)
    assert LiveEvent("huge", ()) in events  # too many names for one payload: the node alone
    assert decode("not json") == [RESYNC]
    assert decode(json.dumps([[1]])) == [RESYNC]
