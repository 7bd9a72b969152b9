"""On-device diagnostics: each asset's aligned frames, as sliding windows, through its type's models.

The site names the models of each asset type (``models: [rul, faults, anomaly]``); the agent loads, per type
and task, the newest version in its registry directory that loads, fits the type (every model input is a
property of it, in the right unit) and passes a probe window. Model sync may swap another version in at any
time (``swap_model``); the model in use stays until the new one has passed the same checks.

Flow: the pipeline hands every committed frame to ``observe`` (cheap: it files the frame and wakes the loop).
``run`` takes, per asset and task, the window ending at each new grid point (``windows.py``; of a
burst, the newest ``CATCH_UP``), scores the windows on its own thread (so ingestion never waits on a model) and
stores each verdict as a ``Diagnosis`` in the outbox, which uplinks it with the values. A window lacking a
signal, or holding a bad value, is skipped and counted (``ft_agent_windows_skipped``), as is an anomaly window
of a machine still learning its first baseline (reason ``baseline_learning``, see ``baseline.py``).

Cascade: when the student's confidence is below the task's threshold (the manifest's
``cascade.confidence_threshold``, else ``EDGE_CASCADE_THRESHOLDS[task]``, else ``EDGE_CASCADE_THRESHOLD``) and a
platform is configured, the window goes to the platform's teacher, which records its own answer. If the
platform does not answer within ``EDGE_CASCADE_TIMEOUT_S``, the student's answer is stored marked
``edge_fallback``.

Rollback: a model whose output leaves its declared range on live data (not finite, a confidence or a
probability outside [0, 1], RUL outside [0, cap], a label it does not declare) or whose inference fails is
replaced at once by the version it replaced, and ``on_rollback`` reports it. The version is remembered
(``<data_dir>/rejected_models.json``) and not loaded again at start.

Load awareness and per-machine baselines: see ``load.py`` and ``baseline.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_agent import metrics
from edge_agent.cascade_client import CascadeClient
from edge_agent.config import AgentSettings
from edge_agent.diagnostics.baseline import Adapted, BaselineStore, adapt
from edge_agent.diagnostics.load import LoadGovernor
from edge_agent.diagnostics.model_slots import ModelSlots, Slot
from edge_agent.diagnostics.scoring import Job, ScoredWindow, diagnosis, score
from edge_agent.diagnostics.targets import Asset, AssetTask, build_assets
from edge_agent.errors import ModelUnusable, OutboxError
from edge_agent.outbox import Outbox
from plant.site import Site
from plant.wire import Diagnosis, DiagnosisSource, Frame

log = structlog.get_logger(__name__)

RollbackHook = Callable[[str, str, str, str], None]  # (asset_type, task, version, reason)
_FAILURES = ("inference_failed", "out_of_range")
_MAX_UNSAVED = 10_000
CATCH_UP = 64  # grid points diagnosed per asset and cycle at most; older ones of a burst are deferred
LEARNING_EVERY_US = 15_000_000  # while a baseline is learnt, a diagnosis saying so (progress, when ready) this often


@dataclass(slots=True)
class _Adapting:
    """A baseline to build on the inference thread: provisional while learning, final once ready."""

    target: AssetTask
    slot: Slot
    rows: list[list[float]]
    final: bool
    result: Adapted | str | None = None


_Learning = tuple[AssetTask, list[tuple[int, list[float]]] | None]  # rows to save; None: read it from the store


class Diagnoser:
    """Runs the site's diagnostic models on the aligned frames and stores their diagnoses.

    Args:
        site: the validated site model.
        settings: the agent settings (EDGE_DIAGNOSE_*, EDGE_CASCADE_*, EDGE_BASELINE_*, EDGE_LOAD_*).
        registry_dir: the local model registry (``<task>/<version>/``); the package's committed models are
            the fallback for a task it lacks.
        on_rollback: told (asset_type, task, version, reason) when a model is rolled back.
        cascade: the platform's teacher, for windows the student is unsure about.
        outbox: where diagnoses go.
        backlog: the ingestion backlog as a share of its limit (load awareness).
    """

    def __init__(
        self,
        site: Site,
        settings: AgentSettings,
        registry_dir: Path,
        *,
        on_rollback: RollbackHook | None = None,
        cascade: CascadeClient | None = None,
        outbox: Outbox | None = None,
        backlog: Callable[[], float] | None = None,
    ) -> None:
        self.registry_dir = Path(registry_dir)
        self.on_rollback = on_rollback
        self.cascade = cascade
        self.outbox = outbox
        self._backlog = backlog
        self.site, self.settings = site, settings
        self.governor = LoadGovernor(
            cpu_high=settings.load_cpu_high,
            busy_high=settings.load_busy_high,
            backlog_high=settings.load_backlog_high,
            max_stretch=settings.load_max_stretch,
        )
        self.latest: dict[tuple[str, str], Diagnosis] = {}  # (node, task) -> newest diagnosis
        self.skipped: dict[str, int] = {}  # reason -> windows
        self.models = ModelSlots(self.registry_dir, settings.data_dir / "rejected_models.json", {})
        self._assets: dict[str, Asset] = {}
        self._wake = asyncio.Event()
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diagnose")
        self._store: BaselineStore | None = None  # opened on the inference thread, used only there
        self._store_failed = False
        self._stopping = False
        self._cascades: set[asyncio.Task[None]] = set()
        self._asking = 0  # windows waiting for the platform's answer
        self._unsaved: list[Diagnosis] = []
        self._learning: list[Diagnosis] = []  # "still learning" diagnoses of this cycle
        self.update(site, settings)

    # --- configuration ---------------------------------------------------------------------------------------

    def update(self, site: Site, settings: AgentSettings) -> None:
        """Take a new site and settings (reload): load models of new types, keep the state of known assets."""
        self.site, self.settings = site, settings
        g = self.governor
        g.cpu_high, g.busy_high = settings.load_cpu_high, settings.load_busy_high
        g.backlog_high, g.max_stretch = settings.load_backlog_high, settings.load_max_stretch
        self.models.default_threshold = _cascade_thresholds(settings)
        self.models.sync(site)
        self._rebuild()

    def swap_model(self, asset_type: str, task: str, model_dir: Path) -> str:
        """Load and check a model, then use it from the next window on; returns its version.

        Raises ModelUnusable (the model in use is kept) when it does not load, fit the type or pass the probe.
        """
        return self.use_model(asset_type, task, self.load_model(asset_type, task, model_dir))

    def load_model(self, asset_type: str, task: str, model_dir: Path) -> Slot:
        """The first half of ``swap_model``: load and check, changing nothing (safe on a worker thread)."""
        return self.models.checked(self.site, (asset_type, task), Path(model_dir))

    def use_model(self, asset_type: str, task: str, slot: Slot) -> str:
        """The second half of ``swap_model``, on the loop: the checked model scores from the next window on."""
        self.models.put((asset_type, task), slot)
        self._rebuild()
        return slot.version

    def versions(self) -> dict[str, dict[str, str]]:
        """asset_type → task → version in use."""
        return self.models.versions()

    def baselines(self) -> dict[str, str]:
        """node → baseline status (``37%`` or ``ready``) of the machines that learn one."""
        return {a.node: t.learner.status() for a in self._assets.values() for t in a.targets.values() if t.learner}

    def _rebuild(self) -> None:
        """Assets and their targets from the site and the models in use, keeping what still fits."""
        self._assets = build_assets(self.site, self.settings, self.models, self._assets, CATCH_UP)

    # --- frames in -------------------------------------------------------------------------------------------

    def observe(self, frames: Sequence[Frame]) -> None:
        """File new and revised frames (called by the pipeline after each commit; cheap)."""
        assets = self._assets
        now = 0.0
        for f in frames:
            a = assets.get(f.node)
            if a is not None:
                a.frames.add(f)
                a.seen = now = now or time.monotonic()
        if now:
            self._wake.set()

    # --- the loop --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Diagnose whatever is due whenever frames arrive, until ``stop``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            await self.step()
            if self._stopping:
                return

    async def step(self) -> None:
        """One cycle: collect due windows, score them on the inference thread, store the verdicts."""
        self.governor.sample(self._backlog() if self._backlog else 0.0)
        jobs, learners, to_adapt = self._collect()
        learning, self._learning = self._learning, []
        if not (jobs or learners or to_adapt or self._unsaved or learning):
            return
        started = time.perf_counter()
        outcomes = await asyncio.get_running_loop().run_in_executor(self._ex, self._work, jobs, learners, to_adapt)
        elapsed = time.perf_counter() - started
        self.governor.add_busy(elapsed)
        if jobs:
            metrics.INFERENCE_SECONDS.observe(elapsed)
        self._loaded(learners)
        for request in to_adapt:
            self._adapted(request)
        ready, offload = self._judge(outcomes)
        await self._store_diagnoses(ready + learning)
        if offload:
            self._offload(offload)

    def diagnose_pending(self, learning: bool = False) -> list[Diagnosis]:
        """Score every due window now, on the calling thread, and return the verdicts (no cascade, no outbox);
        with ``learning`` also the diagnoses saying a baseline is still being learnt."""
        jobs, learners, to_adapt = self._collect()
        said, self._learning = self._learning, []
        outcomes = self._work(jobs, learners, to_adapt)
        self._loaded(learners)
        for request in to_adapt:
            self._adapted(request)
        ready, offload = self._judge(outcomes)
        return (said if learning else []) + ready + [d for _, d in offload]

    def stop(self) -> None:
        """Finish the cycle in hand (and the frames already observed), then let ``run`` return."""
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        """Wait for answers from the platform still due, then close the thread, the store, the client."""
        if self._cascades:
            await asyncio.wait(self._cascades, timeout=self.settings.cascade_timeout_s + 1.0)
            for task in self._cascades:  # an answer this late would find the outbox closed
                task.cancel()
        if self._unsaved:
            await self._store_diagnoses([])
        if self.cascade is not None:
            await self.cascade.aclose()
        await asyncio.get_running_loop().run_in_executor(self._ex, self.close_store)
        self._ex.shutdown(wait=True)

    def close_store(self) -> None:
        """Close the baseline store (on the thread that uses it; ``close`` does this)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def _collect(self) -> tuple[list[Job], list[_Learning], list[_Adapting]]:
        """On the loop: the windows due (their period stretched under load), baseline rows, baselines to build."""
        jobs: list[Job] = []
        learners: list[_Learning] = []
        to_adapt: list[_Adapting] = []
        interval_us = int(self.settings.diagnose_interval_s * 1e6)
        for a in self._assets.values():
            newest = a.frames.newest
            if newest is None:
                continue
            healthy = a.healthy()
            period = max(interval_us, a.frames.grid_us) * self.governor.stretch(healthy)
            for t in a.targets.values():
                slot = self.models.get((a.asset_type, t.task))
                if slot is None:
                    continue
                if t.learner is not None:
                    self._learn(a, t, slot, learners, to_adapt)
                ends = a.frames.ends(t.last_ts, period)
                if not ends:
                    continue
                passed = (newest - t.last_ts) // a.frames.grid_us if t.last_ts is not None else len(ends)
                ends = ends[-CATCH_UP:]  # a burst (a source reconnecting): its newest grid points
                if passed > len(ends):
                    metrics.DIAGNOSES_DEFERRED.labels("healthy" if healthy else "unhealthy").inc(passed - len(ends))
                done, t.last_ts = t.last_ts, ends[-1]
                adapted = t.adapted if t.adapted_for is slot else None
                for end in ends:
                    w = a.frames.window(t.signals, t.length, t.min_length, end)
                    if isinstance(w, str) and end > newest - a.closed_us:
                        # unusable, but its frames may still be revised (a late signal): try this grid point
                        # again next cycle, and the later ones after it, rather than skip it for good
                        t.last_ts = done
                        break
                    done = end
                    if w is None:
                        continue
                    if isinstance(w, str):
                        self._skip(t.task, w)
                    elif t.learner is not None and adapted is None:
                        self._skip(t.task, "baseline_learning")  # the fleet's default would raise false alarms
                        self._say_learning(a, t, slot, end)
                    else:
                        jobs.append(Job(a, t, slot, adapted, w))
        return jobs, learners, to_adapt

    def _say_learning(self, a: Asset, t: AssetTask, slot: Slot, end: int) -> None:
        """Now and then a diagnosis that judges nothing but says the model is learning, how far, and when it will
        judge: so the platform can tell people why the machine has no verdict yet."""
        learner = t.learner
        if learner is None or (t.learning_said is not None and end - t.learning_said < LEARNING_EVERY_US):
            return
        t.learning_said = end
        rows, need = len(learner.rows), max(learner.min_rows, 1)
        self._learning.append(
            Diagnosis(
                node=a.node,
                task=t.task,
                ts=end,
                model=str(slot.model.manifest["name"]),
                version=slot.version,
                confidence=0.0,
                learning=round(min(rows / need, 1.0), 4),
                ready_at=end + max(need - rows, 0) * a.frames.grid_us,
            )
        )

    def _learn(self, a: Asset, t: AssetTask, slot: Slot, learners: list[_Learning], to_adapt: list[_Adapting]) -> None:
        learner = t.learner
        assert learner is not None
        if not t.learner_loaded:
            learners.append((t, None))  # read from the store on the thread first
            return
        learner.feed(a.frames.closed_rows(t.signals, learner.last_ts, a.closed_us), a.learning())
        if learner.due:
            learner.ready = True
            learner.publish()
        if learner.pending or (learner.ready and not learner.saved_ready):
            rows, learner.pending = learner.pending, []
            learner.saved_ready = learner.ready
            learners.append((t, rows))
        if len(learner.rows) < learner.min_rows or t.adapting:
            return
        grown = len(learner.rows) - t.adapted_rows >= learner.refresh_rows  # provisional ones, every 10 %
        if t.adapted_for is not slot or (learner.ready and not t.adapted_final) or (not learner.ready and grown):
            t.adapting = True
            to_adapt.append(_Adapting(t, slot, learner.rows[:], learner.ready))

    def _work(self, jobs: list[Job], learners: list[_Learning], to_adapt: list[_Adapting]) -> list[ScoredWindow]:
        """On the inference thread: baseline rows to and from disk, baselines built, windows scored."""
        if learners and self._store is None and not self._store_failed:
            try:
                self._store = BaselineStore(self.settings.data_dir / "baselines.sqlite")
            except ModelUnusable as exc:
                self._store_failed = True
                log.error("baseline_store_unavailable", error=str(exc), effect="baselines learnt in memory only")
        for t, rows in learners:
            assert t.learner is not None
            try:
                if self._store is not None and rows is None:
                    self._store.load(t.learner)
                elif self._store is not None and rows is not None:
                    self._store.save(t.learner, rows)
            except ModelUnusable as exc:
                log.error("baseline_store_failed", node_id=t.learner.node, error=str(exc))
                if rows is not None:  # written with the next cycle's rows
                    t.learner.pending[:0] = rows
                    t.learner.saved_ready = False
        for request in to_adapt:
            try:
                request.result = adapt(
                    request.slot.model, request.rows, request.target.units, self.settings.baseline_quantile
                )
            except Exception as exc:  # a failed baseline keeps the machine learning; it must not stop the loop
                request.result = f"{type(exc).__name__}: {exc}"
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            model = job.adapted.model if job.adapted else job.slot.model
            groups.setdefault(id(model), []).append(job)
        outcomes: list[ScoredWindow] = []
        for group in groups.values():
            outcomes += score(group)
        return outcomes

    def _loaded(self, learners: list[_Learning]) -> None:
        """On the loop: learners read from the store start learning (or are ready)."""
        for t, rows in learners:
            if rows is None and t.learner is not None:
                t.learner_loaded = True
                t.learner.saved_ready = t.learner.ready
                t.learner.publish()

    def _adapted(self, job: _Adapting) -> None:
        t = job.target
        t.adapting = False
        if not isinstance(job.result, Adapted):
            log.error("baseline_failed", node_id=t.learner.node if t.learner else None, task=t.task, error=job.result)
            return
        t.adapted, t.adapted_for, t.adapted_rows, t.adapted_final = job.result, job.slot, len(job.rows), job.final
        log.info(
            "baseline_in_use",
            node_id=t.learner.node if t.learner else None,
            task=t.task,
            rows=len(job.rows),
            final=job.final,
            threshold=round(job.result.threshold, 4),
        )

    def _judge(self, outcomes: list[ScoredWindow]) -> tuple[list[Diagnosis], list[tuple[Job, Diagnosis]]]:
        """On the loop: verdicts → diagnoses (to store now, or to offload), failures → skips and rollbacks."""
        ready: list[Diagnosis] = []
        offload: list[tuple[Job, Diagnosis]] = []
        for o in outcomes:
            job = o.job
            if o.prediction is None:
                self._skip(job.target.task, o.error or "error")
                if o.error in _FAILURES:
                    self._rollback(job.asset.asset_type, job.target.task, job.slot, o.error or "")
                continue
            d = diagnosis(job, o.prediction)
            self._note(job.asset, d)
            if self.cascade is not None and o.prediction.confidence < job.slot.cascade_threshold:
                offload.append((job, d))
            else:
                ready.append(d)
        return ready, offload

    def _note(self, a: Asset, d: Diagnosis) -> None:
        self.latest[(d.node, d.task)] = d
        a.health[d.task] = _healthy(d, a.rul_horizon)

    def _skip(self, task: str, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        metrics.WINDOWS_SKIPPED.labels(task, reason).inc()

    def _rollback(self, asset_type: str, task: str, slot: Slot, reason: str) -> None:
        if not self.models.rollback((asset_type, task), slot, reason):
            return  # already rolled back, or nothing to go back to (the skips are counted)
        self._rebuild()
        if self.on_rollback is not None:
            try:
                self.on_rollback(asset_type, task, slot.version, reason)
            except Exception:
                log.exception("rollback_hook_failed")

    # --- diagnoses out ---------------------------------------------------------------------------------------

    async def _store_diagnoses(self, diagnoses: list[Diagnosis]) -> None:
        for d in diagnoses:
            metrics.DIAGNOSES.labels(d.task, d.source.value).inc()
            a = self._assets.get(d.node)
            if a is not None:
                metrics.DIAGNOSIS_LATENCY.observe(time.monotonic() - a.seen)
        if self.outbox is None:
            return
        # taken out before the await: a cascade answer stored meanwhile must neither write these again nor
        # have its own overwritten when this write fails
        batch, self._unsaved = self._unsaved + diagnoses, []
        if not batch:
            return
        try:
            await self.outbox.put(diagnoses=batch)
        except BaseException as exc:
            self._unsaved = (batch + self._unsaved)[-_MAX_UNSAVED:]
            if not isinstance(exc, OutboxError):
                raise
            log.error("diagnoses_not_stored", error=str(exc), kept=len(self._unsaved))

    def _offload(self, items: list[tuple[Job, Diagnosis]]) -> None:
        room = max(self.settings.cascade_max_inflight - self._asking, 0)
        asked, busy = items[:room], items[room:]
        self._asking += len(asked)
        for job, _ in busy:
            metrics.CASCADE.labels(job.target.task, "busy").inc()
        fallback = [d.model_copy(update={"source": DiagnosisSource.EDGE_FALLBACK}) for _, d in busy]
        task = asyncio.create_task(self._ask(asked, fallback), name="cascade")
        self._cascades.add(task)
        task.add_done_callback(self._cascades.discard)

    async def _ask(self, items: list[tuple[Job, Diagnosis]], fallback: list[Diagnosis]) -> None:
        cascade = self.cascade
        assert cascade is not None
        try:
            answers = await asyncio.gather(
                *(
                    cascade.ask(d.node, d.task, d.ts, d.model, d.version, job.window.values, job.target.units)
                    for job, d in items
                )
            )
        finally:
            self._asking -= len(items)
        for (job, d), answer in zip(items, answers, strict=True):
            if answer is None:
                fallback.append(d.model_copy(update={"source": DiagnosisSource.EDGE_FALLBACK}))
            else:  # the platform recorded it: nothing to uplink
                self._note(job.asset, answer)
                metrics.DIAGNOSES.labels(d.task, DiagnosisSource.PLATFORM.value).inc()
        await self._store_diagnoses(fallback)


def _cascade_thresholds(settings: AgentSettings) -> dict[str, float]:
    per_task = {str(k): v for k, v in settings.cascade_thresholds.items()}
    return {t: per_task.get(t, settings.cascade_threshold) for t in ("rul", "faults", "anomaly")}


def _healthy(d: Diagnosis, rul_horizon: float | None) -> bool:
    if d.task == "faults":
        return d.label == "none"
    if d.task == "anomaly":
        return d.label != "anomaly"
    return rul_horizon is None or d.rul is None or d.rul >= rul_horizon
