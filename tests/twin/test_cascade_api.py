"""POST /api/v1/cascade: the platform's teacher re-checks a window and its answer is stored as a diagnosis."""

from __future__ import annotations

import csv
import gzip
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from models import runtime
from plant.wire import Diagnosis, DiagnosisSource, UplinkBatch
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.model_registry import pack, version_key
from twin.store import TwinStore
from twin.tables import DiagnosisRecord, TwinProperty

from ..model_archives import REGISTRY, ROOT, add_machine, model_copy

SKAB = ROOT / "examples" / "data" / "skab_anomaly-free_head600.csv.gz"
COLUMNS = {
    "accelerometer1_rms": ("Accelerometer1RMS", "g"),
    "accelerometer2_rms": ("Accelerometer2RMS", "g"),
    "current": ("Current", "A"),
    "pressure": ("Pressure", "kPa"),
    "temperature": ("Temperature", "°C"),
    "thermocouple": ("Thermocouple", "°C"),
    "voltage": ("Voltage", "V"),
    "flow_rate": ("Volume Flow RateRMS", "l/min"),
}
TS = 1_750_000_000_000_000


def skab_window(rows: int = 30) -> dict[str, list[float]]:
    """The first rows of the SKAB normal run, as the anomaly model's signals."""
    with gzip.open(SKAB, "rt", encoding="utf-8") as f:
        records = [r for _, r in zip(range(rows), csv.DictReader(f, delimiter=";"), strict=False)]
    return {signal: [float(r[column]) for r in records] for signal, (column, _unit) in COLUMNS.items()}


def ask(version: str = "1.0.0", node: str = "p1", **extra: Any) -> dict[str, Any]:
    """A cascade request of the anomaly student about one window."""
    units = {signal: unit for signal, (_column, unit) in COLUMNS.items()}
    body = {"node": node, "task": "anomaly", "ts": TS, "model": "skab-pump-anomaly", "version": version,
            "window": skab_window(), "units": units}  # fmt: skip
    return {**body, **extra}


@dataclass
class Platform:
    app: FastAPI
    client: TestClient
    engine: Engine
    keys: dict[Role, str]

    def post(self, path: str, role: Role, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[role]}", **kw.pop("headers", {})}
        return self.client.post("/api/v1" + path, headers=headers, **kw)

    def diagnoses(self) -> list[DiagnosisRecord]:
        with make_sessionmaker(self.engine)() as s:
            return list(s.scalars(select(DiagnosisRecord)))


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    return add_machine(empty_engine, "p1", "pump")


def _platform(engine: Engine, tmp_path: Path, model_dir: Path) -> Iterator[Platform]:
    with make_sessionmaker(engine)() as s:
        keys = {role: create_key(s, role, f"{role.value}-key") for role in Role}
    app = create_app(TwinSettings(data_dir=tmp_path, model_dir=model_dir), engine)
    with TestClient(app) as client:
        yield Platform(app, client, engine, keys)


@pytest.fixture
def platform(engine: Engine, tmp_path: Path) -> Iterator[Platform]:
    """A platform without a teacher on disk: only uploaded ones count."""
    yield from _platform(engine, tmp_path, tmp_path / "empty-registry")


@pytest.fixture
def with_package_registry(engine: Engine, tmp_path: Path) -> Iterator[Platform]:
    """A platform whose only teachers are the committed registry's."""
    yield from _platform(engine, tmp_path, REGISTRY)


def test_the_teachers_answer_is_stored_as_a_platform_diagnosis_and_returned(platform: Platform, tmp_path: Path) -> None:
    assert platform.post("/models", Role.ENGINEER, content=pack(model_copy(tmp_path / "m"))).status_code == 201
    reader = platform.app.state.live.reader()
    try:
        r = platform.post("/cascade", Role.AGENT, json=ask())
        assert r.status_code == 200, r.text
        events = _wait_events(reader, "p1")
    finally:
        reader.close()
    answer = r.json()
    expected = runtime.load(REGISTRY / "anomaly" / "1.0.0", "teacher").predict(skab_window(), ask()["units"])
    assert (answer["node"], answer["task"], answer["ts"], answer["source"]) == ("p1", "anomaly", TS, "platform")
    assert (answer["model"], answer["version"]) == ("skab-pump-anomaly", "1.0.0")
    assert answer["score"] == pytest.approx(expected.score)
    assert answer["threshold"] == pytest.approx(expected.threshold)
    assert answer["label"] == expected.label
    (stored,) = platform.diagnoses()
    assert (stored.node_id, stored.task, stored.ts, stored.source) == ("p1", "anomaly", TS, "platform")
    assert stored.payload["score"] == pytest.approx(expected.score)
    with make_sessionmaker(platform.engine)() as s:  # like an uplinked diagnosis: its fields are properties too
        score = s.scalars(select(TwinProperty).where(TwinProperty.name == "diag.anomaly.score")).one()
        assert (score.node_id, score.ts) == ("p1", TS)
    assert "diag.anomaly.score" in {p for e in events for p in e.props}
    # asked again (the agent retried): the same answer, stored once
    assert platform.post("/cascade", Role.AGENT, json=ask()).json() == answer
    assert len(platform.diagnoses()) == 1


