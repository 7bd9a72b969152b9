"""Properties of the ingest path (checks, decoder, store apply), on SQLite and PostgreSQL, under generated input.

Whatever the bytes, no exception escapes and every message ends: stored, or dead-lettered with a reason. In a
batch that mixes good items with hostile ones (extreme numbers, unicode, NUL, overlong strings, absurd
timestamps) every good item is stored and every hostile one is rejected at its index.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from plant.wire import uplink_topic
from twin.dead_letters import DeadLetters
from twin.intake import Intake
from twin.store import TwinStore
from twin.tables import DeadLetter, HistoryRow
from twin.uplink_checks import WireLimits

from .store_helpers import NOW, make_store

ROOT = "prop/v1"
GW = "gw-prop"
TOPIC = uplink_topic(GW, ROOT)
_ts = itertools.count(1)
_names = itertools.count(1)
SETTINGS = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                            HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def intake(db_url: str) -> Iterator[Intake]:
    store = make_store(db_url)
    yield Intake(store, DeadLetters(store.engine), ROOT, WireLimits(max_payload_bytes=64 * 1024, max_string=256))
    store.engine.dispose()


def _dead_count(store: TwinStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(DeadLetter)).scalar_one())


def _ends(intake: Intake, payload: bytes, topic: str = TOPIC) -> None:
    """The message ends: stored, or dead-lettered (and kept) with a reason."""
    before = _dead_count(intake.store)
    outcome = intake.handle(topic, payload)
    if outcome.stored:
        assert outcome.ack is not None
        assert outcome.ack.stored
        return
    assert outcome.dead_letter, f"neither stored nor dead-lettered: {outcome}"
    assert _dead_count(intake.store) == before + 1 or outcome.ack is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@SETTINGS
@given(payload=st.binary(max_size=2000))
def test_any_bytes_end(intake: Intake, payload: bytes) -> None:
    _ends(intake, payload)


@SETTINGS
@given(doc=json_values)
def test_any_json_ends(intake: Intake, doc: Any) -> None:
    _ends(intake, json.dumps(doc).encode())


@SETTINGS
@given(doc=st.fixed_dictionaries({"gateway": st.text(max_size=80), "batch": st.text(max_size=80),
                                  "sent": st.integers()}, optional={"values": st.lists(json_values, max_size=5)}),
       topic_gw=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=20))
def test_any_envelope_on_any_topic_ends(intake: Intake, doc: dict[str, Any], topic_gw: str) -> None:
    _ends(intake, json.dumps(doc).encode(), f"{ROOT}/{topic_gw}/uplink")


# ---- batches of good and hostile items ------------------------------------------------------------------

HUGE_INTS = st.integers(min_value=2**63) | st.integers(max_value=-(2**63) - 1) | st.just(10**400)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
BAD_STRINGS = (st.text(max_size=20).map(lambda s: s + "\x00" + s)
               | st.text(min_size=257, max_size=400))  # NUL, or over the test's 256-character limit
BAD_TIMESTAMPS = st.integers(max_value=0) | st.integers(min_value=2**62)


@st.composite
def hostile(draw: st.DrawFn) -> dict[str, Any]:
    """An item that must be refused, whatever part of it is wrong."""
    prop, value = draw(st.sampled_from([
        ("temp", HUGE_INTS), ("temp", NON_FINITE),
        ("temp", st.floats(min_value=1321, allow_infinity=False)),  # far outside the declared 0-120
        ("temp", st.text(max_size=10)), ("temp", st.booleans()),
        ("count", HUGE_INTS), ("count", st.floats(allow_nan=False, allow_infinity=False).filter(
            lambda x: not x.is_integer())), ("mode", BAD_STRINGS), ("mode", st.integers(-10, 10)),
        ("running", st.integers(2, 5)),
    ]))
    item = {"node": "p1", "prop": prop, "value": draw(value), "ts": NOW + next(_ts)}
    twist = draw(st.sampled_from(["none", "ts", "recv_ts", "node", "prop"]))
    if twist == "ts":
        item["ts"] = draw(BAD_TIMESTAMPS)
    elif twist == "recv_ts":
        item["recv_ts"] = draw(st.integers(min_value=2**63) | st.integers(max_value=-1))
    elif twist == "node":
        item["node"] = draw(st.text(min_size=1, max_size=30).map(lambda s: "ü" + s))
    elif twist == "prop":
        item["prop"] = draw(st.text(max_size=30).map(lambda s: "\x00" + s))
    return item


@st.composite
def good(draw: st.DrawFn) -> dict[str, Any]:
    """An item the twin must store: a new key, a value of the property's type."""
    prop, value = draw(st.sampled_from([
        ("temp", st.floats(min_value=-1200, max_value=1320)),  # declared 0-120, ten spans of margin
        ("count", st.integers(-(2**53), 2**53)), ("running", st.booleans()),
        ("mode", st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                         max_size=256)),
    ]))
    return {"node": draw(st.sampled_from(["p1", "p2"])), "prop": prop, "value": draw(value), "ts": NOW + next(_ts)}


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).replace("Infinity", "1e999").encode()  # 1e999: inf to a JSON parser


@SETTINGS
@given(goods=st.lists(good(), max_size=8), bads=st.lists(hostile(), max_size=8), seed=st.randoms())
def test_good_items_of_a_batch_are_stored_and_hostile_ones_rejected(
    intake: Intake, goods: list[dict[str, Any]], bads: list[dict[str, Any]], seed: Any
) -> None:
    items = [("good", g) for g in goods] + [("bad", b) for b in bads]
    seed.shuffle(items)
    doc = {"gateway": GW, "batch": f"b{next(_names)}", "sent": NOW, "values": [i for _, i in items]}
    outcome = intake.handle(TOPIC, _dumps(doc))
    assert outcome.stored, outcome
    ack = outcome.ack
    assert ack is not None
    bad_at = {n for n, (kind, _) in enumerate(items) if kind == "bad"}
    assert {r.index for r in ack.rejected} == bad_at
    assert ack.accepted == len(goods)
    with intake.store.engine.connect() as conn:
        stored = set(conn.execute(select(HistoryRow.ts).where(HistoryRow.ts.in_([g["ts"] for g in goods])))
                     .scalars())
    assert stored == {g["ts"] for g in goods}


def test_a_huge_array_ends_and_its_good_items_are_stored(intake: Intake) -> None:
    values = [{"node": "nowhere", "prop": "x", "value": i, "ts": NOW} for i in range(600)]
    values += [{"node": "p1", "prop": "temp", "value": 1.0, "ts": NOW + next(_ts)} for _ in range(50)]
    outcome = intake.handle(TOPIC, json.dumps({"gateway": GW, "batch": "huge", "sent": NOW, "values": values}).encode())
    assert outcome.ack is not None
    assert (outcome.stored, outcome.ack.accepted, len(outcome.ack.rejected)) == (True, 50, 600)
    too_big = json.dumps({"gateway": GW, "batch": "huger", "sent": NOW, "values": values * 10}).encode()
    assert intake.handle(TOPIC, too_big).dead_letter == "too_large"
