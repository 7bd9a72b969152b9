"""A fresh clone serves the cascade of every task: each task's newest committed model carries its teacher."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from models import registry, runtime
from models.datasets import load_cmapss
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker

from .model_archives import machine_twin

ROOT = Path(__file__).resolve().parents[1]
ENGINE_SLICE = ROOT / "examples" / "data" / "cmapss_train_FD001_units_39_1_69.txt.gz"


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``git clone`` of this checkout: what is committed, nothing built or left over locally."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    dest = tmp_path_factory.mktemp("clone") / "factory-twin"
    subprocess.run([git, "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True, timeout=300)
    return dest


@pytest.mark.parametrize("task", registry.TASKS)
def test_every_tasks_newest_model_has_its_teacher_committed(clone: Path, task: str) -> None:
    directory = registry.latest(clone / "models" / "registry", task)
    manifest = registry.read_manifest(directory)
    teacher = manifest["variants"]["teacher"]
    assert (directory / teacher["file"]).is_file(), f"{directory}: {teacher['file']} is not committed"
    assert runtime.load(directory, "teacher").variant == "teacher"
    student = manifest["variants"][manifest["default_variant"]]
    assert student["bytes"] <= 0.1 * teacher["bytes"]


@pytest.fixture
def engine_twin(tmp_path: Path) -> Iterator[Engine]:
    yield from machine_twin(f"sqlite:///{tmp_path / 'twin.db'}", "e1", "turbofan")


def test_the_platform_of_a_fresh_clone_answers_a_rul_cascade(clone: Path, engine_twin: Engine, tmp_path: Path) -> None:
    models_dir = clone / "models" / "registry"
    student = runtime.load(registry.latest(models_dir, "rul"))
    data = load_cmapss([ENGINE_SLICE]).train
    assert data is not None
    rows = data[data["unit"] == "FD001/39"].head(60)  # an engine 60 cycles in: a shorter window is padded
    window = {s: rows[s].tolist() for s in student.spec.signals}
    with make_sessionmaker(engine_twin)() as s:
        key = create_key(s, Role.AGENT, "agent-key")
    app = create_app(TwinSettings(data_dir=tmp_path, model_dir=models_dir), engine_twin)
    body = {"node": "e1", "task": "rul", "ts": 1_750_000_000_000_000, "model": "cmapss-rul",
            "version": student.manifest["version"], "window": window}  # fmt: skip
    with TestClient(app) as client:
        r = client.post("/api/v1/cascade", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["source"], answer["version"]) == ("platform", student.manifest["version"])
    assert 0 <= answer["rul_low"] <= answer["rul"] <= answer["rul_high"]
    assert answer["rul"] <= 125