def test_when_the_agents_own_answer_came_first_that_is_what_the_platform_returns(
    platform: Platform, tmp_path: Path
) -> None:
    # The agent stopped waiting and uplinked its student's answer; the teacher's, later, is not stored over it.
    assert platform.post("/models", Role.ENGINEER, content=pack(model_copy(tmp_path / "m"))).status_code == 201
    own = Diagnosis(node="p1", task="anomaly", ts=TS, model="skab-pump-anomaly", version="1.0.0",
                    source=DiagnosisSource.EDGE_FALLBACK, confidence=0.2, score=0.5, threshold=1.0,
                    label="normal")  # fmt: skip
    TwinStore(platform.engine).apply(UplinkBatch(gateway="gw", batch="b1", sent=TS, diagnoses=[own]))
    r = platform.post("/cascade", Role.AGENT, json=ask())
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "edge_fallback"
    assert r.json()["score"] == pytest.approx(0.5)
    (stored,) = platform.diagnoses()
    assert stored.source == "edge_fallback"


def _wait_events(reader: Any, node: str, timeout: float = 10.0) -> list[Any]:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        seen += reader.wait(0.2)
        if any(e.node == node for e in seen):
            return seen
    raise AssertionError(f"no live event for {node}: {seen}")


def test_the_same_version_teacher_first_else_the_newest_with_one(platform: Platform, tmp_path: Path) -> None:
    for version, drop in (("1.0.0", ()), ("1.1.0", ("teacher",)), ("1.2.0", ())):
        data = pack(model_copy(tmp_path / version, new_version=version, drop=drop))
        assert platform.post("/models", Role.ENGINEER, content=data).status_code == 201
    pairs = (("1.0.0", "1.0.0"), ("1.1.0", "1.2.0"), ("0.9.0", "1.2.0"), ("1.2.0", "1.2.0"))
    for i, (student, teacher) in enumerate(pairs):  # a window each: one window's first answer stays
        r = platform.post("/cascade", Role.AGENT, json=ask(student, ts=TS + i))
        assert r.status_code == 200, r.text
        assert r.json()["version"] == teacher, student


def test_a_teacher_from_the_registry_directory_when_none_is_uploaded(with_package_registry: Platform) -> None:
    with_teacher = [d.name for d in (REGISTRY / "anomaly").iterdir() if (d / "teacher.onnx").is_file()]
    r = with_package_registry.post("/cascade", Role.AGENT, json=ask("0.1.0"))
    assert r.status_code == 200, r.text
    assert r.json()["version"] == max(with_teacher, key=version_key)  # the newest committed one
    r = with_package_registry.post("/cascade", Role.AGENT, json=ask("1.0.0", ts=TS + 1))
    assert r.json()["version"] == "1.0.0"  # its own
    # RUL models up to 1.2.0 kept their 18.5 MB teacher out of the repository; the newest one's is committed and
    # answers for them: this anomaly window is not an engine's, so the RUL teacher refuses it (not a 503)
    body = {**ask(), "task": "rul", "version": "1.1.0"}
    r = with_package_registry.post("/cascade", Role.AGENT, json=body)
    assert r.status_code == 422
    assert "the teacher refuses this window" in r.json()["detail"]


def test_no_teacher_is_503_and_nothing_is_stored(platform: Platform, tmp_path: Path) -> None:
    r = platform.post("/cascade", Role.AGENT, json=ask())
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "no anomaly teacher" in r.json()["detail"]
    student_only = pack(model_copy(tmp_path / "s", drop=("teacher",)))
    assert platform.post("/models", Role.ENGINEER, content=student_only).status_code == 201
    assert platform.post("/cascade", Role.AGENT, json=ask()).status_code == 503
    assert platform.diagnoses() == []


def test_bad_windows_and_unknown_nodes_are_refused_and_nothing_is_stored(platform: Platform, tmp_path: Path) -> None:
    platform.post("/models", Role.ENGINEER, content=pack(model_copy(tmp_path / "m")))
    window = skab_window()
    del window["current"]
    r = platform.post("/cascade", Role.AGENT, json=ask(window=window))
    assert r.status_code == 422
    assert "missing_signal" in r.json()["detail"]
    r = platform.post("/cascade", Role.AGENT, json=ask(units={**ask()["units"], "pressure": "bar"}))
    assert r.status_code == 422
    assert "wrong_unit" in r.json()["detail"]
    r = platform.post("/cascade", Role.AGENT, json=ask(node="nowhere"))
    assert r.status_code == 404
    assert "nowhere" in r.json()["detail"]
    assert platform.post("/cascade", Role.AGENT, json={**ask(), "task": "weather"}).status_code == 422
    assert platform.diagnoses() == []


def test_only_agents_and_engineers_may_ask(platform: Platform, tmp_path: Path) -> None:
    platform.post("/models", Role.ENGINEER, content=pack(model_copy(tmp_path / "m")))
    for role in (Role.VIEWER, Role.TECHNICIAN):
        r = platform.post("/cascade", role, json=ask())
        assert r.status_code == 403, role
    assert platform.client.post("/api/v1/cascade", json=ask()).status_code == 401
    assert platform.diagnoses() == []
    for n, role in enumerate((Role.AGENT, Role.ENGINEER, Role.ADMIN)):
        assert platform.post("/cascade", role, json=ask(ts=TS + n)).status_code == 200, role
