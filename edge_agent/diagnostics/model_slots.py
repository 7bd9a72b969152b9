"""The models in use on this gateway: one per (asset type, task), checked before use, rolled back on failure.

At start each slot takes the newest version under the registry directory (then under the package's committed
registry) that loads, fits the asset type and passes a probe window, skipping versions rolled back before.
``swap`` puts another version in after the same checks; the one it replaces is kept for a rollback.

Checks: the manifest's task is the slot's (its fields the agent reads later, a baseline's ``min_rows``, an RUL
model's ``output.cap``, the cascade threshold, are checked on load: ``models.registry``); every model input is a
property of the asset type and its unit matches the property's (the runtime compares them on the probe); a probe
window of mid-range values (the property's declared range, else 0; a string signal's first category) scores
within the declared range. Any error while loading or checking (a malformed manifest field) refuses the model.

Declared range of an output: finite numbers; confidence and probability in [0, 1]; RUL in [0, cap] inside its
interval; a label the manifest lists. A version rolled back is remembered in ``<data_dir>/rejected_models.json``
and not loaded again at start (an explicit ``swap`` to it is still honoured).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from edge_agent import metrics
from edge_agent.errors import ModelUnusable
from models import runtime
from models.errors import ModelError
from models.runtime import LoadedModel, Prediction
from plant.platform_api import MANIFEST
from plant.site import AssetType, Site

log = structlog.get_logger(__name__)

PACKAGE_REGISTRY = Path(runtime.__file__).resolve().parent / "registry"
Key = tuple[str, str]  # (asset_type, task)


@dataclass(slots=True)
class Slot:
    """The model in use for one (asset type, task), and the one it replaced (for a rollback).

    Args:
        model: the loaded model.
        directory: its registry directory.
        cascade_threshold: below this confidence the window goes to the platform's teacher.
        previous: the slot it replaced.
    """

    model: LoadedModel
    directory: Path
    cascade_threshold: float
    previous: Slot | None = None

    @property
    def version(self) -> str:
        """The model's version."""
        return str(self.model.manifest["version"])


class ModelSlots:
    """The models in use, per (asset type, task).

    Args:
        registry_dir: the local registry (``<task>/<version>/``).
        rejected_file: where versions rolled back are remembered.
        default_threshold: the cascade threshold of a task whose manifest names none.
    """

    def __init__(self, registry_dir: Path, rejected_file: Path, default_threshold: dict[str, float]) -> None:
        self.registry_dir = registry_dir
        self.rejected_file = rejected_file
        self.default_threshold = default_threshold
        self.slots: dict[Key, Slot] = {}
        self.rejected = self._read_rejected()

    def get(self, key: Key) -> Slot | None:
        """The slot in use, if any."""
        return self.slots.get(key)

    def sync(self, site: Site) -> None:
        """Load the models the site names and do not have yet; drop those it no longer names or no longer fit
        (a property renamed, a unit changed)."""
        wanted = {(name, task) for name, at in site.asset_types.items() for task in at.models}
        for key in sorted(wanted & self.slots.keys()):
            try:
                check_model(self.slots[key].model, key[1], site.asset_types[key[0]])
            except ModelUnusable as exc:
                log.error("model_no_longer_fits", asset_type=key[0], task=key[1], reason=str(exc))
                metrics.MODEL_INFO.labels(*key, self.slots.pop(key).version).set(0)
        for key in sorted(wanted - self.slots.keys()):
            slot = self._initial(site, key)
            if slot is not None:
                self._install(key, slot)
        for gone in self.slots.keys() - wanted:
            metrics.MODEL_INFO.labels(*gone, self.slots.pop(gone).version).set(0)

    def swap(self, site: Site, key: Key, directory: Path) -> Slot:
        """Check a model directory and put it in; ModelUnusable (nothing changed) when it fails."""
        return self.put(key, self.checked(site, key, directory))

    def put(self, key: Key, slot: Slot) -> Slot:
        """Use a checked model (``checked``) from now on, remembering the one it replaces for a rollback.

        One level only: the replaced slot forgets its own predecessor, so older sessions are freed.
        """
        slot.previous = self.slots.get(key)
        if slot.previous is not None:
            slot.previous.previous = None
        self.rejected.discard((*key, slot.version))
        self._install(key, slot)
        log.info(
            "model_swapped",
            asset_type=key[0],
            task=key[1],
            version=slot.version,
            replaced=slot.previous.version if slot.previous else None,
        )
        return slot

    def rollback(self, key: Key, slot: Slot, reason: str) -> bool:
        """Put back the version ``slot`` replaced; False when ``slot`` is not in use or replaced nothing."""
        if self.slots.get(key) is not slot or slot.previous is None:
            return False
        self._install(key, slot.previous)
        self.rejected.add((*key, slot.version))
        self._write_rejected()
        metrics.MODEL_ROLLBACKS.labels(key[1]).inc()
        log.error(
            "model_rolled_back",
            asset_type=key[0],
            task=key[1],
            version=slot.version,
            back_to=slot.previous.version,
            reason=reason,
        )
        return True

    def versions(self) -> dict[str, dict[str, str]]:
        """asset_type → task → version in use."""
        out: dict[str, dict[str, str]] = {}
        for (asset_type, task), slot in sorted(self.slots.items()):
            out.setdefault(asset_type, {})[task] = slot.version
        return out

    def _install(self, key: Key, slot: Slot) -> None:
        old = self.slots.get(key)
        if old is not None:
            metrics.MODEL_INFO.labels(*key, old.version).set(0)
        self.slots[key] = slot
        metrics.MODEL_INFO.labels(*key, slot.version).set(1)

    def _initial(self, site: Site, key: Key) -> Slot | None:
        for directory in self._candidates(key[1]):
            if (*key, directory.name) in self.rejected:
                continue
            try:
                return self.checked(site, key, directory)
            except ModelUnusable as exc:
                log.warning("model_skipped", asset_type=key[0], task=key[1], model=str(directory), reason=str(exc))
        log.error("model_unavailable", asset_type=key[0], task=key[1], registry=str(self.registry_dir))
        return None

    def _candidates(self, task: str) -> list[Path]:
        """Version directories of a task, newest first, the local registry's before the package's."""
        out: list[Path] = []
        for root in dict.fromkeys([self.registry_dir, PACKAGE_REGISTRY]):
            found = [p for p in (root / task).glob("*") if (p / MANIFEST).is_file()]
            out += sorted(found, key=_version_key, reverse=True)
        return out

    def checked(self, site: Site, key: Key, directory: Path) -> Slot:
        """A model directory loaded and checked against the asset type, not yet in use; ModelUnusable if unfit.

        Changes nothing here, so it may run on a worker thread while the loop keeps diagnosing.
        """
        asset_type, task = key
        atype = site.asset_types.get(asset_type)
        if atype is None or task not in atype.models:
            raise ModelUnusable(f"asset type {asset_type!r} has no {task} model in the site")
        try:
            model = runtime.load(directory)
            check_model(model, task, atype)
        except ModelUnusable:
            raise
        except ModelError as exc:
            raise ModelUnusable(str(exc)) from None
        except Exception as exc:  # a malformed manifest field the runtime does not check
            raise ModelUnusable(f"{directory}: unusable model ({type(exc).__name__}: {exc})") from None
        threshold = (model.manifest.get("cascade") or {}).get("confidence_threshold")  # checked on load
        return Slot(model, directory, float(self.default_threshold[task] if threshold is None else threshold))

    def _read_rejected(self) -> set[tuple[str, str, str]]:
        try:
            return {(str(a), str(t), str(v)) for a, t, v in json.loads(self.rejected_file.read_text())}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("rejected_models_unreadable", file=str(self.rejected_file), error=str(exc))
            return set()

    def _write_rejected(self) -> None:
        try:
            self.rejected_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.rejected_file.with_suffix(".tmp")
            with tmp.open("w") as f:
                f.write(json.dumps(sorted(self.rejected)))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.rejected_file)
        except OSError as exc:
            log.warning("rejected_models_not_saved", error=str(exc))


