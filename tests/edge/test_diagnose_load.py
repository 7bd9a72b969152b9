"""Load awareness: under pressure healthy machines are diagnosed less often first, unhealthy ones last."""

from __future__ import annotations

from pathlib import Path

from edge_agent import metrics
from edge_agent.config import AgentSettings
from edge_agent.diagnostics.diagnose import Diagnoser
from edge_agent.diagnostics.load import Load, LoadGovernor
from edge_agent.diagnostics.model_slots import PACKAGE_REGISTRY
from plant.site import Site
from tests.edge.test_diagnose import FAILING_MILL, HEALTHY_MILL, frame, run_frames, site_of


def two_mills() -> Site:
    """Two CNC mills of the example plant's type (its faults model)."""
    return Site.model_validate(site_of({"mill-ok": "cnc_mill", "mill-bad": "cnc_mill"}))


def test_pressure_stretches_healthy_machines_first_and_relaxes_unhealthy_first() -> None:
    g = LoadGovernor(cpu_high=0.8, busy_high=0.5, backlog_high=0.25, max_stretch=4)
    busy = Load(cpu=0.2, busy=0.9, backlog=0.0)
    calm = Load(cpu=0.1, busy=0.0, backlog=0.0)
    steps = []
    for load in (busy, busy, busy, busy, Load(0.7, 0.4, 0.2), calm, calm, calm, calm):
        g.update(load)
        steps.append((g.stretch(True), g.stretch(False)))
    assert steps == [(2, 1), (4, 1), (4, 2), (4, 4), (4, 4), (4, 2), (4, 1), (2, 1), (1, 1)]
    assert g.pressure(Load(cpu=0.1, busy=0.1, backlog=0.5)) == 2.0  # the ingestion backlog alone is pressure
    assert metrics.DIAGNOSIS_STRETCH.labels("healthy")._value.get() == 1


def test_under_load_the_unhealthy_machine_keeps_its_rate(tmp_path: Path) -> None:
    backlog = [0.0]  # the pipeline's backlog share, as the agent wires it
    settings = AgentSettings(data_dir=tmp_path / "agent", load_max_stretch=8, load_backlog_high=0.25)
    d = Diagnoser(two_mills(), settings, PACKAGE_REGISTRY, backlog=lambda: backlog[0])
    values = {"mill-ok": HEALTHY_MILL, "mill-bad": FAILING_MILL}
    first = run_frames(d, [[frame(n, 0, v) for n, v in values.items()]])
    assert {(x.node, x.label) for x in first} == {("mill-ok", "none"), ("mill-bad", "HDF")}
    backlog[0] = 0.9  # ingestion falls behind: three samples of pressure stretch the healthy mill to 8
    for _ in range(3):
        d.governor.update(Load(cpu=0.1, busy=0.0, backlog=backlog[0]))
    deferred = metrics.DIAGNOSES_DEFERRED.labels("healthy")._value.get()
    out = run_frames(d, [[frame(n, i, v) for n, v in values.items()] for i in range(1, 33)])
    per = {n: [x.ts for x in out if x.node == n] for n in values}
    assert len(per["mill-bad"]) == 32  # every grid point
    assert len(per["mill-ok"]) == 4  # every 8th
    assert metrics.DIAGNOSES_DEFERRED.labels("healthy")._value.get() == deferred + 7 * 4  # at 8, 16, 24, 32
    backlog[0] = 0.0
    for _ in range(3):
        d.governor.update(Load(cpu=0.1, busy=0.0, backlog=0.0))
    out = run_frames(d, [[frame(n, i, v) for n, v in values.items()] for i in range(33, 37)])
    assert len([x for x in out if x.node == "mill-ok"]) == 4


def test_a_sample_measures_cpu_and_busy_share(tmp_path: Path) -> None:
    g = LoadGovernor(cpu_high=0.9, busy_high=0.5, backlog_high=0.25, max_stretch=4)
    assert g.sample(0.0, min_interval_s=10.0) is None  # too soon
    g.add_busy(0.05)
    load = g.sample(0.1, min_interval_s=0.0)
    assert load is not None
    assert load.backlog == 0.1
    assert load.cpu >= 0.0
    assert 0.0 < load.busy <= 1.0
    assert metrics.LOAD.labels("backlog")._value.get() == 0.1
