"""Retraining with maintenance feedback: people's verdicts on alerts become labelled training windows.

A feedback item, in a JSON file (a list, or ``{"items": [...]}``)::

    {"node": "pump-1", "task": "anomaly", "verdict": "false_alarm",   # or "true_fault"
     "window": {"current": [...], ...},   # every model signal, oldest row first, any length ≥ the model window
     "ts": 1767225600000000,              # window end (µs or ISO 8601)
     "baseline": {"current": [...], ...}, # anomaly: the machine's first healthy rows (else skipped)
     "label": "HDF"}                      # faults, true_fault: the mode found (else the diagnosis' label)

Items exported by ``GET /api/v1/alerts/feedback`` are accepted as they are once they carry a window;
``fetch`` reads them from the platform and adds the window from the node's frames.

Verdicts become labels. Faults: a false alarm labels its rows ``none``, a true fault labels them with the
mode. Anomaly: a false alarm's windows are normal operation (the detectors learn them and the thresholds
count them as normal), a true fault's windows are anomalous (they cap how far the thresholds rise).
``cause_found``, items of other tasks and anomaly items without a baseline are skipped and counted.
Feedback goes into the training part only: a feedback window sharing a row with the held-out data is
dropped, so the held-out data, and the old model's figures on it, stay what they were.

``retrain`` builds the new version (a minor bump of the old one) into its own directory and reports old
against new on the same held-out data. It never promotes: it refuses to write into the registry the old
model came from, where the edge would load the new version as the newest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from models import build, cascade_threshold, faults, registry, runtime, tasks
from models.errors import DataError, WindowRejected
from models.report import HEADLINE

VERDICTS = ("true_fault", "false_alarm")
_KIND_TASK = {"fault": "faults", "anomaly": "anomaly", "rul": "rul"}  # alert rule kind → model task
FRAMES_PAGE = 10_000  # the platform's largest page


@dataclass(frozen=True)
class Item:
    """One usable feedback verdict with its window."""

    index: int
    node: str
    task: str
    verdict: str
    window: Mapping[str, Sequence[Any]]
    ts: int | None = None
    label: str | None = None
    baseline: Mapping[str, Sequence[Any]] | None = None


@dataclass
class Parsed:
    """The items of one task, and how many others were skipped for which reason."""

    items: list[Item] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count one item left out."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def read_file(path: Path) -> list[dict[str, Any]]:
    """The feedback items of a JSON file: a list, or an object with ``items``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise DataError(f"{path}: not JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
        raise DataError(f"{path}: expected a JSON list of feedback objects (or {{'items': [...]}})")
    return data


def task_of(raw: Mapping[str, Any]) -> str | None:
    """The model task an item speaks of: its own ``task``, its diagnosis' task, or its alert rule's kind."""
    evidence = raw.get("evidence") or {}
    task = raw.get("task") or evidence.get("task")
    if task is None and evidence.get("kind") in _KIND_TASK:
        task = _KIND_TASK[evidence["kind"]]
    return str(task) if task is not None else None


def parse(raws: Sequence[Mapping[str, Any]], task: str) -> Parsed:
    """The items of ``task`` with a verdict that labels; DataError names the first malformed one."""
    out = Parsed()
    for index, raw in enumerate(raws):
        where = f"feedback item {index} ({raw.get('node', '?')})"
        verdict = raw.get("verdict")
        if verdict == "cause_found":
            out.skip("cause_found")
            continue
        if verdict not in VERDICTS:
            raise DataError(f"{where}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}, cause_found")
        found = task_of(raw)
        if found != task:
            out.skip(f"task {found}" if found else "no model task")
            continue
        if raw.get("unusable"):  # set by fetch: the platform no longer holds what the window needs
            out.skip(str(raw["unusable"]))
            continue
        baseline = raw.get("baseline")
        if task == "anomaly" and baseline is None:
            # Against the fleet's default baseline a machine's normal operation looks anomalous: such
            # windows would teach the detectors nothing true about normal operation.
            out.skip("no baseline")
            continue
        window = raw.get("window")
        if not isinstance(window, Mapping) or not window:
            raise DataError(f"{where}: no window (signal → values); fetch it from the platform or add it")
        if baseline is not None and not isinstance(baseline, Mapping):
            raise DataError(f"{where}: baseline must map signals to values")
        label = raw.get("label") or (raw.get("evidence") or {}).get("label")
        if task == "faults" and verdict == "true_fault" and label in faults.MODES and label not in faults.LABELS:
            out.skip(f"{label}: a rule's mode, not the model's")  # TWF: the tool-wear rule covers it
            continue
        out.items.append(
            Item(index, str(raw.get("node", "")), task, verdict, window, _us(raw.get("ts"), where), label, baseline)
        )
    return out


def _us(value: Any, where: str) -> int | None:
    """µs since the epoch from an integer or an ISO 8601 text with a time zone."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise DataError(f"{where}: ts {value!r} is neither µs nor ISO 8601") from None
    if moment.tzinfo is None:
        raise DataError(f"{where}: ts {value!r} has no time zone")
    return round(moment.timestamp() * 1_000_000)


def model_windows(model: runtime.LoadedModel, window: Mapping[str, Sequence[Any]]) -> NDArray[np.float64]:
    """Every model-length window inside a feedback window, validated as the runtime does: ``(n, rows, signals)``."""
    spec = model.spec
    missing = [s for s in spec.signals if s not in window]
    if missing:
        raise WindowRejected("missing_signal", f"{', '.join(missing)} not in window")
    if not all(isinstance(window[s], list | tuple) for s in spec.signals):
        raise WindowRejected("bad_value", "every signal must be a list of values")
    lengths = {len(window[s]) for s in spec.signals}
    if len(lengths) != 1:
        raise WindowRejected("wrong_length", f"signals of unequal length {sorted(lengths)}")
    (length,) = lengths
    if length <= spec.window:
        return model.window_array(window)[None]
    starts = range(length - spec.window + 1)
    return np.stack([model.window_array({s: window[s][i : i + spec.window] for s in spec.signals}) for i in starts])


def label_of(item: Item, model: runtime.LoadedModel) -> int:
    """The training label of an item's windows (class index for faults; 1 anomalous, 0 normal for anomaly)."""
    if item.task == "anomaly":
        return 1 if item.verdict == "true_fault" else 0
    labels = list(faults.LABELS)  # the classes the new version is trained on (the old one's may differ)
    if item.verdict == "false_alarm":
        return labels.index("none")
    if item.label not in labels or item.label == "none":
        raise DataError(
            f"feedback item {item.index} ({item.node}): a confirmed fault needs its mode as label, one of "
            f"{', '.join(x for x in labels if x != 'none')} (got {item.label!r})"
        )
    return labels.index(item.label)


def examples(
    model: runtime.LoadedModel, items: Iterable[Item], held_out_rows: set[bytes]
) -> tuple[NDArray[np.float64], NDArray[np.int64], dict[str, Any]]:
    """Feature rows, labels and counts of the items' windows, minus any window sharing a row with held-out data."""
    feats, labels = [], []
    counts: dict[str, Any] = {"items": 0, "windows": {}, "dropped_held_out": 0}
    for item in items:
        where = f"feedback item {item.index} ({item.node})"
        label = label_of(item, model)
        try:
            windows = model_windows(model, item.window)
            scorer = model.with_baseline(item.baseline) if model.task == "anomaly" and item.baseline else model
        except WindowRejected as exc:
            raise DataError(f"{where}: {exc}") from None
        keep = np.array([not any(r.tobytes() in held_out_rows for r in w) for w in windows])
        counts["dropped_held_out"] += int((~keep).sum())
        if not keep.any():
            continue
        feats.append(scorer.feature_matrix(windows[keep]).astype(np.float64))
        labels.append(np.full(int(keep.sum()), label, dtype=np.int64))
        counts["items"] += 1
        name = faults.LABELS[label] if model.task == "faults" else item.verdict
        counts["windows"][name] = counts["windows"].get(name, 0) + int(keep.sum())
    if not feats:
        raise DataError("no feedback window left to train on (none given, or all of them in the held-out data)")
    return np.concatenate(feats), np.concatenate(labels), counts


def held_out_rows(model: runtime.LoadedModel, paths: Sequence[Path], truth: Path | None) -> set[bytes]:
    """Every row of the held-out windows, as the runtime validates it: what feedback must not repeat."""
    rows: set[bytes] = set()
    for part in cascade_threshold.held_out(model.task, paths, truth, model, split=_split(model.task)):
        for w in part.windows:
            rows.update(r.tobytes() for r in model.window_array(w))
    return rows


def _split(task: str) -> bool:
    """Whether the held-out data is the task's internal split of the data (faults) or the data itself (anomaly):
    what ``tasks.train`` scores a version on when no test data is given."""
    return task == "faults"


def next_version(version: str, out_task_dir: Path) -> str:
    """The old version's minor bump, or the next minor one free under ``out_task_dir``."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        raise DataError(f"version {version!r} is not MAJOR.MINOR.PATCH") from None
    minor += 1
    while (out_task_dir / f"{major}.{minor}.0").exists():
        minor += 1
    return f"{major}.{minor}.0"


def scores_of(task: str, directory: Path, paths: Sequence[Path], truth: Path | None) -> dict[str, dict[str, float]]:
    """Every variant's headline metrics on the held-out data (variants whose file is absent are left out)."""
    manifest = registry.read_manifest(directory)
    out = {}
    for variant, entry in manifest["variants"].items():
        if not (directory / entry["file"]).is_file():
            continue
        found = tasks.evaluate(task, directory, paths, truth, variant, split=_split(task))
        out[variant] = {m: float(found[m]) for m in HEADLINE[task] if m in found}
    return out


def retrain(
    task: str,
    old: Path,
    raws: Sequence[Mapping[str, Any]],
    paths: Sequence[Path],
    out: Path,
    truth: Path | None = None,
    progress: build.Progress = build.quiet,
) -> dict[str, Any]:
    """Train a new version of the model in ``old`` with the feedback, into ``out``; old against new."""
    if task not in tasks.FEEDBACK_TASKS:
        raise DataError(
            f"{task} feedback carries no label to train on; retrain takes {', '.join(tasks.FEEDBACK_TASKS)}"
        )
    model = runtime.load(old)
    if model.task != task:
        raise DataError(f"{old} holds a {model.task} model, not {task}")
    if out.resolve() == old.resolve().parents[1]:
        raise DataError(f"{out} is the registry {old} comes from: the edge would load the new version (no promotion)")
    parsed = parse(raws, task)
    progress(f"{task}: {len(parsed.items)} feedback items, skipped {parsed.skipped or 'none'}")
    feats, labels, counts = examples(model, parsed.items, held_out_rows(model, paths, truth))
    counts["skipped"] = parsed.skipped
    digest = hashlib.sha256(json.dumps(list(raws), sort_keys=True, default=str).encode()).hexdigest()
    extra = build.Extra(feats, labels, counts | {"parent": model.manifest["version"], "sha256": digest})
    version = next_version(model.manifest["version"], out / task)
    progress(f"{task}: training {version} with {len(extra.labels)} feedback windows")
    new = tasks.train(task, paths, out, version, progress, extra=extra)
    old_scores = scores_of(task, old, paths, truth)
    new_manifest = registry.read_manifest(new)
    new_scores = {
        v: {m: float(e["metrics"][m]) for m in HEADLINE[task] if m in e["metrics"]}
        for v, e in new_manifest["variants"].items()
    }
    return {
        "task": task,
        "old": {"model": str(old), "version": model.manifest["version"], "metrics": old_scores},
        "new": {"model": str(new), "version": version, "metrics": new_scores},
        "delta": {
            v: {m: new_scores[v][m] - old_scores[v][m] for m in new_scores[v] if m in old_scores.get(v, {})}
            for v in new_scores
            if v in old_scores
        },
        "cascade": {
            "old": cascade_threshold.run(task, old, paths, truth, split=_split(task))["cascade"],
            "new": new_manifest["cascade"]["cascade"],
            "metric": new_manifest["cascade"]["metric"],
        },
        "feedback": counts,
        "held_out": {"data": sorted({p.name for p in paths}), "rows": _rows_scored(new_manifest)},
        "promoted": False,
    }


def _rows_scored(manifest: dict[str, Any]) -> int | None:
    metrics = manifest["variants"]["student"]["metrics"]
    return int(metrics["n_rows"]) if "n_rows" in metrics else None


def table(report: dict[str, Any]) -> str:
    """Old against new, per variant and headline metric, as aligned text."""
    lines = [
        f"{report['task']}: {report['old']['version']} → {report['new']['version']} "
        f"({report['new']['model']}; not promoted)",
        f"feedback: {report['feedback']['items']} items, windows {report['feedback']['windows']}, "
        f"dropped as held-out {report['feedback']['dropped_held_out']}, skipped {report['feedback']['skipped']}",
        f"{'variant':<14}{'metric':<12}{'old':>10}{'new':>10}{'change':>10}",
    ]
    for variant, figures in report["new"]["metrics"].items():
        old = report["old"]["metrics"].get(variant, {})
        for metric, value in figures.items():
            before = old.get(metric)
            change = "-" if before is None else f"{value - before:+.4f}"
            shown = "-" if before is None else f"{before:.4f}"
            lines.append(f"{variant:<14}{metric:<12}{shown:>10}{value:>10.4f}{change:>10}")
    c = report["cascade"]
    lines.append(
        f"cascade {c['metric']} (offloading ≤ {cascade_threshold.MAX_OFFLOAD:.0%}): "
        f"old {c['old']:.4f}, new {c['new']:.4f}"
    )
    return "\n".join(lines)


# ---- the platform ------------------------------------------------------------------------------------------


def fetch(
    client: httpx.Client, task: str, model: runtime.LoadedModel, since: str | None = None
) -> list[dict[str, Any]]:
    """The platform's feedback on ``task`` alerts, each with its window from the node's frames.

    Window: the frames of the feedback's span (a true fault's from the window of the diagnosis that raised
    the alert on). Anomaly items get the node's first frames as their baseline. An item whose span holds
    no complete frame any more is marked ``unusable`` (``parse`` counts it as skipped).
    """
    params: dict[str, Any] = {"limit": 10_000}
    if since:
        params["since"] = since
    exported = _get(client, "/api/v1/alerts/feedback", params)
    out = []
    for raw in exported:
        if raw.get("verdict") not in VERDICTS or task_of(raw) != task:
            out.append(raw)  # parse() counts it as skipped
            continue
        frames = _frames(client, raw["node"], {"start": raw["window_start"], "end": raw["window_end"]})
        rows = _usable(frames, model.spec.signals)
        caused_at = (raw.get("evidence") or {}).get("ts")
        if raw["verdict"] == "true_fault" and isinstance(caused_at, int):
            at: int = caused_at
            first = next((i for i, f in enumerate(rows) if (_us(f["ts"], "frame") or 0) >= at), len(rows))
            rows = rows[max(first - (model.spec.window - 1), 0) :]
        item = dict(raw, task=task, window=_columns(rows, model.spec.signals))
        if rows:
            item["ts"] = rows[-1]["ts"]
        else:
            item["unusable"] = "no frames in its window"
        if task == "anomaly":
            needed = int(model.manifest["baseline"]["min_rows"])
            first_rows = _usable(_frames(client, raw["node"], {"order": "asc"}, needed), model.spec.signals)
            if len(first_rows) >= needed:
                item["baseline"] = _columns(first_rows[:needed], model.spec.signals)
        out.append(item)
    return out


def fetch_from(url: str, key: str, task: str, directory: Path, since: str | None = None) -> list[dict[str, Any]]:
    """``fetch`` from the platform at ``url`` with an engineer key, for the model in ``directory``."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0) as client:
        return fetch(client, task, runtime.load(directory), since)


def _usable(frames: list[dict[str, Any]], signals: Sequence[str]) -> list[dict[str, Any]]:
    """Frames that carry every model signal (a frame with a gap cannot enter a window)."""
    return [f for f in frames if all(f["values"].get(s) is not None for s in signals)]


def _columns(frames: list[dict[str, Any]], signals: Sequence[str]) -> dict[str, list[Any]]:
    return {s: [f["values"][s] for f in frames] for s in signals}


def _frames(client: httpx.Client, node: str, params: dict[str, Any], most: int | None = None) -> list[dict[str, Any]]:
    """A node's frames, following the platform's pages (``most``: stop after that many)."""
    frames: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = _get(client, f"/api/v1/nodes/{node}/frames", params | {"limit": most or FRAMES_PAGE, "cursor": cursor})
        frames.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor or (most is not None and len(frames) >= most):
            return frames


def _get(client: httpx.Client, path: str, params: dict[str, Any]) -> Any:
    try:
        response = client.get(path, params={k: v for k, v in params.items() if v is not None})
    except httpx.HTTPError as exc:
        raise DataError(f"platform unreachable at {client.base_url}: {exc}") from None
    if response.status_code in (401, 403):
        raise DataError(f"the platform refused the key for {path} ({response.status_code}; an engineer key is needed)")
    if response.status_code != 200:
        raise DataError(f"{path}: the platform answered {response.status_code} {response.text[:200]}")
    return response.json()
