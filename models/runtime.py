"""The edge runtime: load a registry model directory, validate a window, and score it with onnxruntime.

Needs numpy and onnxruntime only (no scikit-learn, no pandas), so the edge agent and the platform run the
same code::

    model = runtime.load(registry.latest(Path("models/registry"), "rul"))  # the newest version
    prediction = model.predict({"cycle": [...], "t24": [...], ...}, units={"t24": "°R", ...})

A window with a missing signal, NaN, the wrong length or the wrong unit raises ``WindowRejected`` with a
reason, unless the manifest declares a policy for it (short windows padded with their oldest row).

A variant's graph takes either the standardised window features (computed here by ``features.py``) or, when
its manifest entry says ``graph_input: window``, the validated window itself and the baseline: its features
are then nodes of the graph, built at training from the same ``FeatureSpec`` (one onnxruntime call per window).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog
from numpy.typing import NDArray

from models import registry
from models.errors import InferenceError, ModelLoadError, WindowRejected
from models.features import FeatureSpec, features, pad_oldest, series_features

log = structlog.get_logger(__name__)

# Spellings of one unit that devices and site files use interchangeably.
_UNIT_ALIASES = {
    "nm": "n·m",
    "n m": "n·m",
    "n*m": "n·m",
    "degc": "°c",
    "deg c": "°c",
    "c": "°c",
    "degr": "°r",
}

Column = Sequence[Any] | NDArray[Any]  # one signal's values in a window: a list, or a numpy column


def _unit_key(unit: str) -> str:
    key = unit.strip().lower()
    return _UNIT_ALIASES.get(key, key)


@dataclass(frozen=True)
class Prediction:
    """A model's verdict on one window; the fields of the wire ``Diagnosis`` it becomes.

    Args:
        confidence: in [0, 1]; low values are the ones the platform's teacher should re-check.
        score: anomaly score (anomaly models).
        threshold: anomaly threshold the score is compared with.
        label: fault mode or ``none`` (faults); ``anomaly`` or ``normal`` (anomaly).
        probability: calibrated probability of ``label`` (faults).
        rul: remaining useful life in ``unit`` (rul), with its prediction interval ``rul_low``..``rul_high``.
        unit: unit of ``rul``.
    """

    confidence: float
    score: float | None = None
    threshold: float | None = None
    label: str | None = None
    probability: float | None = None
    rul: float | None = None
    rul_low: float | None = None
    rul_high: float | None = None
    unit: str = ""


class LoadedModel:
    """One variant of a registry model, ready to score windows.

    Args:
        manifest: the checked manifest of the model directory.
        variant: which variant's ONNX file is loaded (``teacher``, ``student``, ``student-int8``).
        session: the onnxruntime session of that file.
        baseline: per-feature (mean, std) an anomaly model scores against, or None for other tasks.

    Raises:
        ModelLoadError: a graph taking the window and a baseline was given none.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        variant: str,
        session: ort.InferenceSession,
        baseline: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
    ) -> None:
        self.manifest = manifest
        self.variant = variant
        self.spec = FeatureSpec.from_json(manifest["input"])
        self._session = session
        self._entry = manifest["variants"][variant]
        self._output = self._entry["output_name"]
        self._baseline = baseline
        # Cached once: the per-window path builds no dicts or lists beyond the feed itself.
        self._input_name = session.get_inputs()[0].name
        self._output_names = [self._output]
        self._run = _bound_run(session)
        self._kind = manifest["output"]["kind"]
        self._calibration = self._entry["calibration"]
        self._checked_units: dict[str, str] | None = None
        # (x - mean) / std as one multiply-subtract: x * scale - shift.
        self._scale_shift = None if baseline is None else (1.0 / baseline[1], baseline[0] / baseline[1])
        self._window_graph = self._entry.get("graph_input", "features") == "window"
        self._feed: dict[str, NDArray[np.float64]] = {}  # inputs besides the window that every call shares
        if self._window_graph:
            if baseline is None:
                raise ModelLoadError(f"{manifest['name']} {variant}: its graph takes a baseline, none given")
            self._feed = dict(zip(registry.GRAPH_INPUTS["window"][1:], (baseline[0], 1.0 / baseline[1]), strict=True))

    @property
    def task(self) -> str:
        """``rul``, ``faults`` or ``anomaly``."""
        return str(self.manifest["task"])

    def probe_window(self) -> dict[str, list[Any]]:
        """A window this model accepts (``FeatureSpec.probe``), signal → values: to check a model works."""
        rows = self.spec.probe()
        window: dict[str, list[Any]] = {}
        for i, name in enumerate(self.spec.signals):
            categories = self.spec.categories.get(name)
            window[name] = [categories[0]] * len(rows) if categories else rows[:, i].tolist()
        return window

    def predict(self, window: Mapping[str, Column], units: Mapping[str, str] | None = None) -> Prediction:
        """Score one window (signal name → values, oldest first); units default to the declared ones."""
        out = self.raw_outputs(self.model_input(window, units))
        if self._kind == "regression":
            return self._rul(float(out.flat[0]), self._calibration)
        if self._kind == "classification":
            return self._fault(out.reshape(-1), self._calibration)
        return self._anomaly(float(out.flat[0]), self._calibration)

    def model_input(self, window: Mapping[str, Column], units: Mapping[str, str] | None = None) -> NDArray[Any]:
        """The graph's input for one validated window (the single-window fast path).

        The ``(1, window, n_signals)`` float64 window for a graph computing its own features, otherwise the
        ``(1, n_features)`` float32 features (``feature_input``).
        """
        series = self._series(window, units)
        if self._window_graph:
            return series.T[None]
        return self._standardised(series_features(series, self.spec))[None]

    def feature_input(
        self, window: Mapping[str, Column], units: Mapping[str, str] | None = None
    ) -> NDArray[np.float32]:
        """The ``(1, n_features)`` float32 features of one validated window, computed by ``features.py``."""
        return self._standardised(series_features(self._series(window, units), self.spec))[None]

    def predict_batch(
        self, windows: Sequence[Mapping[str, Column]], units: Mapping[str, str] | None = None
    ) -> list[Prediction]:
        """Score several windows in one onnxruntime call; any bad window rejects the batch."""
        if not windows:
            return []
        stacked = np.stack([self.window_array(w, units) for w in windows])
        return self._postprocess(self.raw_outputs(self.transform(stacked)))

    def window_array(
        self, window: Mapping[str, Column], units: Mapping[str, str] | None = None
    ) -> NDArray[np.float64]:
        """The validated ``(window, n_signals)`` float64 array of one window, or WindowRejected."""
        return self._series(window, units).T

    def _series(self, window: Mapping[str, Column], units: Mapping[str, str] | None) -> NDArray[np.float64]:
        """Validated, padded ``(n_signals, window)`` array: a few vectorised checks in the common case."""
        spec = self.spec
        if units is not None and units != self._checked_units:
            _check_units(spec, units)
            self._checked_units = dict(units)  # the same units again (the usual case) need no second check
        series = _fast_series(spec, window)
        if series is None:  # something is off: the checking path names the culprit
            series = _rows(spec, window, units).T
        length = series.shape[1]
        if length == spec.window:
            return series
        if length < spec.min_window or length > spec.window:
            raise WindowRejected("wrong_length", f"{length} rows, model takes {spec.min_window}..{spec.window}")
        return pad_oldest(series.T, spec.window).T

    def transform(self, windows: NDArray[np.float64]) -> NDArray[Any]:
        """The graph's input for validated windows ``(n, window, n_signals)``: themselves or their features."""
        if self._window_graph:
            return np.ascontiguousarray(windows, dtype=np.float64)
        return self.feature_matrix(windows)

    def feature_matrix(self, windows: NDArray[np.float64]) -> NDArray[np.float32]:
        """Float32 features of validated windows, by ``features.py`` (anomaly: relative to the baseline)."""
        return self._standardised(features(windows, self.spec))

    def _standardised(self, feats: NDArray[np.float64]) -> NDArray[np.float32]:
        if self._scale_shift is not None:
            scale, shift = self._scale_shift
            feats *= scale
            feats -= shift
        return feats.astype(np.float32)

    def raw_outputs(self, inputs: NDArray[Any]) -> NDArray[np.float32]:
        """The ONNX output the manifest names, for the graph's input (``transform``, ``model_input``)."""
        try:
            out = self._run(self._output_names, {self._input_name: inputs, **self._feed})[0]
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidArgument errors
            raise InferenceError(f"{self.manifest['name']} {self.variant}: {exc}") from None
        return np.asarray(out, dtype=np.float32)

    def with_baseline(
        self, history: Mapping[str, Column], units: Mapping[str, str] | None = None
    ) -> LoadedModel:
        """A copy scoring against this asset's own normal operation (anomaly models; SKAB's protocol)."""
        if self.task != "anomaly":
            raise ModelLoadError(f"{self.task} models take no baseline")
        rows = _rows(self.spec, history, units)
        needed = int(self.manifest["baseline"]["min_rows"])
        if rows.shape[0] < needed:
            raise WindowRejected("wrong_length", f"baseline of {rows.shape[0]} rows, need {needed}")
        feats = baseline_features(rows, self.spec)
        mean, std = baseline_stats(feats)
        return LoadedModel(self.manifest, self.variant, self._session, (mean, std))

    def _postprocess(self, out: NDArray[np.float32]) -> list[Prediction]:
        kind = self._kind
        calibration = self._calibration
        if kind == "regression":
            return [self._rul(float(v), calibration) for v in out.reshape(-1)]
        if kind == "classification":
            return [self._fault(row, calibration) for row in out.reshape(out.shape[0], -1)]
        return [self._anomaly(float(v), calibration) for v in out.reshape(-1)]

    def _rul(self, raw: float, calibration: dict[str, Any]) -> Prediction:
        cap = float(self.manifest["output"]["cap"])
        rul = min(max(raw, 0.0), cap)
        band = int(np.searchsorted(calibration["edges"], rul, side="right"))
        low = max(0.0, rul + calibration["lower"][band])
        high = rul + calibration["upper"][band]
        confidence = min(max(1.0 - (high - low) / (2.0 * cap), 0.0), 1.0)
        return Prediction(
            confidence=confidence, rul=rul, rul_low=low, rul_high=high, unit=self.manifest["output"]["unit"]
        )

    def _fault(self, row: NDArray[np.float32], calibration: dict[str, Any]) -> Prediction:
        probs = calibrated_probabilities(row[None, :].astype(np.float64), float(calibration["temperature"]))[0]
        best = int(np.argmax(probs))
        p = float(probs[best])
        return Prediction(confidence=p, label=self.manifest["output"]["labels"][best], probability=p)

    def _anomaly(self, score: float, calibration: dict[str, Any]) -> Prediction:
        threshold = float(calibration["threshold"])
        # How far the score sits from the threshold, in units of the threshold: 0 on it, 1 at 0 or 2×.
        confidence = min(abs(score / threshold - 1.0), 1.0) if threshold > 0 else 0.0
        label = "anomaly" if score > threshold else "normal"
        return Prediction(confidence=confidence, score=score, threshold=threshold, label=label)


