"""Fixtures of the alert, advice and webhook tests: the example site, fresh schemas, a fleet site."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from plant.site import Site, load_site, parse_site
from tests.conftest import schema_engine

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def site() -> Site:
    """The example plant with its alert rules."""
    return load_site(ROOT / "examples" / "plant.yaml")


@pytest.fixture
def db(empty_engine: Engine) -> Engine:
    """A fresh schema on SQLite and on PostgreSQL (the module's database, emptied)."""
    return empty_engine


@pytest.fixture
def sqlite_db(sqlite_engine: Engine) -> Engine:
    """A fresh schema on SQLite only (pure rule logic, where the database does not matter)."""
    return sqlite_engine


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Engine]:
    """A fresh schema on PostgreSQL only."""
    with schema_engine(pg_url) as engine:
        yield engine


def fleet_site(n: int) -> Site:
    """A site with ``n`` pumps under one area, each with one HI limit rule on vibration (no delays)."""
    machines = "\n".join(
        f"          - {{id: p{i}, kind: machine, type: pump, criticality: medium}}" for i in range(n)
    )
    text = f"""
site: {{id: fleet}}
asset_types:
  pump:
    properties:
      vib: {{unit: g}}
    alerts:
      - {{id: vib-high, kind: limit, property: vib, hi: 1.0, severity: high}}
nodes:
  - id: fleet
    kind: site
    children:
      - id: hall
        kind: area
        children:
{machines}
"""
    return parse_site(text, "<fleet>")
