"""The alert feed: each stored batch's new values are read once, whatever order batches commit in; a batch
stored again adds nothing; a late batch is followed by its property's newest value."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.production.helpers import alert_site
from tests.twin.store_helpers import NOW, batch, value
from twin.alerts import AlertEngine
from twin.alerts.feed import AlertFeed
from twin.db import make_engine
from twin.store import TwinStore


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    from migrations import run

    run.upgrade(db_url)
    made = make_engine(db_url)
    TwinStore(made).sync_site(alert_site())
    yield made
    made.dispose()


def _feed_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM alert_feed")).scalar() or 0)


def test_a_late_batch_is_read_once_then_the_newest_value_again(engine: Engine) -> None:
    store = TwinStore(engine)
    feed = AlertFeed(AlertEngine(alert_site()).watched())
    with Session(engine) as s, s.begin():
        feed.catch_up(s)
    newer = batch(value("p1", "temp", 50.0, ts=NOW), name="n1")
    older = batch(value("p1", "temp", 150.0, ts=NOW - 1_000_000), name="n0")
    store.apply(newer)
    with Session(engine) as s, s.begin():
        first = feed.since(s)
    assert [c.value for c in first.changes] == [50.0]
    assert not first.restore
    store.apply(older)  # committed after a newer batch: a cursor would skip it
    store.apply(newer)  # stored again: duplicates, nothing to judge
    assert _feed_rows(engine) == 1
    with Session(engine) as s, s.begin():
        late = feed.since(s)
    assert [c.value for c in late.late] == [150.0]
    assert not late.changes
    assert [c.value for c in late.restore] == [50.0]  # the rules end where the property is
    assert [([c.value for c in changes], is_late) for changes, _, is_late in late.steps()] == [
        ([150.0], True),
        ([50.0], False),
    ]
    assert _feed_rows(engine) == 0
    with Session(engine) as s, s.begin():
        assert not feed.since(s).changes


def test_rows_stay_when_the_reading_transaction_rolls_back(engine: Engine) -> None:
    TwinStore(engine).apply(batch(value("p1", "temp", 120.0, ts=NOW), name="r1"))
    feed = AlertFeed(AlertEngine(alert_site()).watched())
    with Session(engine) as s:
        s.begin()
        assert [c.value for c in feed.since(s).changes] == [120.0]
        s.rollback()  # a leader killed before its commit
    assert _feed_rows(engine) == 1
    with Session(engine) as s, s.begin():
        fresh = AlertFeed(AlertEngine(alert_site()).watched())
        fresh.catch_up(s)  # the waiting value is left to the feed, not judged from the latest state
        assert [c.value for c in fresh.since(s).changes] == [120.0]


def test_a_batch_partly_stored_before_feeds_only_its_new_values(engine: Engine) -> None:
    store = TwinStore(engine)
    feed = AlertFeed(AlertEngine(alert_site()).watched())
    with Session(engine) as s, s.begin():
        feed.catch_up(s)
    store.apply(batch(value("p1", "temp", 50.0, ts=NOW - 2_000_000), name="a"))
    store.apply(batch(value("p2", "temp", 60.0, ts=NOW - 2_000_000), name="other"))
    with Session(engine) as s, s.begin():
        assert len(feed.since(s).changes) == 2
    again = batch(
        value("p1", "temp", 50.0, ts=NOW - 2_000_000),  # a duplicate
        value("p1", "temp", 130.0, ts=NOW - 1_000_000),
        value("p2", "temp", 61.0, ts=NOW - 1_000_000),
        name="a-again",
    )
    store.apply(again)
    with Session(engine) as s, s.begin():
        assert sorted((c.node, c.value) for c in feed.since(s).changes) == [("p1", 130.0), ("p2", 61.0)]
