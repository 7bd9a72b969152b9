"""Rule definitions and bad input: clear errors for bad rules, knowledge files and retry headers; odd values
are ignored, never crash the engine."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from plant.errors import SiteError
from plant.site import Site, parse_site
from tests.twin.alerts.test_engine import T0, S, alerts, step
from twin.alerts import AlertEngine, PropertyChange
from twin.alerts.rules import Debounce, quality_name
from twin.errors import ConfigError, InvalidRequest
from twin.knowledge import load_file
from twin.webhooks import WorkerConfig, backoff_s, retry_after_s

SITE = """
site: {{id: s}}
asset_types:
  m:
    properties: {{x: {{}}, y: {{}}}}
    alerts:
{rules}
nodes:
  - {{id: s, kind: site, children: [{{id: a, kind: area, children: [{{id: m1, kind: machine, type: m}}]}}]}}
"""


def site_with(*rules: str) -> Site:
    return parse_site(SITE.format(rules="\n".join(f"      - {r}" for r in rules)), "<test>")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["{id: r, kind: limit, property: x}"], "at least one of hi, hihi, lo, lolo"),
        (["{id: r, kind: limit, property: nope, hi: 1}"], "no property 'nope'"),
        (["{id: r, kind: limit, property: x, hi: 5, hihi: 4}"], "hihi 4.0 must not be below hi 5.0"),
        (["{id: r, kind: rate, property: x}"], "needs 'max_rate'"),
        (["{id: r, kind: stale, property: x}"], "needs 'after_s'"),
        (["{id: r, kind: fault}"], "needs 'mode'"),
        (["{id: r, kind: all, rules: [r]}"], "at least two rules"),
        (["{id: a, kind: any, rules: [b, c]}", "{id: b, kind: quality, property: x}"], "unknown rule 'c'"),
        (
            [
                "{id: a, kind: any, rules: [b, q]}",
                "{id: b, kind: all, rules: [a, q]}",
                "{id: q, kind: quality, property: x}",
            ],
            "in a loop",
        ),
        (["{id: r, kind: quality, property: x}", "{id: r, kind: quality, property: y}"], "used twice"),
        (["{id: r, kind: limit, property: x, hi: 1, severity: urgent}"], "severity"),
        (
            ["{id: r, kind: limit, property: x, hi: 1, suppress_when: {property: y}}"],
            "'below', 'above' or 'equals'",
        ),
    ],
)
def test_bad_rules_are_refused_with_the_reason(rules: list[str], message: str) -> None:
    with pytest.raises(SiteError, match="invalid site file") as err:
        site_with(*rules)
    assert message in str(err.value)
    assert "<test>:" in str(err.value)  # names the file (and line)


def test_odd_values_are_ignored_not_fatal(sqlite_db: Engine) -> None:
    site = site_with(
        "{id: hi, kind: limit, property: x, hi: 10}", "{id: roc, kind: rate, property: x, max_rate: 1}"
    )
    engine = AlertEngine(site, started=T0)
    odd = [
        PropertyChange("m1", "x", "text", T0),
        PropertyChange("m1", "x", math.nan, T0 + S),
        PropertyChange("m1", "x", math.inf, T0 + 2 * S),
        PropertyChange("m1", "x", None, T0 + 3 * S, "bad"),
        PropertyChange("unknown-node", "x", 99.0, T0 + 4 * S),
        PropertyChange("m1", "unknown-prop", 99.0, T0 + 5 * S),
        PropertyChange("m1", "x", 5.0, T0 + 6 * S),
        PropertyChange("m1", "x", 5.0, T0 + 6 * S),  # same time again: no rate from a zero interval
        PropertyChange("m1", "x", 5.0, T0 + 2 * S),  # late: ignored by the rate window
    ]
    for c in odd:
        step(engine, sqlite_db, [c])
    assert alerts(sqlite_db) == []
    step(engine, sqlite_db, [PropertyChange("m1", "x", 11.0, T0 + 20 * S)])
    assert [a.rule for a in alerts(sqlite_db)] == ["hi"]  # rate: 6 units over 14 s is below 1/s


def test_debounce_and_quality_names() -> None:
    d = Debounce(on_delay_us=5, off_delay_us=3)
    assert [d.update(True, t) for t in (0, 4, 5)] == [None, None, True]
    assert [d.update(False, t) for t in (6, 8, 9)] == [None, None, False]
    assert d.update(True, 10) is None
    assert d.update(False, 11) is None
    assert d.update(True, 20) is None
    assert quality_name(2) == "bad"
    assert quality_name("good") == "good"
    assert quality_name(7) == "bad"


def test_retry_after_and_backoff() -> None:
    cfg = WorkerConfig(backoff_base_s=1.0, backoff_cap_s=60.0)
    assert retry_after_s("7", 3600) == 7.0
    assert retry_after_s("999999", 3600) == 3600.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_s(when, 3600) or 0) <= 31
    assert retry_after_s("soon", 3600) is None
    assert retry_after_s(None, 3600) is None
    delays = [backoff_s(n, cfg) for n in range(1, 12)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(30.0 <= d <= 60.0 for d in delays[7:])
    with pytest.raises(ConfigError):
        WorkerConfig(batch=64, concurrency=1, timeout_s=5, lease_s=60)
    with pytest.raises(ConfigError):
        WorkerConfig(concurrency=0)


def test_bad_knowledge_file_names_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "kb.yaml"
    p.write_text("asset_type: pump\nentries:\n  - condition: x\n    title: T\n    causes: []\n")
    with pytest.raises(InvalidRequest, match=r"kb.yaml: entries.0.causes"):
        load_file(p)
    p.write_text("asset_type: pump\nentries: [\n")
    with pytest.raises(InvalidRequest, match="cannot read knowledge file"):
        load_file(p)
    with pytest.raises(InvalidRequest, match="cannot read"):
        load_file(tmp_path / "missing.yaml")


def test_default_retry_schedule_outlasts_a_receiver_down_for_an_hour() -> None:
    cfg = WorkerConfig()
    shortest = sum(min(cfg.backoff_cap_s, cfg.backoff_base_s * 2 ** (n - 1)) * 0.5 for n in range(1, 18))
    assert shortest >= 3600  # 18 tries with the least jitter still span an hour before the dead letter
