"""The sink connectors deliver to: normalise → align → outbox, with group commit, then ack upstream.

A connector awaits ``sink(batch)``; the sink normalises and aligns the batch at once (plain Python, per batch)
and queues the result with the batch's ``ack``. The commit loop waits a few milliseconds for more batches,
writes everything queued in one transaction, and only then calls the acks (for MQTT: the PUBACKs). So one
fsync covers a whole burst, and nothing is acknowledged upstream before it is durable. When the queue is full
the sink waits: backpressure reaches the connector instead of memory growing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from edge_agent import metrics
from edge_agent.align import Aligner
from edge_agent.config import AgentSettings
from edge_agent.connectors import Sink
from edge_agent.deadletter import DeadLetter
from edge_agent.errors import OutboxError
from edge_agent.normalise import Normaliser
from edge_agent.outbox import Outbox
from edge_agent.reading import Reading, ReadingBatch
from edge_agent.sample import Sample
from plant.site import Site
from plant.wire import Frame, Value

log = structlog.get_logger(__name__)
_SLICE = 4096


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
    """

    def __init__(
        self,
        stage: Stage,
        outbox: Outbox,
        deadletter: DeadLetter,
        *,
        commit_window_ms: float = 20.0,
        max_pending_items: int = 50_000,
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
        while len(self._readings) + len(self._values) >= self.max_pending:
            self._room.clear()
            await self._room.wait()
        self.process(batch, source)

    def process(self, batch: ReadingBatch, source: str = "unknown") -> None:
        """Queue one batch for the next commit (no waiting); its refusals are counted now."""
        for reason, detail in batch.rejected:
            self._reject(source, reason, detail, None)
        self._readings.extend(batch.readings)  # VALUES_IN is counted by the connectors, on receipt
        if batch.ack is not None:
            self._acks.append(batch.ack)
        self._has_data.set()
        self._idle.clear()

    async def _prepare(self) -> None:
        """Normalise and align everything queued, in slices so the loop keeps reading meanwhile.

        Done per commit, not per message: per-call costs (clock samples, grouping, frame checks) are paid once
        for a whole burst.
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
                await asyncio.sleep(self.commit_window)
            # shielded: a cancelled agent still finishes the write it started and acks what it wrote
            await asyncio.shield(self.commit())

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
        return len(self._readings) + len(self._values) + len(self._frames) + len(self._acks)

    async def commit(self) -> None:
        """Write everything queued in one transaction and ack its batches; on failure keep it for a retry."""
        self._has_data.clear()
        acks = self._acks
        self._acks = []
        await self._prepare()
        values, frames = self._values, self._frames
        self._values, self._frames = [], []
        clocks = self.stage.normaliser.take_changed()
        if not (values or frames or acks):
            self._idle.set()
            return
        try:
            await self.outbox.put(values, frames, clocks=clocks)
        except OutboxError as exc:
            for label, off in clocks.items():
                self.stage.normaliser.changed.setdefault(label, off)
            log.error("outbox_write_failed", error=str(exc), items=len(values) + len(frames))
            self._values[:0], self._frames[:0], self._acks[:0] = values, frames, acks
            self._has_data.set()
            await asyncio.sleep(1.0)
            return
        finally:
            self._room.set()
        for ack in acks:
            try:
                ack()
            except Exception as exc:  # a failed PUBACK means a redelivery, which dedup absorbs
                log.warning("upstream_ack_failed", error=str(exc))
        self.outbox.publish_metrics()
        if not self.pending:
            self._idle.set()

    async def flush(self, attempts: int = 3) -> None:
        """Commit whatever is queued now, giving up after ``attempts`` failed writes."""
        for _ in range(attempts):
            if not self.pending:
                return
            await self.commit()
