"""Outbox → platform over the real Mosquitto, against a small ack responder standing in for the platform."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from edge_agent import metrics
from edge_agent.outbox import Chunk, Outbox, encode
from edge_agent.platform_link import PlatformLink
from edge_agent.uplink import Uplink, build_payload
from plant.mqtt import BrokerUrl
from plant.wire import Frame, Value, ack_topic, decode_batch
from tests.edge.conftest import AckResponder

pytestmark = pytest.mark.mosquitto
T0 = 1_763_900_000_000_000


def values(n: int, start: int = 0) -> list[Value]:
    return [Value(node="m", prop="p", value=float(i), ts=T0 + i) for i in range(start, start + n)]


def test_payload_is_a_valid_uplink_batch() -> None:
    chunks = [
        Chunk(1, 0, 2, 0, encode(0, values(2))),
        Chunk(2, 1, 1, 0, encode(1, [Frame(node="m", ts=T0, values={"p": None})])),
    ]
    batch = decode_batch(build_payload("gw-1", "b1", chunks, 5))
    assert (batch.gateway, batch.batch, batch.sent, len(batch.values), len(batch.frames)) == (
        "gw-1",
        "b1",
        5,
        2,
        1,
    )
    assert batch.values == values(2)


async def _run_uplink(
    tmp_path: Path,
    broker: tuple[str, int],
    gateway: str,
    n: int,
    *,
    ack_timeout_s: float = 10.0,
    wait_s: float = 20.0,
) -> tuple[Outbox, Uplink]:
    box = await Outbox.open(tmp_path / "o.sqlite", chunk_items=100)
    await box.put(values(n))
    link = PlatformLink(
        BrokerUrl(broker[0], broker[1], False), f"agent-{gateway}", [ack_topic(gateway)], lambda _t, _p: None
    )
    up = Uplink(box, link, gateway, batch_size=500, interval_s=0.05, ack_timeout_s=ack_timeout_s)
    link.on_message = up.on_message
    await link.start()
    task = asyncio.create_task(up.run())
    loop = asyncio.get_running_loop()
    end = loop.time() + wait_s
    while box.db.count() and loop.time() < end:  # noqa: ASYNC110 - acks arrive from another process
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await link.stop()
    return box, up


def test_drains_outbox_and_deletes_only_acked(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    async def main() -> None:
        box, up = await _run_uplink(tmp_path, mqtt_broker, topic_prefix, 3000)
        assert box.db.count() == 0
        assert len(responder.value_keys()) == 3000
        assert up.stats.items_acked == 3000
        await box.close()

    asyncio.run(main())


def test_refused_and_unanswered_batches_are_resent(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    responder.modes = ["refuse", "silent", "refuse"]

    async def main() -> None:
        box, up = await _run_uplink(tmp_path, mqtt_broker, topic_prefix, 1200, ack_timeout_s=0.5)
        assert box.db.count() == 0
        assert len(responder.value_keys()) == 1200  # every item arrived, stored once
        assert up.stats.refused == 2
        assert up.stats.timeouts >= 1
        await box.close()

    asyncio.run(main())


def test_rejected_items_are_counted_not_resent(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, responder: AckResponder
) -> None:
    responder.reject_first_value = True
    before = (
        metrics.REGISTRY.get_sample_value(
            "ft_agent_rejected_total", {"source": "platform", "reason": "out_of_range"}
        )
        or 0
    )

    async def main() -> None:
        box, up = await _run_uplink(tmp_path, mqtt_broker, topic_prefix, 1000)
        assert box.db.count() == 0
        assert up.stats.items_rejected == up.stats.batches_acked
        assert responder.batches == up.stats.batches_acked  # nothing sent twice
        await box.close()

    asyncio.run(main())
    after = metrics.REGISTRY.get_sample_value(
        "ft_agent_rejected_total", {"source": "platform", "reason": "out_of_range"}
    )
    assert after is not None
    assert after > before


def test_bad_ack_payload_is_ignored(tmp_path: Path) -> None:
    async def main() -> None:
        box = await Outbox.open(tmp_path / "o.sqlite")
        link = PlatformLink(BrokerUrl("127.0.0.1", 1, False), "x", [], lambda _t, _p: None)
        up = Uplink(box, link, "gw")
        up.on_message("t", b"{not json")
        up.on_message("t", b'{"gateway": "gw", "batch": "unknown", "stored": true}')
        await box.close()

    asyncio.run(main())
