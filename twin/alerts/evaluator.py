"""The alert evaluator: one per database, in whichever platform process holds the leader lock.

Every platform process with a site runs an ``AlertEvaluator``; one leads (twin/leader.py: an advisory lock on
PostgreSQL, always this process on SQLite), the others stand by and try again every ``alert_leader_retry_s``.
Only the leader runs the rules and the alert clock, so each condition is judged once whatever the number of
ingest processes, and the clock rules (stale data, delays, escalation) tick once.

What the leader judges comes from the database, not from the batches its own process ingests (with a shared
subscription each ingest process stores only part of the data): the alert feed (twin/alerts/feed.py), one row
per stored batch, written with the batch and deleted with the alerts it causes. The live bus is the trigger:

    live bus: a batch was stored ──► every waiting feed row, oldest first ──► rules ──► alerts, rows deleted
    on becoming leader ──► the latest state of what no feed row names, then every waiting feed row
    a lost LISTEN (RESYNC), every alert_sweep_s ──► every waiting feed row

Why not take the values from the notifications: NOTIFY payloads stop at 8,000 bytes, and a notification is lost
whenever nobody listens (a leader starting or taking over, a LISTEN connection cut) or its publisher fails to
send it. The feed is complete whoever wrote it, and in the order of what became visible, not of ids or source
times: a cursor would skip a batch that commits after a newer one. A notification is only a wake-up; a lost
one costs at most ``alert_sweep_s`` of delay, never an alert. LISTEN starts before the catch-up, so nothing
stored in between waits for the sweep.

Several sites: the leader judges every site stored in the twin (``twin_sites``, written by each site sync), each
asset by its own site's rules: the site of its own process by the file that process read, the others as last
loaded; it takes up a newly loaded site's rules at its next sweep. One leader serves every site of the database.

Exactly once: the leader writes alerts and deletes the feed rows they came from in one transaction, through the
lock's own connection, so a process that lost the lock can no longer commit anything, and one killed before its
commit leaves the rows to its successor; a new leader first loads the open alerts (``AlertEngine.load``), so a
condition its predecessor raised is not raised again; the unique open key of an alert is the last guard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from plant.site import Site
from plant.wire import now_us
from twin.alerts.engine import AlertEngine, NoiseConfig
from twin.alerts.feed import AlertFeed, Read
from twin.config import TwinSettings
from twin.leader import LeaderLock
from twin.live import LiveReader, live_bus_for
from twin.site_sync import sites_mark, stored_sites

log = structlog.get_logger(__name__)

ROLE = "alert-evaluator"
WAIT_MAX_S = 0.5  # how long the loop waits for notifications before it looks at the clock and at stop()


@dataclass
class EvaluatorStats:
    """What the evaluator of this process did since it started.

    Args:
        leader: this process evaluates the alerts now.
        terms: times it became the leader.
        passes: evaluation passes (one per notification burst, sweep or catch-up).
        batches: stored batches judged (alert feed rows read and deleted).
        written: alert transitions written.
        lag_s: stored → judged, seconds, of the last pass that found something (its oldest latest state).
        busy_s: seconds spent reading and judging (its rate is how busy the leader is).
    """

    leader: bool = False
    terms: int = 0
    passes: int = 0
    batches: int = 0
    written: int = 0
    lag_s: float = 0.0
    busy_s: float = 0.0


class AlertEvaluator:
    """Leader election, the feed from the database and the alert clock around one ``AlertEngine``.

    Args:
        engine: the database.
        site: the plant, with its alert rules.
        settings: tick, sweep and retry intervals.
        on_written: called after a commit that wrote alert transitions (wakes webhook delivery).
        noise: flapping and grouping settings.
    """

    def __init__(
        self,
        engine: Engine,
        site: Site,
        settings: TwinSettings,
        on_written: Callable[[], None] | None = None,
        noise: NoiseConfig | None = None,
    ) -> None:
        self.engine = engine
        self.site = site
        self.settings = settings
        self.on_written = on_written or (lambda: None)
        self.noise = noise
        self.lock = LeaderLock(engine, ROLE)
        self.alerts: AlertEngine | None = None  # while leading
        self.feed = AlertFeed(AlertEngine(site).watched())
        self._sites_mark: tuple[int, int] | None = None  # of the stored site models the rules come from
        self._stats = EvaluatorStats()
        self._stats_lock = threading.Lock()
        self._reader: LiveReader | None = None
        self._stop = threading.Event()
        self._decided = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> AlertEvaluator:
        """Start; returns once the first election is decided (leading and caught up, or standing by)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alert-evaluator", daemon=True)
        self._thread.start()
        self._decided.wait(timeout)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop evaluating; the leader releases the lock, so a standby takes over at its next try."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def leading(self) -> bool:
        """Whether this process evaluates the alerts now."""
        return self.stats().leader

    def stats(self) -> EvaluatorStats:
        """A copy of the counters."""
        with self._stats_lock:
            return EvaluatorStats(**vars(self._stats))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    if self._begin_term():
                        self._serve()
                except Exception as exc:  # the evaluator must outlive any failure: step down, try again
                    log.error(
                        "alert_evaluation_failed",
                        error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        kind=type(exc).__name__,
                    )
                self._end_term()
                self._decided.set()
                self._stop.wait(self.settings.alert_leader_retry_s)
        finally:
            self._end_term()

    def _begin_term(self) -> bool:
        if not self.lock.acquire():
            self._decided.set()
            return False
        self._reader = live_bus_for(self.engine).reader()  # before the catch-up: what is stored after it is heard
        self._take_up_rules()
        self._drain(measure=False)
        with self._stats_lock:
            self._stats.leader = True
            self._stats.terms += 1
        log.info("alert_leader_evaluating", assets=len(self.feed.watched))
        self._decided.set()
        return True

    def _take_up_rules(self) -> None:
        """Rules of every site stored in the twin (its own by this process's file), the open alerts, then the
        latest state of what no feed row names."""
        with self.lock.transaction() as session:
            self._sites_mark = sites_mark(session)
            # its own site by the file this process read (as the leader always has), the others as stored
            sites = {s.site.id: s for s in stored_sites(session)} | {self.site.site.id: self.site}
            self.alerts = AlertEngine(list(sites.values()), noise=self.noise)
            self.feed = AlertFeed(self.alerts.watched())
            self.alerts.load(session)
        self._pass(self.feed.catch_up, measure=False)

    def _sites_changed(self) -> bool:
        with self.lock.transaction() as session:
            return sites_mark(session) != self._sites_mark

    def _serve(self) -> None:
        assert self._reader is not None
        tick, sweep = self.settings.alert_tick_s, self.settings.alert_sweep_s
        next_tick, next_sweep = time.monotonic() + tick, time.monotonic() + sweep
        while not self._stop.is_set():
            wait = min(next_tick, next_sweep) - time.monotonic()
            heard = self._reader.wait(max(0.0, min(wait, WAIT_MAX_S)))
            now = time.monotonic()
            if now >= next_sweep:  # on the clock, however often values are heard: a busy feed must not put it off
                if self._sites_changed():  # a site file was loaded: take up its rules
                    log.info("alert_leader_rules_reloaded")
                    self._take_up_rules()
                self._drain()  # what a lost notification left waiting
                next_sweep = now + sweep
            elif heard:  # any stored batch adds a feed row, watched or not: read and delete it
                self._drain()
            if now >= next_tick:
                self._tick()
                next_tick = now + tick

    def _drain(self, measure: bool = True) -> None:
        """Judge everything waiting in the feed."""
        while self._pass(self.feed.since, measure=measure).more and not self._stop.is_set():
            pass

    def _end_term(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        was = self.lock.held
        self.lock.release()
        self.alerts = None
        with self._stats_lock:
            self._stats.leader = False
        if was:
            log.info("alert_leader_stepped_down")

    def _pass(self, read: Callable[[Session], Read], measure: bool = True) -> Read:
        """Judge what ``read`` finds, in one transaction with the alerts it writes."""
        assert self.alerts is not None
        start = time.perf_counter()
        with self.lock.transaction() as session:
            found = read(session)
            written = sum(self.alerts.process(session, c, d, late) for c, d, late in found.steps())
        with self._stats_lock:
            self._stats.busy_s += time.perf_counter() - start
            self._stats.passes += 1
            self._stats.batches += found.rows
            self._stats.written += written
            if measure and found.stored_at is not None:
                self._stats.lag_s = max(0.0, (now_us() - found.stored_at) / 1e6)
        if written:
            self.on_written()
        return found

    def _tick(self) -> None:
        assert self.alerts is not None
        start = time.perf_counter()
        with self.lock.transaction() as session:
            written = self.alerts.tick(session)
        with self._stats_lock:
            self._stats.busy_s += time.perf_counter() - start
            self._stats.written += written
        if written:
            self.on_written()
