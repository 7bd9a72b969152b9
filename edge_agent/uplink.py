"""Outbox → platform: UplinkBatch messages at QoS 1, deleted from the outbox only on the platform's Ack.

Up to ``max_inflight`` batches are out at once. Each batch takes the oldest chunks first, leaving
``live_share`` of its room to the newest ones, so a drain after an outage never starves live data. A batch is
sent again when its ack does not come within ``ack_timeout`` or the ack says ``stored: false``; items the
platform rejected are logged and counted, and not sent again. A resent batch gets a new batch id; its items
keep their keys, so the platform stores each once. An ack refusing a batch as ``over_budget`` (the gateway sent
more values per second than the platform allows it) holds that batch and every new one for the ``retry_after``
seconds it names: flow control, not a failure, so the backoff of failures does not grow.

The batch JSON is assembled from the stored chunk bodies without parsing them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field

import structlog

from edge_agent import metrics
from edge_agent.config import AgentSettings
from edge_agent.errors import ConnectorError, OutboxError
from edge_agent.outbox import KINDS, Chunk, Outbox
from edge_agent.platform_link import PlatformLink
from plant.errors import WireError
from plant.wire import OVER_BUDGET, TOPIC_ROOT, WIRE_VERSION, Ack, decode_ack, uplink_topic

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Inflight:
    ids: list[int]
    counts: list[int]
    sent: float
    deadline: float
    done: bool = False
    refused: bool = False  # the platform could not store it: held until the deadline, then sent again


@dataclass(slots=True)
class UplinkStats:
    """Counts since start, for tests, logs and benchmarks."""

    batches_sent: int = 0
    batches_acked: int = 0
    resent: int = 0
    items_acked: int = 0
    items_rejected: int = 0
    refused: int = 0
    over_budget: int = 0
    timeouts: int = 0
    per_kind: list[int] = field(default_factory=lambda: [0, 0, 0])


def build_payload(gateway: str, batch: str, chunks: list[Chunk], sent_us: int) -> bytes:
    """An UplinkBatch as JSON bytes, from chunk bodies (already valid JSON items)."""
    parts: list[list[bytes]] = [[], [], []]
    for c in chunks:
        parts[c.kind].append(c.body)
    head = (
        f'{{"v":{WIRE_VERSION},"gateway":{json.dumps(gateway)},"batch":"{batch}","sent":{sent_us},'.encode()
    )
    return b"".join(
        (
            head,
            b'"values":[',
            b",".join(parts[0]),
            b'],"frames":[',
            b",".join(parts[1]),
            b'],"diagnoses":[',
            b",".join(parts[2]),
            b"]}",
        )
    )


class Uplink:
    """Sends the outbox to the platform and deletes what the platform acknowledged.

    Args:
        outbox: the agent's outbox.
        link: the MQTT link to the platform (its messages must be routed to ``on_message``).
        gateway: this gateway's id.
        batch_size: items per batch at most.
        interval_s: wait this long for more items when the outbox runs dry.
        max_inflight: unacknowledged batches at most.
        ack_timeout_s: resend after this long without an ack.
        live_share: part of each batch reserved for the newest items.
        retry_delay_s: first wait before resending a batch the platform could not store (doubles, up to 60 s).
        topic_root: the root of the uplink topic (the platform's ``mqtt_topic_root``).
    """

    def __init__(
        self,
        outbox: Outbox,
        link: PlatformLink,
        gateway: str,
        *,
        batch_size: int = 2000,
        interval_s: float = 0.2,
        max_inflight: int = 8,
        ack_timeout_s: float = 10.0,
        live_share: float = 0.25,
        retry_delay_s: float = 1.0,
        topic_root: str = TOPIC_ROOT,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.gateway = gateway
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_inflight = max_inflight
        self.ack_timeout_s = ack_timeout_s
        self.live_share = live_share
        self.retry_delay_s = retry_delay_s
        self._refusals = 0
        self._paused_until = 0.0  # monotonic: no new batch before this (the platform's over_budget ack)
        self.topic = uplink_topic(gateway, topic_root)
        self.stats = UplinkStats()
        self._inflight: dict[str, _Inflight] = {}
        self._slot = asyncio.Event()
        self.drained = asyncio.Event()  # set while no batch awaits its ack
        self.drained.set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, outbox: Outbox, link: PlatformLink, settings: AgentSettings) -> Uplink:
        """The uplink of the gateway ``settings`` describe, with their batch size, pacing, window and timeout."""
        uplink = cls(outbox, link, settings.gateway_id, topic_root=settings.topic_root)
        uplink.configure(settings)
        return uplink

    def configure(self, settings: AgentSettings) -> None:
        """Take the tunables of ``settings``: at the start, and again on a reload."""
        self.batch_size, self.interval_s = settings.uplink_batch_size, settings.uplink_interval_s
        self.max_inflight, self.ack_timeout_s = settings.uplink_max_inflight, settings.ack_timeout_s
        self.live_share = settings.uplink_live_share

    async def run(self) -> None:
        """Send until cancelled (the link must be started)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._send_loop())
            tg.create_task(self._timeout_loop())

    async def _send_loop(self) -> None:
        while True:
            await self.link.connected.wait()
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            if len(self._inflight) >= self.max_inflight:
                self._slot.clear()
                await self._slot.wait()
                continue
            self.outbox.changed.clear()
            exclude = [i for f in self._inflight.values() for i in f.ids]
            chunks = await self.outbox.take(self.batch_size, exclude, self.live_share)
            if not chunks:
                await _wait(self.outbox.changed, self.interval_s)
                continue
            try:
                self._send(chunks)
            except ConnectorError as exc:
                log.warning("uplink_publish_failed", error=str(exc))
                await _wait(self.link.connected, self.interval_s)

    def _send(self, chunks: list[Chunk]) -> None:
        batch = uuid.uuid4().hex
        payload = build_payload(self.gateway, batch, chunks, time.time_ns() // 1000)
        self.link.publish(self.topic, payload)
        counts = [0, 0, 0]
        for c in chunks:
            counts[c.kind] += c.n
        now = time.monotonic()
        self._inflight[batch] = _Inflight([c.id for c in chunks], counts, now, now + self.ack_timeout_s)
        self.drained.clear()
        self.stats.batches_sent += 1
        metrics.UPLINK_BATCHES.labels("sent").inc()

    async def _timeout_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self.ack_timeout_s / 4))
            now = time.monotonic()
            for batch, f in list(self._inflight.items()):
                if not f.done and now > f.deadline:
                    del self._inflight[batch]
                    self.stats.resent += 1
                    if not f.refused:
                        self.stats.timeouts += 1
                        metrics.UPLINK_BATCHES.labels("timeout").inc()
                        log.warning("uplink_ack_timeout", batch=batch, items=sum(f.counts))
                    self._released()

    def on_message(self, topic: str, payload: bytes) -> None:
        """Route one message from the platform (an Ack) — call on the event loop."""
        try:
            ack = decode_ack(payload)
        except WireError as exc:
            log.warning("uplink_bad_ack", topic=topic, error=str(exc))
            metrics.REJECTED.labels("platform", "bad_ack").inc()
            return
        f = self._inflight.get(ack.batch)
        if f is None or f.done:
            log.debug("uplink_unknown_ack", batch=ack.batch)  # a late or repeated ack: its batch was resent
            return
        if not ack.stored and ack.code == OVER_BUDGET:
            self._over_budget(ack, f)
            return
        if not ack.stored:
            if f.refused:
                return
            self._refusals += 1
            f.refused = True  # keep its items out of new batches for a while: the platform is struggling
            f.deadline = time.monotonic() + min(self.retry_delay_s * 2 ** min(self._refusals - 1, 6), 60.0)
            self.stats.refused += 1
            metrics.UPLINK_BATCHES.labels("not_stored").inc()
            log.warning(
                "uplink_not_stored",
                batch=ack.batch,
                error=ack.error,
                retry_in_s=round(f.deadline - time.monotonic(), 1),
            )
            return
        self._refusals = 0
        f.done = True
        for r in ack.rejected:
            metrics.REJECTED.labels("platform", r.reason[:40]).inc()
            log.warning("uplink_item_rejected", batch=ack.batch, kind=r.kind, index=r.index, reason=r.reason)
        self.stats.items_rejected += len(ack.rejected)
        metrics.UPLINK_LATENCY.observe(time.monotonic() - f.sent)
        task = asyncio.get_running_loop().create_task(self._acked(ack.batch, f))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _over_budget(self, ack: Ack, f: _Inflight) -> None:
        """Hold this batch and send nothing new until the platform's ``retry_after`` has passed."""
        wait = min(max(ack.retry_after or self.retry_delay_s, 0.05), 60.0)
        until = time.monotonic() + wait
        f.refused = True
        f.deadline = until
        self._paused_until = max(self._paused_until, until)
        self.stats.over_budget += 1
        metrics.UPLINK_BATCHES.labels("over_budget").inc()
        log.info("uplink_over_budget", batch=ack.batch, retry_in_s=round(wait, 2))

    async def _acked(self, batch: str, f: _Inflight) -> None:
        try:
            await self.outbox.delete(f.ids)
        except OutboxError as exc:  # the chunks stay and go out again; the platform drops the duplicates
            log.error("outbox_delete_failed", batch=batch, error=str(exc))
            return
        finally:
            self._inflight.pop(batch, None)
            self._released()
        self.stats.batches_acked += 1
        self.stats.items_acked += sum(f.counts)
        for kind, n in enumerate(f.counts):
            self.stats.per_kind[kind] += n
            if n:
                metrics.VALUES_OUT.labels(KINDS[kind]).inc(n)
        metrics.UPLINK_BATCHES.labels("acked").inc()
        self.outbox.publish_metrics()

    def _released(self) -> None:
        self._slot.set()
        if not self._inflight:
            self.drained.set()

    @property
    def inflight(self) -> int:
        """Batches published and not yet acknowledged."""
        return len(self._inflight)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
