"""Scoring on the inference thread: one model's windows in one call, each prediction checked, then a Diagnosis.

A window the runtime refuses gets its reason (``missing_signal``, ``nan``, ...); a model that fails in any way
(``inference_failed``: onnxruntime, or a malformed calibration raising on live data) or answers outside its
declared range (``out_of_range``, see ``model_slots.py``) gets no diagnosis: the caller counts it and rolls the
model back.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from edge_agent.diagnostics.baseline import Adapted
from edge_agent.diagnostics.model_slots import Slot, out_of_range
from edge_agent.diagnostics.targets import Asset, AssetTask
from edge_agent.diagnostics.windows import Window
from models.errors import WindowRejected
from models.runtime import Prediction
from plant.wire import Diagnosis, DiagnosisSource

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Job:
    """One window to score: whose it is, the model slot (and machine baseline) to score it with."""

    asset: Asset
    target: AssetTask
    slot: Slot
    adapted: Adapted | None
    window: Window


@dataclass(slots=True)
class ScoredWindow:
    """A scored window: its prediction, or why there is none (a skip reason, or a model failure)."""

    job: Job
    prediction: Prediction | None = None
    error: str | None = None


def score(group: list[Job]) -> list[ScoredWindow]:
    """One model's windows in one call; window by window when one of them is refused, to name it.

    Units are not passed: every input's unit in the site was checked against the model's when it was put in use
    (``ModelSlots``), so the runtime need not compare them per window.
    """
    job = group[0]
    model = job.adapted.model if job.adapted else job.slot.model
    try:
        predictions = model.predict_batch([j.window.values for j in group]) if len(group) > 1 else None
    except Exception:  # scored window by window below, which names the window refused or the failure
        predictions = None
    out: list[ScoredWindow] = []
    for i, j in enumerate(group):
        try:
            p = predictions[i] if predictions is not None else model.predict(j.window.values)
            if j.adapted is not None:
                p = j.adapted.apply(p)
            wrong = out_of_range(model, p)
        except WindowRejected as exc:
            out.append(ScoredWindow(j, error=exc.reason))
            continue
        except Exception as exc:  # onnxruntime, or a manifest field raising on live data: rolled back
            log.error("inference_failed", node_id=j.asset.node, task=j.target.task,
                      error=f"{type(exc).__name__}: {exc}")
            out.append(ScoredWindow(j, error="inference_failed"))
            continue
        if wrong:
            log.error("model_output_out_of_range", node_id=j.asset.node, task=j.target.task, why=wrong)
            out.append(ScoredWindow(j, error="out_of_range"))
        else:
            out.append(ScoredWindow(j, prediction=p))
    return out


def diagnosis(job: Job, p: Prediction) -> Diagnosis:
    """The wire Diagnosis of a scored window."""
    manifest = job.slot.model.manifest
    # checked already (out_of_range; node, task and ts come from the site and the grid): no validation pass
    return Diagnosis.model_construct(
        node=job.asset.node,
        task=job.target.task,
        ts=job.window.ts,
        model=str(manifest["name"]),
        version=job.slot.version,
        source=DiagnosisSource.EDGE,
        confidence=p.confidence,
        score=p.score,
        threshold=p.threshold,
        label=p.label,
        probability=p.probability,
        rul=p.rul,
        rul_low=p.rul_low,
        rul_high=p.rul_high,
        unit=p.unit,
    )
