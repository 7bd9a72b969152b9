"""The model registry: one directory per built model, with its ONNX files, manifest and model card.

Layout: ``<root>/<task>/<version>/`` holding ``manifest.json``, ``MODEL_CARD.md`` and one ONNX file per
variant (``teacher``, ``student``, ``student-int8``). The manifest records each file's sha256; loading
refuses a file whose hash or a manifest whose schema does not match. The layout and the manifest's keys are
the contract's (plant/platform_api.py: a model archive is such a directory). Imports nothing beyond the
standard library and plant/, so the edge can use it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from models.errors import ModelLoadError
from plant.platform_api import MANIFEST as MANIFEST
from plant.platform_api import MANIFEST_SCHEMA, Manifest, VariantEntry, required_keys
from plant.platform_api import MODEL_CARD as MODEL_CARD
from plant.platform_api import TASKS as TASKS
from plant.platform_api import VARIANTS as VARIANTS

SCHEMA_VERSION = MANIFEST_SCHEMA
_REQUIRED = required_keys(Manifest)
_VARIANT_KEYS = required_keys(VariantEntry)
# What a variant's graph takes (its manifest entry's ``graph_input``, default ``features``): standardised
# float32 features, or the raw float64 window plus the baseline (mean, 1/std of each feature) it is scored on.
GRAPH_INPUTS = {
    "features": ("features",),
    "window": ("window", "baseline_mean", "baseline_inv_std"),
}


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def model_dir(root: Path, task: str, version: str) -> Path:
    """Where a task's model of a given version lives under a registry root."""
    return root / task / version


def latest(root: Path, task: str) -> Path:
    """The newest version directory of a task under a registry root (versions compared numerically)."""
    versions = [p for p in (root / task).glob("*") if (p / MANIFEST).is_file()]
    if not versions:
        raise ModelLoadError(f"no {task} model under {root}")
    return max(versions, key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split(".")))


