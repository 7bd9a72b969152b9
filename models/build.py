"""What every task's training shares: the built-model record, variant entries and writing it all out.

Training side only. The scikit-learn estimators are pickled next to the ONNX files (``*.joblib``, not
committed) so ``models report`` can time scikit-learn's own predict against onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import structlog
from numpy.typing import NDArray

from models import registry
from models.export import has_matmul, quantize_int8
from models.features import FeatureSpec

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]
TEACHER_COMMIT_LIMIT = 2_000_000  # bytes; a larger teacher ONNX is written as *.large.onnx (not committed)


def quiet(_: str) -> None:
    """A progress callback that says nothing."""


@dataclass
class Built:
    """A trained model before it is written: manifest, ONNX bytes per variant, scikit-learn estimators."""

    manifest: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    estimators: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Extra:
    """Labelled feature rows from maintenance feedback, added to a task's training part, never to its held-out part.

    ``features`` are rows as the model reads them (anomaly: relative to the asset's baseline); ``labels`` are
    class indices (faults) or 1 for a confirmed fault and 0 for a false alarm (anomaly). ``record`` is what
    the manifest keeps about them (counts, the feedback's sha256).
    """

    features: NDArray[np.float64]
    labels: NDArray[np.int64]
    record: dict[str, Any] = field(default_factory=dict)

    def rows(self, label: int) -> NDArray[np.float64]:
        """The feature rows of one label."""
        rows: NDArray[np.float64] = self.features[self.labels == label]
        return rows


def new_manifest(
    task: str,
    name: str,
    version: str,
    spec: FeatureSpec,
    output: dict[str, Any],
    training: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """A manifest skeleton; variants are added as they are exported."""
    return {
        "schema": registry.SCHEMA_VERSION,
        "task": task,
        "name": name,
        "version": version,
        "input": {**spec.to_json(), "policy": input_policy(spec)},
        "output": output,
        "training": training,
        "variants": {},
        "default_variant": "student",
        **extra,
    }


def input_policy(spec: FeatureSpec) -> dict[str, str]:
    """The declared handling of imperfect windows (the runtime applies exactly this)."""
    short = "pad_oldest" if spec.min_window < spec.window else "reject"
    return {
        "missing_signal": "reject",
        "nan": "reject",
        "wrong_unit": "reject",
        "short": short,
        "long": "reject",
    }


def add_variants(
    built: Built,
    teacher: bytes,
    student: bytes,
    output_name: str,
    n_features: int,
    calibration: dict[str, dict[str, Any]],
) -> None:
    """Record teacher, student and (where the graph has weights to quantize) student-int8."""
    large = len(teacher) > TEACHER_COMMIT_LIMIT
    files = {"teacher": teacher, "student": student}
    if has_matmul(student):
        files["student-int8"] = quantize_int8(student, per_channel=True)
        built.manifest["default_variant"] = "student-int8"
    names = {"teacher": "teacher.large.onnx" if large else "teacher.onnx"}
    for variant, data in files.items():
        built.files[variant] = data
        built.manifest["variants"][variant] = {
            "file": names.get(variant, f"{variant}.onnx"),
            "sha256": registry.sha256_bytes(data),
            "bytes": len(data),
            "output_name": output_name,
            "n_features": n_features,
            "calibration": calibration.get(variant, calibration["student"]),
            "metrics": {},
        }


def add_int8_student(built: Built, fp32: bytes, architecture: str) -> None:
    """Record an int8 student of another architecture than ``student`` (when ``student`` cannot quantize).

    It shares the student's calibration; training evaluates both; the edge default stays ``student``.
    """
    entry = dict(built.manifest["variants"]["student"])
    data = quantize_int8(fp32)
    built.files["student-int8"] = data
    built.manifest["variants"]["student-int8"] = entry | {
        "file": "student-int8.onnx",
        "sha256": registry.sha256_bytes(data),
        "bytes": len(data),
        "architecture": f"{architecture}, dynamic int8",
        "metrics": {},
    }


def write(built: Built, directory: Path) -> Path:
    """Write the model directory and the scikit-learn pickles; returns the directory."""
    registry.write_model_dir(directory, built.manifest, built.files)
    for name, estimator in built.estimators.items():
        joblib.dump(estimator, directory / f"sklearn-{name}.joblib", compress=3)
    log.info("model_written", task=built.manifest["task"], directory=str(directory))
    return directory


def load_estimator(directory: Path, name: str) -> Any:
    """A pickled scikit-learn estimator from a model directory, or None when it was not kept."""
    path = directory / f"sklearn-{name}.joblib"
    return joblib.load(path) if path.is_file() else None
