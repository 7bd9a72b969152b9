"""Per-machine anomaly baselines: a new machine of a known type learns its own normal operation.

An anomaly model scores a window's features relative to a baseline (their mean and spread in normal
operation). The model's default is the training fleet's, which for a machine of its own make-up means false
alarms on every window (SKAB's valve runs: all of them); so each machine learns its own from its first
``EDGE_BASELINE_HOURS`` of operation marked healthy. Until the model's ``baseline.min_rows`` healthy rows are
there, the machine's anomaly windows are not scored (skipped, reason ``baseline_learning``); from then on a
provisional baseline of the rows so far is used, rebuilt every tenth of the way, and the final one once ready.
With ``EDGE_BASELINE_HOURS=0`` there is no learning and the default baseline is used.

Healthy operation: a closed frame (no revision can follow) whose model signals all hold good numeric values,
of a machine that

* is not marked otherwise in the site model: the node attribute ``healthy: false`` pauses learning (set it
  while commissioning, or while a known defect is being fixed; a reload takes it into account), and
* has no open fault: its own latest fault diagnosis, when its type has a faults model, is ``none``.

The anomaly model's own verdict is not used: scored against the fleet's default, a new machine's normal
operation may well look anomalous, which is what the baseline corrects.

Ready once the healthy rows cover ``EDGE_BASELINE_HOURS`` (rows × grid step) and number at least the model's
``baseline.min_rows``. Then

* feature normalisation: ``LoadedModel.with_baseline(rows)``, the mean and spread of this machine's healthy
  windows' features;
* threshold: the larger of the model's calibrated threshold and the ``EDGE_BASELINE_QUANTILE`` quantile of
  the scores of the machine's own healthy windows. A machine whose normal operation is rougher than the
  fleet's stops alarming on it; the threshold never drops below the calibrated one, which already holds for
  scores relative to each machine's own baseline.

Rows beyond ``EDGE_BASELINE_MAX_ROWS`` are not kept (their time still counts). Rows and progress live in
``<data_dir>/baselines.sqlite``: a restart resumes learning where it stopped, and a ready baseline is rebuilt
from its rows at start and for every new model version. A model reading other signals restarts learning.

Visible as the gauge ``ft_agent_baseline_progress{node,task}`` (1 = ready), a ``baseline_learning`` log line
per 10 % (progress "37%") and ``baseline_ready``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from edge_agent import metrics
from edge_agent.errors import ModelUnusable
from models.errors import ModelError
from models.runtime import LoadedModel, Prediction, judged

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline (
    node TEXT NOT NULL,
    task TEXT NOT NULL,
    signals TEXT NOT NULL,       -- JSON list: the model inputs the rows hold, in order
    healthy_us INTEGER NOT NULL, -- healthy operation seen so far, µs of grid time
    last_ts INTEGER NOT NULL,    -- newest frame taken into account
    ready INTEGER NOT NULL,
    PRIMARY KEY (node, task)
);
CREATE TABLE IF NOT EXISTS baseline_row (
    node TEXT NOT NULL,
    task TEXT NOT NULL,
    ts INTEGER NOT NULL,
    row TEXT NOT NULL,           -- JSON list of floats, in the order of baseline.signals
    PRIMARY KEY (node, task, ts)
) WITHOUT ROWID;
"""
_CHUNK = 2048  # windows scored at once when the threshold is adapted


