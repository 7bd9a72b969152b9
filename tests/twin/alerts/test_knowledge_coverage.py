"""Every alert the example plant can raise finds advice in its knowledge base: no alert without a next step."""

from __future__ import annotations

from pathlib import Path

from plant.site import Site
from twin.knowledge import load_dir

ROOT = Path(__file__).resolve().parents[3]
FAULT_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")  # the AI4I fault model's labels besides "none"


def test_every_rule_of_the_example_plant_has_advice(site: Site) -> None:
    known = {(f.asset_type, e.condition) for f, _ in load_dir(ROOT / "examples" / "knowledge") for e in f.entries}
    missing = []
    for type_id, atype in site.asset_types.items():
        for rule in atype.alerts:
            if not rule.notify:
                continue
            keys = [rule.id, rule.kind]
            if rule.kind == "fault":  # matched by the mode the model sees
                missing += [f"{type_id}/{rule.id}/{m}" for m in FAULT_MODES if (type_id, m) not in known]
            elif not any((type_id, k) in known for k in keys):
                missing.append(f"{type_id}/{rule.id}")
    assert missing == []
