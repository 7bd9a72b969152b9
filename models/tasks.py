"""The three tasks behind one interface: train into a registry directory, evaluate a variant of it.

Training side only; the CLI (``factory-twin models``) and ``models.report`` call these.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models import build, cascade, registry, runtime
from models.errors import DataError

DEFAULT_VERSION = "1.0.0"
# The version each task's training writes; bumped when the model changes (the edge loads the newest).
VERSIONS = {"rul": "1.2.0", "faults": "1.0.0", "anomaly": "1.1.0"}
TASK_MODULES = {"rul": "models.rul", "faults": "models.faults", "anomaly": "models.anomaly"}
FEEDBACK_TASKS = ("faults", "anomaly")  # tasks whose training takes labelled feedback rows


class TaskModule(Protocol):
    """What a task module offers."""

    def train(self, paths: Sequence[Path], version: str, progress: build.Progress = ...) -> build.Built:
        """Teacher and students, not yet written."""
        ...

    def evaluate(self, model: runtime.LoadedModel, paths: Sequence[Path], truth: Path | None = None) -> dict[str, Any]:
        """The task's metrics for one loaded variant."""
        ...


def version_of(task: str) -> str:
    """The version a task's training writes by default."""
    return VERSIONS.get(task, DEFAULT_VERSION)


def module(task: str) -> TaskModule:
    """The module implementing a task."""
    if task not in TASK_MODULES:
        raise DataError(f"unknown task {task!r}; one of {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


def train(
    task: str,
    paths: Sequence[Path],
    out: Path,
    version: str = DEFAULT_VERSION,
    progress: build.Progress = build.quiet,
    extra: build.Extra | None = None,
) -> Path:
    """Train a task's teacher and students into ``out/<task>/<version>``, each scored on its protocol.

    ``extra``: labelled feedback rows for the training part (faults and anomaly; see ``models.retrain``).
    The last step measures the edge/platform cascade on the same held-out data (``models.cascade``).
    """
    started = time.perf_counter()
    if extra is None:
        built = module(task).train(paths, version, progress)
    elif task in FEEDBACK_TASKS:
        built = module(task).train(paths, version, progress, extra=extra)  # type: ignore[call-arg]
    else:
        raise DataError(f"{task} training takes no feedback rows (only {', '.join(FEEDBACK_TASKS)})")
    directory = build.write(built, registry.model_dir(out, task, version))
    for variant in built.manifest["variants"]:
        progress(f"{task}: evaluating {variant}")
        scores = evaluate(task, directory, paths, variant=variant)
        built.manifest["variants"][variant]["metrics"] = {
            k: v for k, v in scores.items() if isinstance(v, int | float) and k not in {"latency_us"}
        }
    progress(f"{task}: cascade threshold for {built.manifest['default_variant']}")
    built.manifest["cascade"] = cascade.run(task, directory, paths, student_variant=built.manifest["default_variant"])
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
) -> dict[str, Any]:
    """One variant's metrics on the given data, with its file size and single-window latency."""
    model = runtime.load(directory, variant)
    if model.task != task:
        raise DataError(f"{directory} holds a {model.task} model, not {task}")
    scores = module(task).evaluate(model, paths, truth)
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