@dataclass
class BaselineLearner:
    """One machine's baseline for one anomaly model, learnt from its healthy rows.

    Args:
        node: the machine.
        task: the model's task (``anomaly``).
        signals: the model's inputs, in order.
        grid_us: the machine's grid step.
        need_us: healthy operation to learn from.
        min_rows: rows the model needs at least.
        max_rows: rows kept at most.
    """

    node: str
    task: str
    signals: tuple[str, ...]
    grid_us: int
    need_us: int
    min_rows: int
    max_rows: int
    rows: list[list[float]] = field(default_factory=list)
    healthy_us: int = 0
    last_ts: int = -1
    ready: bool = False
    pending: list[tuple[int, list[float]]] = field(default_factory=list)  # rows not yet written
    saved_ready: bool = False  # whether the store knows it is ready
    _logged: int = -1

    @property
    def progress(self) -> float:
        """Share learnt, 1.0 once ready."""
        if self.ready:
            return 1.0
        return min(self.healthy_us / max(self.need_us, 1), len(self.rows) / max(self.min_rows, 1), 1.0)

    @property
    def refresh_rows(self) -> int:
        """New rows after which a provisional baseline is rebuilt (a tenth of the rows needed)."""
        return max(min(self.need_us // self.grid_us, self.max_rows) // 10, 1)

    @property
    def due(self) -> bool:
        """Enough healthy operation to build the baseline."""
        return not self.ready and self.healthy_us >= self.need_us and len(self.rows) >= self.min_rows

    def status(self) -> str:
        """``ready`` or the progress in percent, for people."""
        return "ready" if self.ready else f"{int(self.progress * 100)}%"

    def feed(self, rows: list[tuple[int, list[float] | None]], healthy: bool) -> None:
        """Take closed frames (row None: a value missing or bad); only healthy ones count."""
        for ts, row in rows:
            if ts <= self.last_ts:
                continue
            self.last_ts = ts
            if self.ready or row is None or not healthy:
                continue
            self.healthy_us += self.grid_us
            if len(self.rows) < self.max_rows:
                self.rows.append(row)
                self.pending.append((ts, row))
        self.publish()

    def publish(self) -> None:
        """Progress to its gauge and, per 10 %, to the log."""
        metrics.BASELINE_PROGRESS.labels(self.node, self.task).set(self.progress)
        step = 11 if self.ready else int(self.progress * 10)  # 100 % learnt is not yet ready: saved first
        if step != self._logged:
            self._logged = step
            if self.ready:
                log.info("baseline_ready", node_id=self.node, task=self.task, rows=len(self.rows))
            else:
                log.info("baseline_learning", node_id=self.node, task=self.task, progress=self.status())


@dataclass(frozen=True, slots=True)
class Adapted:
    """An anomaly model scoring against one machine's baseline, with that machine's threshold.

    Args:
        model: the baselined model (``LoadedModel.with_baseline``).
        threshold: the machine's own anomaly threshold.
    """

    model: LoadedModel
    threshold: float

    def apply(self, p: Prediction) -> Prediction:
        """A prediction of ``model`` judged against the machine's threshold (label and confidence as the runtime
        defines them: anomaly above the threshold; confidence the distance from it in threshold units)."""
        return judged(p, self.threshold)


def adapt(model: LoadedModel, rows: list[list[float]], units: dict[str, str], quantile: float) -> Adapted:
    """The model scoring against these healthy rows, and its adapted threshold (see the module docstring).

    Raises ModelUnusable when the rows cannot make a baseline for this model.
    """
    signals = model.spec.signals
    array = np.asarray(rows, dtype=np.float64)
    history = {s: array[:, i] for i, s in enumerate(signals)}
    try:
        adapted = model.with_baseline(history, units)
        view = np.lib.stride_tricks.sliding_window_view(array, model.spec.window, axis=0).transpose(0, 2, 1)
        scores = np.concatenate(
            [
                adapted.raw_outputs(adapted.transform(np.ascontiguousarray(view[i : i + _CHUNK]))).reshape(-1)
                for i in range(0, view.shape[0], _CHUNK)
            ]
        )
    except ModelError as exc:
        raise ModelUnusable(f"baseline for {model.manifest['name']} {model.manifest['version']}: {exc}") from None
    calibrated = float(model.manifest["variants"][model.variant]["calibration"]["threshold"])
    own = float(np.quantile(scores, quantile)) if scores.size else calibrated
    return Adapted(adapted, max(calibrated, own) if np.isfinite(own) else calibrated)


class BaselineStore:
    """Baseline rows and progress in a small SQLite file; use it from one thread only.

    Args:
        path: the database file (created with its folder when missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ModelUnusable(f"{path}: cannot open the baseline store: {exc}") from exc

    def load(self, learner: BaselineLearner) -> None:
        """Fill a fresh learner from what was stored (nothing when its signals changed).

        Raises ModelUnusable (the learner unchanged) when the store cannot be read or holds malformed rows.
        """
        try:
            row = self._db.execute(
                "SELECT signals, healthy_us, last_ts, ready FROM baseline WHERE node = ? AND task = ?",
                (learner.node, learner.task),
            ).fetchone()
            if row is None:
                return
            if tuple(json.loads(row[0])) != learner.signals:
                log.info("baseline_restarted", node_id=learner.node, task=learner.task,
                         reason="model reads other signals")
                self._clear(learner)
                return
            progress = int(row[1]), int(row[2]), bool(row[3])
            rows = [
                [float(v) for v in json.loads(r)]
                for (r,) in self._db.execute(
                    "SELECT row FROM baseline_row WHERE node = ? AND task = ? ORDER BY ts LIMIT ?",
                    (learner.node, learner.task, learner.max_rows),
                )
            ]
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise ModelUnusable(f"{self.path}: cannot read the baseline of {learner.node}: {exc}") from exc
        learner.healthy_us, learner.last_ts, learner.ready = progress
        learner.rows = rows

    def save(self, learner: BaselineLearner, rows: list[tuple[int, list[float]]]) -> None:
        """Write new rows and the progress in one transaction."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO baseline_row (node, task, ts, row) VALUES (?, ?, ?, ?)",
                [(learner.node, learner.task, ts, json.dumps(r)) for ts, r in rows],
            )
            self._db.execute(
                "INSERT INTO baseline (node, task, signals, healthy_us, last_ts, ready) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (node, task) DO UPDATE SET signals = excluded.signals,"
                " healthy_us = excluded.healthy_us, last_ts = excluded.last_ts, ready = excluded.ready",
                (
                    learner.node,
                    learner.task,
                    json.dumps(learner.signals),
                    learner.healthy_us,
                    learner.last_ts,
                    int(learner.ready),
                ),
            )
            self._db.execute("COMMIT")
        except (sqlite3.Error, ValueError, TypeError) as exc:
            self._rollback()
            raise ModelUnusable(f"{self.path}: cannot write baseline rows: {exc}") from exc

    def _rollback(self) -> None:
        """Roll back the transaction, if SQLite has not already (it does itself on a full disk)."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _clear(self, learner: BaselineLearner) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM baseline WHERE node = ? AND task = ?", (learner.node, learner.task))
            self._db.execute("DELETE FROM baseline_row WHERE node = ? AND task = ?", (learner.node, learner.task))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise ModelUnusable(f"{self.path}: cannot clear the baseline of {learner.node}: {exc}") from exc

    def close(self) -> None:
        """Close the file."""
        self._db.close()