def judged(p: Prediction, threshold: float) -> Prediction:
    """An anomaly prediction judged against another threshold (a machine's own): the label and the confidence
    as ``LoadedModel`` defines them (anomaly above the threshold; confidence the distance from it in threshold
    units)."""
    if p.score is None or threshold <= 0:
        return p
    confidence = min(abs(p.score / threshold - 1.0), 1.0)
    label = "anomaly" if p.score > threshold else "normal"
    return replace(p, threshold=threshold, label=label, confidence=confidence)


def _bound_run(session: ort.InferenceSession) -> Any:
    """``session.run`` without its per-call feed re-validation (the schema is checked once, at load).

    onnxruntime's public ``run`` wraps the C++ session's ``run(outputs, feed, run_options)``; for a window of
    a few dozen features the wrapper's checks cost about as much as the graph. Falls back to the public
    method if a future onnxruntime drops the attribute.
    """
    inner = getattr(session, "_sess", None)
    if inner is None or not callable(getattr(inner, "run", None)):
        return session.run

    def run(outputs: list[str], feed: dict[str, Any]) -> Any:
        return inner.run(outputs, feed, None)

    return run


def _rows(
    spec: FeatureSpec, window: Mapping[str, Column], units: Mapping[str, str] | None
) -> NDArray[np.float64]:
    """Validated ``(rows, n_signals)`` array of a window of any length: units, presence, NaN, lengths."""
    if units is not None:
        _check_units(spec, units)
    missing = [name for name in spec.signals if name not in window]
    if missing:
        raise WindowRejected("missing_signal", f"{', '.join(missing)} not in window")
    fast = _fast_series(spec, window)
    if fast is not None:
        return fast.T
    columns = [_column(spec, name, window[name]) for name in spec.signals]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise WindowRejected("wrong_length", f"signals of unequal length {sorted(lengths)}")
    return np.stack(columns, axis=1)