def _version_key(p: Path) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in p.name.split("."))


def check_model(model: LoadedModel, task: str, atype: AssetType) -> None:
    """Refuse a model of another task, reading inputs the asset type lacks, or failing a probe window (any error
    of the probe, a malformed calibration's too). The manifest's own fields were checked on load."""
    name = f"{model.manifest['name']} {model.manifest['version']}"
    if model.task != task:
        raise ModelUnusable(f"{name} is a {model.task} model, not {task}")
    spec = model.spec
    missing = [s for s in spec.signals if s not in atype.properties]
    if missing:
        raise ModelUnusable(f"{name} reads {missing}, not properties of the asset type")
    probe: dict[str, list[Any]] = model.probe_window()  # settings in a regime the model knows, if it has regimes
    for s in spec.signals:
        prop = atype.properties[s]
        if prop.range and s not in spec.categories and spec.regimes is None:
            probe[s] = [sum(prop.range) / 2] * spec.window
    try:
        p = model.predict(probe, {s: atype.properties[s].unit for s in spec.signals})
        wrong = out_of_range(model, p)
    except ModelError as exc:
        raise ModelUnusable(f"{name} fails its probe window: {exc}") from None
    except Exception as exc:  # a malformed calibration or output declaration
        raise ModelUnusable(f"{name} fails its probe window ({type(exc).__name__}: {exc})") from None
    if wrong:
        raise ModelUnusable(f"{name} probe output {wrong}")


def out_of_range(model: LoadedModel, p: Prediction) -> str | None:
    """Why a prediction leaves the model's declared range, or None."""
    numbers = (p.confidence, p.score, p.threshold, p.probability, p.rul, p.rul_low, p.rul_high)
    if any(v is not None and not math.isfinite(v) for v in numbers):
        return "not finite"
    if not 0.0 <= p.confidence <= 1.0 or (p.probability is not None and not 0.0 <= p.probability <= 1.0):
        return "probability outside [0, 1]"
    output = model.manifest["output"]
    if p.rul is not None:
        low = p.rul_low if p.rul_low is not None else p.rul
        high = p.rul_high if p.rul_high is not None else p.rul
        if not 0.0 <= low <= p.rul <= high or p.rul > float(output.get("cap", math.inf)):
            return f"RUL {p.rul} ({low}..{high}) outside [0, cap]"
    labels = output.get("labels")
    if labels and p.label not in labels:
        return f"label {p.label!r} not declared"
    return None