def write_model_dir(directory: Path, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write the variant files, then the manifest with their sha256 and sizes, then the model card."""
    directory.mkdir(parents=True, exist_ok=True)
    for variant, data in files.items():
        entry = manifest["variants"][variant]
        (directory / entry["file"]).write_bytes(data)
        entry["sha256"] = sha256_bytes(data)
        entry["bytes"] = len(data)
    check_manifest(manifest, directory)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (directory / MODEL_CARD).write_text(model_card(manifest))


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a model directory, schema-checked; ModelLoadError says what is wrong."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{directory}: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable manifest ({exc})") from None
    check_manifest(manifest, directory)
    return manifest  # type: ignore[no-any-return]


def check_manifest(manifest: Any, directory: Path) -> None:
    """Refuse a manifest of another schema version or lacking the keys the runtime relies on."""
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{directory}: manifest is not a JSON object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ModelLoadError(f"{directory}: manifest lacks {missing}")
    if manifest["schema"] != SCHEMA_VERSION:
        raise ModelLoadError(f"{directory}: manifest schema {manifest['schema']}, expected {SCHEMA_VERSION}")
    if manifest["task"] not in TASKS:
        raise ModelLoadError(f"{directory}: unknown task {manifest['task']!r}")
    if manifest["default_variant"] not in manifest["variants"]:
        raise ModelLoadError(f"{directory}: default variant {manifest['default_variant']!r} not listed")
    for variant, entry in manifest["variants"].items():
        if variant not in VARIANTS:
            raise ModelLoadError(f"{directory}: unknown variant {variant!r}")
        lacking = [key for key in _VARIANT_KEYS if key not in entry]
        if lacking:
            raise ModelLoadError(f"{directory}: variant {variant} lacks {lacking}")
        if entry.get("graph_input", "features") not in GRAPH_INPUTS:
            raise ModelLoadError(f"{directory}: variant {variant} takes unknown input {entry['graph_input']!r}")
    try:
        _check_read_later(manifest)
    except ValueError as exc:
        raise ModelLoadError(f"{directory}: {exc}") from None


def _check_read_later(manifest: dict[str, Any]) -> None:
    """Fields read after loading (an RUL model's cap, a baseline's ``min_rows``, the cascade threshold): refused
    here, so the platform refuses them on upload and an agent on load, not when a window needs them."""
    output = manifest["output"]
    if not isinstance(output, dict):
        raise ValueError(f"output is a {type(output).__name__}, not an object")
    if manifest["task"] == "rul" and not _positive(output.get("cap")):
        raise ValueError(f"output.cap {output.get('cap')!r} is not a positive number")
    if "baseline" in manifest:
        baseline = manifest["baseline"]
        min_rows = baseline.get("min_rows") if isinstance(baseline, dict) else None
        if not _positive(min_rows) or float(min_rows or 0) < 1:
            raise ValueError(f"baseline.min_rows {min_rows!r} is not a positive number")
    cascade = manifest.get("cascade")
    if cascade is not None and not isinstance(cascade, dict):
        raise ValueError(f"cascade is a {type(cascade).__name__}, not an object")
    threshold = (cascade or {}).get("confidence_threshold")
    if threshold is not None and not (_number(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"cascade.confidence_threshold {threshold!r} is not a number in [0, 1]")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def read_variant(directory: Path, manifest: dict[str, Any], variant: str) -> bytes:
    """A variant's ONNX bytes, refused when missing or when its sha256 differs from the manifest's."""
    entry = manifest["variants"].get(variant)
    if entry is None:
        raise ModelLoadError(f"{directory}: no variant {variant!r} (has {sorted(manifest['variants'])})")
    path = directory / entry["file"]
    try:
        data = path.read_bytes()
    except OSError:
        raise ModelLoadError(f"{path}: missing (variant {variant})") from None
    digest = sha256_bytes(data)
    if digest != entry["sha256"]:
        raise ModelLoadError(f"{path}: sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…")
    return bytes(data)


def model_card(manifest: dict[str, Any]) -> str:
    """A short Markdown model card from the manifest."""
    spec = manifest["input"]
    training = manifest["training"]
    lines = [
        f"# {manifest['name']} {manifest['version']} ({manifest['task']})",
        "",
        manifest.get("description", ""),
        "",
        "## Inputs",
        _window_text(spec) + " Missing signals, NaN and wrong units are refused (WindowRejected).",
        _baseline_text(manifest),
        "",
        "| signal | unit |",
        "|---|---|",
        *(f"| {s} | {u or '-'} |" for s, u in zip(spec["signals"], spec["units"], strict=True)),
        "",
        "## Training",
        f"Data: {', '.join(training.get('files', []))} "
        f"(sha256 {training.get('data_sha256', '')[:16]}…), seed {training.get('seed')}.",
        manifest["training"].get("protocol", ""),
        *_training_notes(training),
        "",
        "## Evaluation",
        *_evaluation_text(manifest),
        "",
        "## Variants",
        "| variant | file | bytes | metrics |",
        "|---|---|---:|---|",
    ]
    for variant, entry in manifest["variants"].items():
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in entry.get("metrics", {}).items() if isinstance(v, float))
        name = f"{variant} ({entry['architecture']})" if entry.get("architecture") else variant
        lines.append(f"| {name} | {entry['file']} | {entry['bytes']} | {metrics} |")
    lines += [
        "",
        f"The edge runs `{manifest['default_variant']}`.",
        "",
        "## Limits",
        manifest.get("limits", ""),
        "",
    ]
    return "\n".join(lines)


def _figures(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)
    )


def _training_notes(training: dict[str, Any]) -> list[str]:
    """Operating regimes and validation figures (rul), the tool-wear rule on the training rows (faults)."""
    lines = []
    found = training.get("regimes")
    if isinstance(found, dict):
        left_out = found.get("sensors_left_out") or {}
        lines.append(
            f"Operating regimes found in the settings: {found.get('count')}; sensors left out: "
            + (", ".join(f"{k} ({v})" for k, v in left_out.items()) or "none")
            + "."
        )
    validation = training.get("validation")
    if isinstance(validation, dict):
        parts = [f"{k}: {_figures(v)}" for k, v in validation.items() if isinstance(v, dict)]
        lines.append(
            f"Validation ({validation.get('engines')} held-out training engines, every cycle): " + "; ".join(parts)
        )
    study = training.get("selection")
    if isinstance(study, dict):
        scores = ", ".join(f"{k} {v:.4g}" for k, v in study.get("validation", {}).items())
        lines.append(
            f"Options chosen on validation from the training data ({study.get('protocol')}): {scores}; chosen "
            f"{study.get('chosen')}, then scored on the test data: {_figures(study.get('test', {}))}. "
            f"{study.get('decision', '')}"
        )
    rule = training.get("tool_wear_rule")
    if isinstance(rule, dict):
        lines.append(f"Tool-wear rule on the training rows: {_figures(rule)}.")
    return ["", *lines] if lines else []


def _evaluation_text(manifest: dict[str, Any]) -> list[str]:
    evaluation = manifest.get("evaluation")
    if not isinstance(evaluation, dict):
        return ["No test data was given: the figures below are empty; see the validation figures above."]
    data = ", ".join(evaluation.get("data", []))
    lines = [f"Scored: {evaluation.get('protocol', '')} ({data}). The metrics below are these."]
    rule = evaluation.get("tool_wear_rule")
    if isinstance(rule, dict):
        lines.append(f"Tool-wear rule (apart from the model) on the same rows: {_figures(rule)}.")
    return lines


def _window_text(spec: dict[str, Any]) -> str:
    if spec["min_window"] < spec["window"]:
        return (
            f"Window of the last {spec['window']} rows, oldest first; {spec['min_window']} to "
            f"{spec['window'] - 1} rows are padded with their oldest row (policy pad_oldest)."
        )
    return f"Window of exactly {spec['window']} rows, oldest first."


def _baseline_text(manifest: dict[str, Any]) -> str:
    baseline = manifest.get("baseline")
    if not baseline:
        return ""
    return (
        f"\nScored against the asset's own normal operation: call `with_baseline()` with at least "
        f"{baseline['min_rows']} rows of it; without one, the default baseline of the training data is used."
    )
