"""The sink connectors deliver to: normalise → align → outbox, with group commit, then ack upstream.

A connector awaits ``sink(batch)``; the sink normalises and aligns the batch at once (plain Python, per batch)
and queues the result with the batch's ``ack``. The commit loop waits a few milliseconds for more batches,
writes everything queued in one transaction, and only then calls the acks (for MQTT: the PUBACKs). So one
fsync covers a whole burst, and nothing is acknowledged upstream before it is durable. When the queue is full
the sink waits: backpressure reaches the connector instead of memory growing.

Redeliveries: a value without a usable source timestamp is stamped with its receive time, so if the agent dies
between the outbox COMMIT and the PUBACK, the broker's redelivery would get a new time, a new idempotency key,
and be stored twice in the twin. So every commit also records, in the same transaction, a fingerprint (topic
and payload hash) of each MQTT message it holds; a message that arrives with the DUP flag set and a fingerprint
already committed is skipped (its values are in the outbox already) but still acknowledged.

The trade-off: two distinct messages with identical payloads on one topic (a sensor repeating a value with no
timestamp) share a fingerprint. The second is dropped only if the broker flags it DUP, which it does only
when it had sent it before without getting a PUBACK, i.e. the agent received it and died (or lost the
connection) before committing it, and the first copy is still in the window. The window is bounded by count
(``dedup_window``): after a crash the broker redelivers at most its receive-maximum of un-acked messages per
session, all committed just before, so a window of a few times that covers every real redelivery while
keeping such collisions rare; an age bound (``dedup_max_age_s``, the session expiry) forgets the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from edge_agent import metrics
from edge_agent.align import Aligner
from edge_agent.config import AgentSettings
from edge_agent.connectors import Sink
from edge_agent.deadletter import DeadLetterFile
from edge_agent.errors import OutboxError
from edge_agent.normalise import Normaliser
from edge_agent.outbox import Outbox
from edge_agent.reading import Reading, ReadingBatch
from edge_agent.sample import Sample
from plant.site import Site
from plant.wire import Frame, Value

log = structlog.get_logger(__name__)
_SLICE = 4096
_PRUNE_EVERY = 256  # commits between prunes of the stored fingerprint window (or half a window of messages)


@dataclass(slots=True, frozen=True)
class Stage:
    """The site-dependent part of the pipeline, swapped as a whole on reload.

    Args:
        site: the site model.
        normaliser: units, types, clocks for that site.
        aligner: frames for that site's assets.
    """

    site: Site
    normaliser: Normaliser
    aligner: Aligner

    @classmethod
    def build(
        cls,
        site: Site,
        settings: AgentSettings,
        previous: Stage | None = None,
        applied: dict[str, int] | None = None,
    ) -> Stage:
        """Compile a site (ConfigError when a binding cannot work), carrying state over from ``previous``."""
        normaliser = Normaliser(
            site,
            clock_window=settings.clock_window,
            clock_quantile=settings.clock_quantile,
            clock_threshold_ms=settings.clock_threshold_ms,
            max_future_s=settings.max_future_s,
            min_valid_year=settings.min_valid_year,
            clock_warmup_s=settings.clock_warmup_s,
            clocks=previous.normaliser.clocks if previous else None,
            applied=previous.normaliser.applied if previous else applied,
        )
        aligner = Aligner(site, previous.aligner if previous else None)
        return cls(site, normaliser, aligner)


class Pipeline:
    """Readings in, durable values and frames out, acks after commit.

    Args:
        stage: the compiled site.
        outbox: where accepted items go.
        deadletter: where refused inputs go.
        commit_window_ms: how long a group commit collects.
        max_pending_items: queued items before the sink waits.
        commit_messages: source messages waiting for their ack that end the commit window early.
        dedup_window: fingerprints of committed messages kept to recognise redeliveries.
        dedup_max_age_s: fingerprints older than this are forgotten.
    """

    def __init__(
        self,
        stage: Stage,
        outbox: Outbox,
        deadletter: DeadLetterFile,
        *,
        commit_window_ms: float = 20.0,
        max_pending_items: int = 50_000,
        commit_messages: int = 500,
        dedup_window: int = 20_000,
        dedup_max_age_s: float = 86_400.0,
    ) -> None:
        self.stage = stage
        self.outbox = outbox
        self.deadletter = deadletter
        self.commit_window = commit_window_ms / 1000
        self.max_pending = max_pending_items
        self._readings: list[Reading] = []
        self._values: list[Value | Sample] = []
        self._frames: list[Frame] = []
        self._acks: list[Callable[[], None]] = []
        self._has_data = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.accepted = 0
        self.rejected = 0
        self.redelivered = 0  # messages skipped as already committed
        self.dedup_window = dedup_window
        self.dedup_max_age_us = int(dedup_max_age_s * 1_000_000)
        self._delivered: OrderedDict[bytes, int] = OrderedDict()  # fingerprint -> commit time µs, oldest first
        self._fps: dict[bytes, None] = {}  # fingerprints of messages queued for the next commit
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._commits = 0
        self._since_prune = 0  # fingerprints stored since the last prune
        self.commit_messages = commit_messages
        self._unacked = 0  # source messages queued whose acks wait for the next commit
        self._enough = asyncio.Event()
        self._writing = False  # a commit's transaction is being written (on the outbox thread)
        self.on_frames: Callable[[list[Frame]], None] | None = None  # told each commit's frames (diagnostics)

    def swap(self, stage: Stage) -> None:
        """Use a new compiled site from the next batch on (atomic: one reference)."""
        self.stage = stage

    def sink_for(self, source: str) -> Sink:
        """The sink for one connector: knows the source to blame for rejections without readings."""

        async def sink(batch: ReadingBatch) -> None:
            await self.submit(batch, source)

        return sink

    async def submit(self, batch: ReadingBatch, source: str = "unknown") -> None:
        """Queue one batch; its ack is called once its items are durable. Waits while the queue is full."""
        if not self._loaded and batch.messages:
            await self._load_delivered()
        while len(self._readings) + len(self._values) >= self.max_pending:
            self._room.clear()
            await self._room.wait()
        self.process(batch, source)
        if self._writing:  # the loop would idle through the commit's fsync: prepare this batch for the next one
            await self._prepare()

    def process(self, batch: ReadingBatch, source: str = "unknown") -> None:
        """Queue one batch for the next commit (no waiting); its refusals are counted now."""
        for reason, detail in batch.rejected:
            self._reject(source, reason, detail, None)
        if batch.messages:
            self._readings.extend(self._fresh(batch.readings, batch.messages, source))
        else:
            self._readings.extend(batch.readings)  # VALUES_IN is counted by the connectors, on receipt
        if batch.ack is not None:
            self._acks.append(batch.ack)
        if batch.messages:
            self._unacked += len(batch.messages)
            if self._unacked >= self.commit_messages:
                self._enough.set()
        self._has_data.set()
        self._idle.clear()

    def _fresh(
        self, readings: list[Reading], messages: list[tuple[bytes, bool, int]], source: str
    ) -> list[Reading]:
        """The readings of messages not already committed; records every message's fingerprint for commit."""
        fps = self._fps
        if not any(m[1] for m in messages):  # no redelivery in this burst: the usual case
            for m in messages:
                fps[m[0]] = None
            return readings
        out: list[Reading] = []
        pos = skipped = 0
        for fp, dup, n in messages:
            if dup and (fp in self._delivered or fp in fps):
                skipped += 1
            else:
                out.extend(readings[pos : pos + n])
                fps[fp] = None
            pos += n
        if skipped:
            self.redelivered += skipped
            log.info("redelivery_skipped", source=source, messages=skipped)
        return out

    async def _load_delivered(self) -> None:
        """Load the window of committed fingerprints from the outbox (once, before the first MQTT batch)."""
        async with self._load_lock:
            if self._loaded:
                return
            since = time.time_ns() // 1000 - self.dedup_max_age_us
            rows = await self.outbox.delivered(since)
            for fp, at in rows[-self.dedup_window :]:
                self._delivered.setdefault(fp, at)
            self._loaded = True

    def _remember(self, fps: dict[bytes, None]) -> None:
        now = time.time_ns() // 1000
        delivered = self._delivered
        for fp in fps:
            delivered[fp] = now
            delivered.move_to_end(fp)  # the order stays oldest first
        oldest = now - self.dedup_max_age_us
        while delivered and (len(delivered) > self.dedup_window or next(iter(delivered.values())) < oldest):
            delivered.popitem(last=False)

    async def _prepare(self) -> None:
        """Normalise and align everything queued, in slices so the loop keeps reading meanwhile.

        Done per commit, not per message: per-call costs (clock samples, grouping, frame checks) are paid once
        for a whole burst. While a commit is being written, each batch that arrives is prepared at once instead
        (``submit``): the loop would otherwise wait through the fsync, and the next commit finds it ready. Its
        ack and fingerprint still wait for that next commit, with its items.
        """
        while self._readings:
            part, self._readings = self._readings[:_SLICE], self._readings[_SLICE:]
            stage = self.stage
            norm = stage.normaliser.normalise(part)
            for r, reason, detail in norm.rejected:
                self._reject(r.source, reason, detail, r)
            aligned = stage.aligner.align(norm.values)
            self._values.extend(aligned.values)
            self._frames.extend(aligned.frames)
            self.accepted += len(aligned.values)
            if self._readings:
                await asyncio.sleep(0)

    def _reject(self, source: str, reason: str, detail: str, reading: object | None) -> None:
        self.rejected += 1
        metrics.REJECTED.labels(source, reason).inc()
        self.deadletter.write(source, reason, detail, reading)

    async def run(self) -> None:
        """Commit loop: collect for the window, write once, ack; after ``stop``, ends once all is written."""
        while True:
            if self._stopping and not self.pending:
                return
            await self._has_data.wait()
            if not self._stopping and self.commit_window > 0 and len(self._readings) < self.max_pending // 2:
                await self._collect()
            # shielded: a cancelled agent still finishes the write it started and acks what it wrote
            await asyncio.shield(self.commit())

    async def _collect(self) -> None:
        """Wait for the commit window, or less once ``commit_messages`` messages wait for their PUBACK.

        The broker sends at most its receive maximum of un-acked messages: waiting out the whole window with
        that many pending would leave the connection idle, so the commit starts as soon as half of it is used.
        """
        if self._unacked >= self.commit_messages:
            return
        self._enough.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._enough.wait(), self.commit_window)

    async def wait_idle(self) -> None:
        """Wait until everything submitted so far is durable and acked."""
        await self._idle.wait()

    def stop(self) -> None:
        """Write what is queued, then let ``run`` return."""
        self._stopping = True
        self._has_data.set()

    @property
    def pending(self) -> int:
        """Items queued for the next commit."""
        return len(self._readings) + len(self._values) + len(self._frames) + len(self._acks) + len(self._fps)

    async def commit(self) -> None:
        """Write everything queued in one transaction and ack its batches; on failure keep it for a retry."""
        self._has_data.clear()
        acks = self._acks
        self._acks = []
        unacked, self._unacked = self._unacked, 0
        if not self._loaded and self._fps:
            await self._load_delivered()
        fps, self._fps = self._fps, {}
        await self._prepare()
        values, frames = self._values, self._frames
        self._values, self._frames = [], []
        clocks = self.stage.normaliser.take_changed()
        if not (values or frames or acks or fps):
            self._idle.set()
            return
        self._writing = True
        try:
            await self.outbox.put(values, frames, clocks=clocks, delivered=list(fps))
        except OutboxError as exc:
            for label, off in clocks.items():
                self.stage.normaliser.changed.setdefault(label, off)
            log.error("outbox_write_failed", error=str(exc), items=len(values) + len(frames))
            self._values[:0], self._frames[:0], self._acks[:0] = values, frames, acks
            self._fps = {**fps, **self._fps}
            self._unacked += unacked
            self._has_data.set()
            await asyncio.sleep(1.0)
            return
        finally:
            self._writing = False
            self._room.set()
        self._remember(fps)
        if self.on_frames is not None and frames:
            try:
                self.on_frames(frames)
            except Exception:  # diagnostics must never hold back the acks
                log.exception("frame_listener_failed")
        for ack in acks:
            try:
                ack()
            except Exception as exc:  # a failed PUBACK means a redelivery, which dedup absorbs
                log.warning("upstream_ack_failed", error=str(exc))
        self.outbox.publish_metrics()
        self._commits += 1
        self._since_prune += len(fps)
        if self._since_prune and (
            self._commits % _PRUNE_EVERY == 0 or self._since_prune >= self.dedup_window // 2
        ):
            self._since_prune = 0
            await self._prune()
        if not self.pending:
            self._idle.set()

    async def _prune(self) -> None:
        """Bound the stored fingerprint window like the one in memory; a failure only delays it."""
        try:
            before = time.time_ns() // 1000 - self.dedup_max_age_us
            await self.outbox.prune_delivered(before, self.dedup_window)
        except OutboxError as exc:
            log.warning("dedup_prune_failed", error=str(exc))

    async def flush(self, attempts: int = 3) -> None:
        """Commit whatever is queued now, giving up after ``attempts`` failed writes."""
        for _ in range(attempts):
            if not self.pending:
                return
            await self.commit()
