"""What each asset is diagnosed for: its recent frames, its tasks' inputs and baselines, its health.

Built from the site and the models in use, and rebuilt when either changes (reload, model swap, rollback);
state that still fits (frames, the last window diagnosed, the baseline learnt, the latest verdicts) carries
over. A task whose model reads a signal the node does not bind is left out, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import structlog

from edge_agent.config import AgentSettings
from edge_agent.diagnostics.baseline import Adapted, BaselineLearner
from edge_agent.diagnostics.model_slots import ModelSlots, Slot
from edge_agent.diagnostics.windows import AssetFrames
from models.runtime import LoadedModel
from plant.site import AssetType, Node, Site

log = structlog.get_logger(__name__)

Task = Literal["rul", "faults", "anomaly"]


@dataclass(slots=True)
class AssetTask:
    """One task of one asset: its inputs, the last window diagnosed, its baseline.

    Args:
        task: ``rul``, ``faults`` or ``anomaly``.
        signals: the model's inputs, in order.
        units: each input's unit in the site model.
        length: the model's window.
        min_length: the shortest window it accepts.
    """

    task: Task
    signals: tuple[str, ...]
    units: dict[str, str]
    length: int
    min_length: int
    last_ts: int | None = None
    learner: BaselineLearner | None = None
    learner_loaded: bool = False
    adapted: Adapted | None = None
    adapted_for: Slot | None = None
    adapted_rows: int = 0
    adapted_final: bool = False
    adapting: bool = False
    learning_said: int | None = None  # window end of the last "still learning" diagnosis sent


@dataclass(slots=True)
class Asset:
    """One diagnosed asset.

    Args:
        node: its node id.
        asset_type: its type.
        frames: its recent frames.
        closed_us: frames this much older than the newest are closed (the watermark, rounded up to the grid).
        marked_healthy: the site does not mark it ``healthy: false``.
        rul_horizon: the shortest RUL alert horizon of its type; RUL below it counts as unhealthy.
    """

    node: str
    asset_type: str
    frames: AssetFrames
    closed_us: int
    marked_healthy: bool
    rul_horizon: float | None
    targets: dict[str, AssetTask] = field(default_factory=dict)
    health: dict[str, bool] = field(default_factory=dict)  # task -> latest verdict healthy
    seen: float = 0.0  # monotonic time of the newest frame

    def healthy(self) -> bool:
        """Every task diagnosed and healthy (an asset not yet diagnosed counts as unhealthy)."""
        return all(self.health.get(t, False) for t in self.targets)

    def learning(self) -> bool:
        """Whether its operation counts as healthy for a baseline (see edge_agent/diagnostics/baseline.py)."""
        return self.marked_healthy and ("faults" not in self.targets or self.health.get("faults", False))


def build_assets(
    site: Site, settings: AgentSettings, models: ModelSlots, old: dict[str, Asset], catch_up: int
) -> dict[str, Asset]:
    """The diagnosed assets of a site, carrying state over from ``old``; each keeps ``catch_up`` more frames
    than its longest window, so a burst of frames can be diagnosed grid point by grid point."""
    assets: dict[str, Asset] = {}
    for node in site.assets():
        assert node.type is not None
        atype = site.asset_types[node.type]
        before = old.get(node.id)
        asset = _asset(node, atype, before)
        for task in atype.models:
            slot = models.get((node.type, task))
            if slot is None:
                continue
            target = _target(node, atype, task, slot.model, settings, before.targets.get(task) if before else None)
            if target is not None:
                asset.targets[task] = target
        if asset.targets:
            keep = max(t.length for t in asset.targets.values())
            asset.frames.keep = max(keep, asset.closed_us // asset.frames.grid_us + 2) + catch_up
            assets[node.id] = asset
    return assets


def _asset(node: Node, atype: AssetType, old: Asset | None) -> Asset:
    grid_us = atype.alignment.grid_ms * 1000
    closed_us = -(-atype.alignment.watermark_ms * 1000 // grid_us) * grid_us
    horizons = [r.horizon for r in atype.alerts if r.kind == "rul" and r.horizon is not None]
    marked = str(node.attributes.get("healthy", True)).lower() not in ("false", "no", "0")
    frames = old.frames if old is not None and old.frames.grid_us == grid_us else AssetFrames(node.id, grid_us, 1)
    asset = Asset(node.id, str(node.type), frames, closed_us, marked, min(horizons) if horizons else None)
    if old is not None:
        asset.health, asset.seen = old.health, old.seen
    return asset


def _target(
    node: Node, atype: AssetType, task: Task, model: LoadedModel, settings: AgentSettings, old: AssetTask | None
) -> AssetTask | None:
    spec = model.spec
    unbound = [s for s in spec.signals if s not in node.bindings]
    if unbound:
        log.warning("model_inputs_unbound", node_id=node.id, task=task, signals=unbound)
        return None
    if old is not None and old.signals == spec.signals:
        old.length, old.min_length = spec.window, spec.min_window
        return old
    units = {s: atype.properties[s].unit for s in spec.signals}
    target = AssetTask(task, spec.signals, units, spec.window, spec.min_window)
    if settings.baseline_hours > 0 and "baseline" in model.manifest:
        target.learner = BaselineLearner(
            node.id,
            task,
            spec.signals,
            atype.alignment.grid_ms * 1000,
            int(settings.baseline_hours * 3600e6),
            max(int(model.manifest["baseline"]["min_rows"]), spec.window),
            settings.baseline_max_rows,
        )
    return target
