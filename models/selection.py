"""Recipe options chosen on validation built from the training data alone, never on the data a model is scored on.

RUL (``rul_cap``): the label cap, and whether saturated predictions are replaced by the fleet's mean residual life
(the tail model), are chosen by engine-grouped K-fold on the training engines. Each held-out engine is truncated
at a random cycle, as the C-MAPSS test set is made (its README says only that each test engine "stops some time
before failure"; no distribution is given, so every cycle from the model's shortest window on is an equally
likely truncation point, each engine weighing one), and scored against its true remaining life as given: RMSE,
and the NASA score per engine. Candidates are fitted with the student's architecture on the capped labels.
The tail model replaces a prediction within ``TAIL_MARGIN`` of the cap by the mean remaining life of the fold's
training engines that lived past the cycle the engine has reached, where that is higher.
``remaining`` narrows the truncation to a documented range of remaining life (``(low, high]`` cycles, e.g. what a
data set's README says of its test engines): every cycle of a held-out engine whose remaining life lies in it is an
equally likely end, and the tail is then the survival prior of that truncation, the mean remaining life of the
training engines whose remaining life at the engine's cycle lies in the range.

Anomaly (``anomaly_recipe``): window length, calibrated alarm rate and the per-machine threshold rule are chosen
by leave-one-file-out inside the training group: each file in turn is a new machine (standardised on its own first
rows, threshold from its own baseline as the rule says), the detector fitted on the other files' baselines and
the normal run. The choice: the highest pooled F1 whose pooled false alarm rate stays within ``MAX_FAR``.

``with_test`` scores the chosen options on test data given apart, once, after the choice. Training side.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold

from models import anomaly, build, regimes, rul
from models.datasets import CMAPSS_SENSORS, CMAPSS_SETTINGS, load_cmapss, load_skab
from models.distill import MahalanobisDetector
from models.errors import TrainingError
from models.features import FeatureSpec, features

Array = NDArray[np.float64]
Remaining = tuple[float, float]  # (low, high]: the remaining life, in cycles, test engines are truncated at
EVERY_CYCLE: Remaining = (0.0, np.inf)
CAPS = (125.0, 150.0, 175.0, 200.0, 250.0)
TAIL_MARGIN = 5.0  # cycles below the cap from which a prediction counts as saturated
FOLDS = 5
WINDOWS = (20, 30, 45, 60)
ALARM_RATES = (0.01, 0.02, 0.05, 0.1)
FLOOR_QUANTILES = (0.95, 0.99)  # rule "floor": max(calibrated, quantile of the machine's baseline scores)
OWN_FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # rule "own": factor × the highest baseline score
MAX_FAR = 15.0  # % of normal rows; the target's bound


# ---- RUL: the cap, on truncated training engines ------------------------------------------------------------


def rul_cap(
    paths: Sequence[Path], progress: build.Progress = build.quiet, remaining: Remaining | None = None
) -> dict[str, Any]:
    """Validation figures of every (cap, tail) candidate and the one with the lowest RMSE as given.

    ``remaining``: the ``(low, high]`` remaining life test engines are truncated at (None: any cycle)."""
    within = remaining or EVERY_CYCLE
    if not 0.0 <= within[0] < within[1]:
        raise TrainingError(f"remaining life range {within[0]:g}-{within[1]:g}: needs 0 <= low < high")
    data = load_cmapss(paths)
    if data.train is None:
        raise TrainingError("no C-MAPSS training file (train_FD00x.txt) among the data given")
    found = regimes.fit(data.train, CMAPSS_SETTINGS, CMAPSS_SENSORS, rul.SEED)
    spec = rul.spec_for(found)
    progress("selection: features of every training window")
    X, _, true, groups = rul.training_set(data.train, spec)
    predicted = _out_of_fold(X, true, groups, progress, within)
    scored = X[:, 0] >= spec.min_window
    if remaining is not None:
        scored &= (true > remaining[0]) & (true <= remaining[1])
    weights = _per_engine(groups, scored)
    subsets = np.array([g.split("/")[0] for g in groups.astype(str)])
    table = {}
    for name, p in predicted.items():
        table[name] = {"all": _figures(p, true, weights, scored)} | {
            s: _figures(p, true, weights, scored & (subsets == s)) for s in sorted(set(subsets))
        }
    chosen = min(table, key=lambda k: table[k]["all"]["rmse"])
    return {
        "protocol": f"{FOLDS}-fold by engine on the training engines, each held-out engine truncated at a random "
        f"cycle from the {spec.min_window}th{_range_text(remaining)} (every such cycle equally likely, each engine "
        "weighing one), scored against its true remaining life as given",
        "remaining": None if remaining is None else list(remaining),
        "candidates": table,
        "chosen": chosen,
    }


def _range_text(remaining: Remaining | None) -> str:
    return "" if remaining is None else f" with {remaining[0]:g} < remaining life <= {remaining[1]:g} cycles"


def _out_of_fold(
    X: Array, true: Array, groups: NDArray[np.str_], progress: build.Progress, within: Remaining
) -> dict[str, Array]:
    cycle = X[:, 0]
    lives = {g: float(cycle[groups == g].max()) for g in np.unique(groups)}
    out: dict[str, Array] = {}
    for fold, (fit, held) in enumerate(GroupKFold(FOLDS).split(X, true, groups)):
        fleet = np.array([lives[g] for g in np.unique(groups[fit])])
        tail = mean_residual_life(fleet, cycle[held], within)
        for cap in CAPS:
            progress(f"selection: fold {fold + 1}/{FOLDS}, cap {cap:.0f}")
            model = HistGradientBoostingRegressor(**rul.STUDENT, early_stopping=False, random_state=rul.SEED)
            p = np.clip(model.fit(X[fit], np.minimum(true[fit], cap)).predict(X[held]), 0.0, cap)
            for name, values in ((f"cap {cap:.0f}", p), (f"cap {cap:.0f} + tail", with_tail(p, cap, tail))):
                out.setdefault(name, np.full(len(X), np.nan))[held] = values
    return out


def mean_residual_life(lives: Array, cycles: Array, within: Remaining = EVERY_CYCLE) -> Array:
    """The mean remaining life at each of ``cycles`` of the engines of ``lives`` whose remaining life there lies in
    ``within`` (``(low, high]``; by default: that lived past the cycle), 0 where there is none."""
    order = np.sort(lives)
    prefix = np.r_[0.0, np.cumsum(order)]
    first = np.searchsorted(order, cycles + within[0], side="right")
    last = np.searchsorted(order, cycles + within[1], side="right")
    count = last - first
    out: Array = np.where(count > 0, (prefix[last] - prefix[first]) / np.maximum(count, 1) - cycles, 0.0)
    return out


def with_tail(predicted: Array, cap: float, tail: Array) -> Array:
    """Saturated predictions (within ``TAIL_MARGIN`` of the cap) raised to the mean residual life where higher."""
    out: Array = np.where(predicted >= cap - TAIL_MARGIN, np.maximum(predicted, tail), predicted)
    return out


def _per_engine(groups: NDArray[np.str_], scored: NDArray[np.bool_]) -> Array:
    weights = np.zeros(len(groups))
    for g in np.unique(groups[scored]):
        here = scored & (groups == g)
        weights[here] = 1.0 / here.sum()
    return weights


def _figures(predicted: Array, true: Array, weights: Array, keep: NDArray[np.bool_]) -> dict[str, float]:
    d, w = predicted[keep] - true[keep], weights[keep]
    nasa = np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)
    return {
        "rmse": float(np.sqrt(np.sum(w * d**2) / w.sum())),
        "nasa_per_engine": float(np.sum(w * nasa) / w.sum()),
        "engines": round(float(w.sum())),
    }


def rul_test(
    paths: Sequence[Path], test: Sequence[Path], cap: float, tail: bool, remaining: Remaining | None = None
) -> dict[str, dict[str, float]]:
    """Test figures (last cycle of each test engine, true RUL as given) of the chosen candidate, per sub-set."""
    data = load_cmapss([*paths, *test])
    if data.train is None or data.test is None or data.truth is None:
        raise TrainingError("scoring the choice needs training files, test files and their RUL files")
    spec = rul.spec_for(regimes.fit(data.train, CMAPSS_SETTINGS, CMAPSS_SENSORS, rul.SEED))
    X, _, true, groups = rul.training_set(data.train, spec)
    model = HistGradientBoostingRegressor(**rul.STUDENT, early_stopping=False, random_state=rul.SEED)
    model.fit(X, np.minimum(true, cap))
    windows, units = rul.test_windows(data.test, spec)
    Xt = features(windows, spec)
    predicted = np.clip(model.predict(Xt), 0.0, cap)
    if tail:
        lives = np.array([X[groups == g, 0].max() for g in np.unique(groups)])
        predicted = with_tail(predicted, cap, mean_residual_life(lives, Xt[:, 0], remaining or EVERY_CYCLE))
    truth = data.truth.loc[units].to_numpy(dtype=np.float64)
    subsets = np.array([u.split("/")[0] for u in units])
    return {str(s): rul.metrics(truth[subsets == s], predicted[subsets == s]) for s in sorted(set(subsets))}


# ---- Anomaly: window, alarm rate and threshold rule, leave one file out -------------------------------------


@dataclass(frozen=True)
class Rule:
    """How a machine's threshold is set: ``floor``: max(calibrated at ``alarm_rate``, ``value`` quantile of its
    baseline scores); ``own``: ``value`` × its highest baseline score."""

    kind: str
    alarm_rate: float
    value: float

    def threshold(self, calibrated: float, baseline_scores: Array) -> float:
        """The machine's threshold from the calibrated one and its own baseline windows' scores."""
        if self.kind == "own":
            return self.value * float(baseline_scores.max())
        return max(calibrated, float(np.quantile(baseline_scores, self.value)))


def rules() -> list[Rule]:
    """Every threshold rule the selection tries."""
    floor = [Rule("floor", a, q) for a, q in itertools.product(ALARM_RATES, FLOOR_QUANTILES)]
    return floor + [Rule("own", ALARM_RATES[0], k) for k in OWN_FACTORS]


def machines(paths: Sequence[Path], spec: FeatureSpec) -> list[anomaly.Segment]:
    """The files under ``paths`` as new machines, each on its own baseline (the normal run cut in pieces)."""
    return anomaly.segments(load_skab(paths), spec)


def score(
    fitted: Sequence[anomaly.Segment], scored: Sequence[anomaly.Segment], rule: Rule
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Labels and alarms of ``scored`` by a detector fitted on the baselines of ``fitted`` (the unlabelled ones
    also set the calibrated threshold)."""
    detector = MahalanobisDetector().fit(np.concatenate([m.baseline for m in fitted]))
    normal = np.concatenate([m.scored for m in fitted if m.labels is None])
    calibrated = float(np.quantile(detector.distance(normal), 1 - rule.alarm_rate))
    labels: list[NDArray[np.bool_]] = []
    alarms: list[NDArray[np.bool_]] = []
    for m in scored:
        assert m.labels is not None
        labels.append(m.labels)
        alarms.append(detector.distance(m.scored) > rule.threshold(calibrated, detector.distance(m.baseline)))
    return np.concatenate(labels), np.concatenate(alarms)