def _check_units(spec: FeatureSpec, units: Mapping[str, str]) -> None:
    for name, declared in zip(spec.signals, spec.units, strict=True):
        given = units.get(name)
        if given is not None and _unit_key(given) != _unit_key(declared):
            raise WindowRejected("wrong_unit", f"{name} in {given!r}, model expects {declared!r}")


def _fast_series(spec: FeatureSpec, window: Mapping[str, Column]) -> NDArray[np.float64] | None:
    """The common case as one ``(n_signals, rows)`` array, one vectorised check (numeric, equal lengths,
    finite); None otherwise."""
    if spec.categories:
        return None
    try:
        rows = np.array([window[name] for name in spec.signals], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None  # missing, ragged or non-numeric
    if rows.ndim != 2 or not np.isfinite(rows).all():
        return None
    return rows


def _column(spec: FeatureSpec, name: str, values: Column) -> NDArray[np.float64]:
    categories = spec.categories.get(name)
    if categories is not None:
        try:
            return np.array([categories.index(str(v)) for v in values], dtype=np.float64)
        except ValueError:
            raise WindowRejected("bad_value", f"{name} must be one of {list(categories)}") from None
    try:
        column = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise WindowRejected("bad_value", f"{name} has non-numeric values") from None
    if column.ndim != 1:
        raise WindowRejected("bad_value", f"{name} must be a flat sequence")
    if not np.isfinite(column).all():
        raise WindowRejected("nan", f"{name} has NaN or infinite values")
    return column


def calibrated_probabilities(raw: NDArray[np.float64], temperature: float) -> NDArray[np.float64]:
    """Class probabilities after temperature scaling of raw (possibly unnormalised) scores ≥ 0."""
    logits = np.log(np.clip(raw, 1e-6, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def baseline_features(rows: NDArray[np.float64], spec: FeatureSpec) -> NDArray[np.float64]:
    """Features of every full window inside a stretch of normal operation."""
    view = np.lib.stride_tricks.sliding_window_view(rows, spec.window, axis=0).transpose(0, 2, 1)
    return features(np.ascontiguousarray(view), spec)


def baseline_stats(feats: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-feature mean and a floored std (a constant signal must not make every change infinite)."""
    mean = feats.mean(axis=0)
    std = np.maximum(feats.std(axis=0), 1e-3 * np.abs(mean) + 1e-6)
    return mean, std


def load(path: Path | str, variant: str | None = None) -> LoadedModel:
    """Load a model directory's variant (default: the manifest's edge variant), checking sha256 and schema."""
    directory = Path(path)
    manifest = registry.read_manifest(directory)
    chosen = variant or manifest["default_variant"]
    data = registry.read_variant(directory, manifest, chosen)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one window is tiny: threads cost more than they give
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: onnxruntime's warnings go to stderr, not our log
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's InvalidGraph / Fail errors have no common public base
        raise ModelLoadError(f"{directory}: {chosen} is not a loadable ONNX model ({exc})") from None
    _check_schema(directory, manifest, chosen, session)
    baseline = None
    if manifest["task"] == "anomaly":
        default = manifest["baseline"]["default"]
        baseline = (
            np.asarray(default["mean"], dtype=np.float64),
            np.asarray(default["std"], dtype=np.float64),
        )
    log.info("model_loaded", model=manifest["name"], version=manifest["version"], variant=chosen)
    return LoadedModel(manifest, chosen, session, baseline)


def _check_schema(directory: Path, manifest: dict[str, Any], variant: str, session: ort.InferenceSession) -> None:
    entry = manifest["variants"][variant]
    spec = FeatureSpec.from_json(manifest["input"])
    if len(spec.signals) != len(spec.units):
        raise ModelLoadError(f"{directory}: {len(spec.signals)} signals but {len(spec.units)} units")
    try:
        width = features(spec.probe()[None], spec).shape[1]
    except (ValueError, IndexError, KeyError, WindowRejected) as exc:
        raise ModelLoadError(f"{directory}: input schema does not fit the {spec.task} features ({exc})") from None
    takes = entry.get("graph_input", "features")
    expected = {"features": [[width]], "window": [[spec.window, len(spec.signals)], [width], [width]]}[takes]
    declared = [(i.name, [d if isinstance(d, int) else None for d in i.shape]) for i in session.get_inputs()]
    wanted = list(zip(registry.GRAPH_INPUTS[takes], expected, strict=True))
    # The first input's leading dimension is the batch: any size.
    if [(n, shape[1:] if i == 0 else shape) for i, (n, shape) in enumerate(declared)] != wanted:
        raise ModelLoadError(f"{directory}: {variant} takes {declared}, the manifest's input schema gives {wanted}")
    if entry["n_features"] != width:
        raise ModelLoadError(
            f"{directory}: {variant} declares {entry['n_features']} features, the schema gives {width}"
        )
    if entry["output_name"] not in {o.name for o in session.get_outputs()}:
        raise ModelLoadError(f"{directory}: {variant} has no output {entry['output_name']!r}")
