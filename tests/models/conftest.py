"""Fixtures of the model tests: the committed registry and small real-data subsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import registry

REGISTRY = Path(__file__).resolve().parents[2] / "models" / "registry"


@pytest.fixture(scope="session")
def registry_root() -> Path:
    """The committed model registry."""
    return REGISTRY


@pytest.fixture(scope="session", params=["rul", "faults", "anomaly"])
def committed(request: pytest.FixtureRequest) -> Path:
    """The committed model directory of each task."""
    return registry.latest(REGISTRY, request.param)