def anomaly_recipe(paths: Sequence[Path], progress: build.Progress = build.quiet) -> dict[str, Any]:
    """Leave-one-file-out figures of every (window, rule) inside the training data, and the choice."""
    table: list[dict[str, Any]] = []
    for window in WINDOWS:
        progress(f"selection: window {window}, leave one file out")
        spec = replace(anomaly.SPEC, window=window, min_window=window)
        found = machines(paths, spec)
        labelled = [i for i, m in enumerate(found) if m.labels is not None]
        if len(labelled) < 2:
            raise TrainingError("leave-one-file-out needs at least two labelled files in the training data")
        for rule in rules():
            parts = [score(found[:i] + found[i + 1 :], [found[i]], rule) for i in labelled]
            figures = anomaly.metrics(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            table.append({"window": window, "rule": rule.kind, "alarm_rate": rule.alarm_rate, "value": rule.value}
                         | {k: figures[k] for k in ("f1", "far", "mar")})  # fmt: skip
    within = [r for r in table if r["far"] <= MAX_FAR] or table
    chosen = max(within, key=lambda r: r["f1"])
    return {
        "protocol": "leave one file out inside the training data: each labelled file a new machine, scored "
        "against its own first 400 rows, the detector fitted on the other files' baselines and the normal run; "
        f"chosen: the highest pooled F1 with pooled FAR ≤ {MAX_FAR:.0f} %",
        "candidates": table,
        "chosen": chosen,
    }


def anomaly_test(paths: Sequence[Path], test: Sequence[Path], chosen: dict[str, Any]) -> dict[str, Any]:
    """Pooled F1, FAR and MAR on the test files of the chosen options (float detector, as selected)."""
    spec = replace(anomaly.SPEC, window=int(chosen["window"]), min_window=int(chosen["window"]))
    rule = Rule(str(chosen["rule"]), float(chosen["alarm_rate"]), float(chosen["value"]))
    labels, alarms = score(machines(paths, spec), machines(test, spec), rule)
    figures: dict[str, Any] = anomaly.metrics(labels, alarms)
    return figures


def table(task: str, result: dict[str, Any]) -> str:
    """A selection's candidates, its choice and (when scored) the test figures, as aligned text."""
    lines = [result["protocol"]]
    if task == "rul":
        lines.append(f"{'candidate':<20}{'RMSE':>8}{'NASA/engine':>13}  per sub-set RMSE")
        for name, row in result["candidates"].items():
            subsets = ", ".join(f"{k} {v['rmse']:.2f}" for k, v in row.items() if k != "all")
            lines.append(f"{name:<20}{row['all']['rmse']:>8.2f}{row['all']['nasa_per_engine']:>13.1f}  {subsets}")
    else:
        lines.append(f"{'window':>6} {'rule':<6}{'alarm':>7}{'value':>7}{'F1':>8}{'FAR %':>8}{'MAR %':>8}")
        for r in sorted(result["candidates"], key=lambda r: -r["f1"])[:10]:
            lines.append(
                f"{r['window']:>6} {r['rule']:<6}{r['alarm_rate']:>7.2f}{r['value']:>7.2f}"
                f"{r['f1']:>8.3f}{r['far']:>8.1f}{r['mar']:>8.1f}"
            )
    lines.append(f"chosen: {result['chosen']}")
    if "test" in result:
        lines.append(f"test: {result['test']}")
    return "\n".join(lines)
