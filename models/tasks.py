"""The three tasks behind one interface: train into a registry directory, evaluate a variant of it.

Training side only; the CLI (``factory-twin models``) and ``models.report`` call these.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models import build, cascade_threshold, datasets, registry, runtime
from models.datasets import Rows
from models.errors import DataError

DEFAULT_VERSION = "1.0.0"
# The version each task's training writes; bumped when the model changes (the edge loads the newest).
VERSIONS = {"rul": "2.0.0", "faults": "1.1.0", "anomaly": "1.3.0"}
TASK_MODULES = {"rul": "models.rul", "faults": "models.faults", "anomaly": "models.anomaly"}
FEEDBACK_TASKS = ("faults", "anomaly")  # tasks whose training takes labelled feedback rows


class TaskModule(Protocol):
    """What a task module offers."""

    def train(self, paths: Sequence[Path], version: str, progress: build.Progress = ...) -> build.Built:
        """Teacher and students, not yet written."""
        ...

    def evaluate(
        self, model: runtime.LoadedModel, paths: Sequence[Path], truth: Path | None = None, split: bool = False
    ) -> dict[str, Any]:
        """The task's metrics for one loaded variant, with ``protocol``: what was scored."""
        ...


@dataclass(frozen=True)
class Scoring:
    """The data a model is scored on: files, the split flag of ``evaluate``, rows of a table (faults)."""

    paths: tuple[Path, ...]
    split: bool = False
    rows: Rows | None = None


def version_of(task: str) -> str:
    """The version a task's training writes by default."""
    return VERSIONS.get(task, DEFAULT_VERSION)


def module(task: str) -> TaskModule:
    """The module implementing a task."""
    if task not in TASK_MODULES:
        raise DataError(f"unknown task {task!r}; one of {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


def scoring_of(
    task: str, paths: Sequence[Path], test: Sequence[Path], rows: Rows | None, test_rows: Rows | None
) -> Scoring | None:
    """What a model trained on ``paths`` is scored on: the test data when given, else the task's own held-out part.

    rul: test and RUL files among the data or the test data (recognised by name), else none (the manifest keeps
    the validation figures); faults: the test data (``test_rows`` of it), else the held-out split of the rows
    trained on; anomaly: the test data, else the labelled training files (which tuned it: in-sample).
    """
    if test:
        return Scoring(tuple(test), rows=test_rows)
    if task == "rul":
        tests = [p for p in datasets.expand(paths) if not p.name.lower().startswith("train")]
        return Scoring(tuple(tests)) if tests else None
    if task == "faults":
        return Scoring(tuple(paths), split=True, rows=rows)
    return Scoring(tuple(paths))


def train(
    task: str,
    paths: Sequence[Path],
    out: Path,
    version: str = DEFAULT_VERSION,
    progress: build.Progress = build.quiet,
    extra: build.Extra | None = None,
    test: Sequence[Path] = (),
    rows: Rows | None = None,
    test_rows: Rows | None = None,
) -> Path:
    """Train a task's teacher and students into ``out/<task>/<version>`` from training data alone.

    ``test``: data scored only (never fitted or tuned on), the figures of the manifest and the model card; without
    it, each task's own held-out part (see ``scoring_of``). ``rows``: the rows of the AI4I table to train on.
    ``extra``: labelled feedback rows for the training part (faults and anomaly; see ``models.retrain``).
    The last step measures the edge/platform cascade on the same scored data (``models.cascade_threshold``).
    """
    started = time.perf_counter()
    if rows is not None and task != "faults":
        raise DataError("rows select rows of the AI4I table: faults only")
    if test_rows is not None and task != "faults":
        raise DataError("test rows select rows of the AI4I table: faults only")
    options: dict[str, Any] = {"rows": rows} if rows is not None else {}
    if extra is not None:
        if task not in FEEDBACK_TASKS:
            raise DataError(f"{task} training takes no feedback rows (only {', '.join(FEEDBACK_TASKS)})")
        options["extra"] = extra
    built = module(task).train(paths, version, progress, **options)
    directory = build.write(built, registry.model_dir(out, task, version))
    scoring = scoring_of(task, paths, test, rows, test_rows)
    if scoring is not None:
        for variant in built.manifest["variants"]:
            progress(f"{task}: evaluating {variant}")
            scores = evaluate(task, directory, scoring.paths, variant=variant, split=scoring.split, rows=scoring.rows)
            built.manifest["variants"][variant]["metrics"] = {
                k: v for k, v in scores.items() if isinstance(v, int | float) and k not in {"latency_us"}
            }
            built.manifest["evaluation"] = {
                "data": datasets.file_names(scoring.paths),
                "protocol": scores.get("protocol", ""),
                **({"tool_wear_rule": scores["tool_wear_rule"]} if "tool_wear_rule" in scores else {}),
            }
        progress(f"{task}: cascade threshold for {built.manifest['default_variant']}")
        built.manifest["cascade"] = cascade_threshold.run(
            task,
            directory,
            scoring.paths,
            student_variant=built.manifest["default_variant"],
            split=scoring.split,
            rows=scoring.rows,
        )
    else:
        progress(f"{task}: no test data given: the model card gives the validation figures")
    built.manifest["training"]["seconds"] = round(time.perf_counter() - started, 1)
    registry.write_model_dir(directory, built.manifest, built.files)
    progress(f"{task}: done in {time.perf_counter() - started:.0f} s → {directory}")
    return directory


def evaluate(
    task: str,
    directory: Path,
    paths: Sequence[Path],
    truth: Path | None = None,
    variant: str | None = None,
    keep_extras: bool = False,
    split: bool = False,
    rows: Rows | None = None,
) -> dict[str, Any]:
    """One variant's metrics on the given data, with its file size and single-window latency.

    Every row of the data is scored unless ``split`` asks for the task's internal held-out part; ``protocol``
    in the result says which. ``rows``: the rows of the AI4I table to score (faults).
    """
    model = runtime.load(directory, variant)
    if model.task != task:
        raise DataError(f"{directory} holds a {model.task} model, not {task}")
    if rows is not None and task != "faults":
        raise DataError("rows select rows of the AI4I table: faults only")
    options: dict[str, Any] = {"split": split, **({"rows": rows} if rows is not None else {})}
    scores = module(task).evaluate(model, paths, truth, **options)
    plot = scores.pop("_plot", None)
    window = scores.pop("_window", None)
    result: dict[str, Any] = {"task": task, "variant": model.variant, **scores}
    result["model_bytes"] = int(model.manifest["variants"][model.variant]["bytes"])
    if window is not None:
        result["latency_us"] = single_window_latency_us(model, window)
    if keep_extras:  # the plot data and the real window timed, for models.report
        result["_plot"] = plot
        result["_window"] = window
    return result


def single_window_latency_us(model: runtime.LoadedModel, window: dict[str, Any], repeat: int = 200) -> float:
    """Median µs of ``model.predict`` on one window: validation, features, onnxruntime, calibration."""
    model.predict(window)
    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        model.predict(window)
        timings.append(time.perf_counter_ns() - t0)
    return float(np.median(timings)) / 1000.0
