"""Fuzzing the MQTT payload path: any payload through the real decoder and pipeline never crashes the agent,
every reading is stored or refused with a reason, and whatever is stored is a valid uplink batch."""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import AgentSettings
from edge_agent.connectors.factory import build_connectors
from edge_agent.deadletter import DeadLetterFile
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline, Stage
from edge_agent.reading import ReadingBatch
from edge_agent.uplink import build_payload
from plant.site import Site, parse_site
from plant.wire import decode_batch, now_us
from tests.edge.conftest import SITE_YAML

SITE = parse_site(SITE_YAML, "fuzz")
FIELDS = ["temp", "p", "hz", "c", "r", "m", "ts", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from([now_us() / 1e6, now_us() // 1000, "2026-11-23T10:00:00Z", 946_684_799, -1, 1e30]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(FIELDS), children, max_size=8)
    ),
    max_leaves=20,
)


def _encode(doc: object) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=100),
    documents.map(_encode),
    st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=8).map(_encode),
)


async def _run(site: Site, items: list[tuple[str, bytes]], data: Path) -> tuple[int, int, int]:
    (conn,) = build_connectors(site, AgentSettings())
    box = await Outbox.open(data / "o.sqlite")
    pipe = Pipeline(
        Stage.build(site, AgentSettings()), box, DeadLetterFile(data / "dead.jsonl"), commit_window_ms=0
    )
    acks: list[int] = []
    readings = 0
    for i, (topic, payload) in enumerate(items):
        rs, rej = conn.decoder.decode(topic, payload, now_us())
        readings += len(rs)
        await pipe.submit(ReadingBatch(rs, ack=lambda i=i: acks.append(i), rejected=rej), "plc")
    await pipe.flush()
    assert acks == list(range(len(items)))  # every message acked once, bad or good
    batch = decode_batch(build_payload("gw", "b", box.db.take(10**9), now_us()))  # stored = valid wire items
    for v in batch.values:
        assert not (isinstance(v.value, float) and not math.isfinite(v.value))
    stored = len(batch.values)
    await box.close()
    return readings, stored, pipe.rejected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.tuples(st.sampled_from(["p/1", "p/2", "p/3", "p/1/x"]), payloads), max_size=12))
def test_any_payload_is_stored_or_refused_never_crashes(items: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        readings, stored, rejected = asyncio.run(_run(SITE, items, Path(d)))
    assert stored <= readings
    assert stored + rejected >= readings  # each reading stored or refused with a reason
