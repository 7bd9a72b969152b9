"""Tool wear failures: a maintenance rule in the plant's alert rules and knowledge base, not the fault model's."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import faults, registry
from models.datasets import load_ai4i, parse_rows
from plant.site import load_site
from twin.knowledge import load_file

ROOT = Path(__file__).resolve().parents[2]


def test_the_plant_rule_advice_and_model_agree_on_where_tool_wear_is_handled(registry_root: Path) -> None:
    mill = load_site(ROOT / "examples" / "plant.yaml").asset_types["cnc_mill"]
    (rule,) = [r for r in mill.alerts if r.id == "tool-wear"]
    assert (rule.kind, rule.property, rule.hi) == ("limit", "tool_wear", faults.TOOL_WEAR_LIMIT)
    knowledge = load_file(ROOT / "examples" / "knowledge" / "cnc_mill.yaml")
    entry = next(e for e in knowledge.entries if e.condition == "tool-wear")
    assert entry.causes[0].actions  # advice with actions, not just a title
    assert "200 min" in entry.description
    model = registry.read_manifest(registry.latest(registry_root, "faults"))
    assert "TWF" not in model["output"]["labels"]  # the learned model leaves tool wear failures to the rule


@pytest.mark.datasets
def test_the_rule_warns_of_tool_wear_failures_on_rows_the_model_was_not_trained_on(datasets: Path) -> None:
    rows = load_ai4i([datasets / "ai4i2020" / "ai4i2020.csv"], parse_rows("7001-10000"))
    found = faults.tool_wear_rule(rows)
    assert (found["twf_failures"], found["twf_warned"]) == (15, 15)
    assert found["median_warning_min"] == 16.0
    assert found["rows_warned_share"] < 0.08
    assert faults.labels_of(rows).max() < len(faults.LABELS)
    assert (faults.modes_of(rows) == 1).sum() == 14  # TWF alone; one more TWF row also failed by another mode
