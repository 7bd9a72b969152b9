"""Fixtures of the dashboard tests: the whole demo plant running (simulator → agent → broker → ingest →
SQLite → API and dashboard over uvicorn), its users, alerts and knowledge, and headless Debian Chromium.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from factory_twin.simulator.examples import example_site_path
from factory_twin.stack import Stack, StackConfig
from plant.wire import now_us
from twin import knowledge
from twin.alerts import lifecycle
from twin.broker import free_port
from twin.db import make_sessionmaker
from twin.live import live_bus_for
from twin.tables import Alert, Base, DiagnosisRecord, HistoryRow, TwinNode, TwinProperty
from twin.users import create_user

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = Path(os.environ.get("FACTORY_TWIN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"
SEC = 1_000_000
USERS = {"tess": "technician", "vic": "viewer", "erin": "engineer"}


@dataclass
class Plant:
    """The running demo plant and what was seeded into it."""

    url: str
    admin_key: str
    alerts: dict[str, int]
    stack: Stack


def _seed(stack: Stack) -> dict[str, int]:
    """Users, the example knowledge base and two open alerts (raised as the alert engine raises them)."""
    assert stack.engine is not None
    # the tables beyond the first migration (alerts, knowledge, users) until their revision lands
    Base.metadata.create_all(stack.engine)
    with make_sessionmaker(stack.engine)() as session:
        for name, role in USERS.items():
            create_user(session, name, PASSWORD, role)
        knowledge.sync_files(session, knowledge.load_dir(ROOT / "examples" / "knowledge"))
        now = now_us()
        made: dict[str, Alert] = {}
        for node, path, asset_type, rule, kind, cond, sev, msg, value in (
            (
                "pump-1",
                "/demo-plant/utilities/pump-1/",
                "pump",
                "pump-anomaly",
                "anomaly",
                "ANOMALY",
                "high",
                "Anomalous vibration, pressure and flow pattern",
                1.7,
            ),
            (
                "pump-1",
                "/demo-plant/utilities/pump-1/",
                "pump",
                "motor-current",
                "limit",
                "HI",
                "medium",
                "Motor current high",
                4.9,
            ),
        ):
            made[rule] = lifecycle.raise_alert(
                session,
                key=f"{node}/{rule}/hi",
                node_id=node,
                node_path=path,
                asset_type=asset_type,
                rule=rule,
                kind=kind,
                condition=cond,
                severity=sev,
                criticality="high",
                level=1,
                message=msg,
                value=value,
                evidence={"ts": now},
                at=now - 120_000_000,
            )
        _old_press(session, now)
        session.commit()
        return {rule: a.id for rule, a in made.items()}


def _old_press(session: Session, now: int) -> None:
    """A press whose sensor went quiet ten minutes ago, after an hour of 1 s data: its page must say stale."""
    session.add(
        TwinNode(
            id="press-9",
            parent_id="utilities",
            path="/demo-plant/utilities/press-9/",
            kind="machine",
            name="Old press 9",
            type="press",
            position=99,
        )
    )
    session.flush()
    last = now - 600 * SEC
    force = TwinProperty(
        node_id="press-9",
        name="force",
        unit="kN",
        range_low=0,
        range_high=120,
        value_num=61.0,
        ts=last,
        stored_ts=last,
        quality=0,
    )
    session.add(force)
    session.flush()
    # an hour of diagnoses: the anomaly score rising through its threshold, the RUL falling with its interval
    session.add_all(
        DiagnosisRecord(
            node_id="press-9",
            task=task,
            ts=last - i * 60 * SEC,
            model=f"{task}-model",
            version="1",
            source="edge",
            confidence=0.9,
            payload=payload,
        )
        for i in range(60)
        for task, payload in (
            ("anomaly", {"score": 0.4 + (59 - i) * 0.015, "threshold": 1.0}),
            (
                "rul",
                {"rul": 120.0 - (59 - i), "rul_low": 100.0 - (59 - i), "rul_high": 140.0 - (59 - i), "unit": "cycles"},
            ),
        )
    )
    session.execute(
        insert(HistoryRow),
        [
            {
                "property_id": force.id,
                "ts": last - i * SEC,
                "value_num": 60 + 10 * math.sin(i / 300) + (i % 7),
                "value_text": None,
                "quality": 0,
            }
            for i in range(3600)
        ],
    )


@pytest.fixture(scope="package")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    """The demo plant with live data, for every test of the package (starting it takes a few seconds)."""
    data_dir = tmp_path_factory.mktemp("dashboard-plant")
    # the OPC-UA server on a port of its own: two test runs at once would otherwise both find the usual one free
    # and race for it
    site = data_dir / "example-plant.yaml"
    site.write_text(example_site_path().read_text(encoding="utf-8").replace(":4841/", f":{free_port()}/"), "utf-8")
    stack = Stack(StackConfig(data_dir=data_dir, site_file=site, http_port=0, speed=2.0,
                              gateway_id=f"dash-{uuid.uuid4().hex[:8]}"))  # fmt: skip
    stack.start_platform()
    loop = asyncio.new_event_loop()
    edge = threading.Thread(target=lambda: loop.run_until_complete(stack.run_edge(None)), name="edge", daemon=True)
    try:
        _check_example_plant(stack)
        alerts = _seed(stack)
        assert stack.ingestor is not None
        assert stack.engine is not None
        # as `factory-twin serve` does: stored batches announced on the live bus, read by the SSE endpoint
        stack.ingestor.add_listener(live_bus_for(stack.engine).listener)
        edge.start()
        yield Plant(url=stack.api_url, admin_key=stack.admin_key, alerts=alerts, stack=stack)
    finally:
        if edge.is_alive():
            loop.call_soon_threadsafe(stack.stop_edge)
            edge.join(timeout=20)
        stack.stop_platform()
        if not edge.is_alive():
            loop.close()


def _check_example_plant(stack: Stack) -> None:
    """Fail early and clearly when the example plant no longer has the pump the tests use."""
    assert stack.engine is not None
    with make_sessionmaker(stack.engine)() as session:
        pump = session.get(TwinNode, "pump-1")
        assert pump is not None, "the example plant has no pump-1"
        assert pump.path == "/demo-plant/utilities/pump-1/", pump.path


def log_in(page: Any, url: str, username: str, password: str = PASSWORD) -> None:
    """Sign in with a password on the dashboard at ``url``; back once the plant tree is shown."""
    page.goto(url + "/")
    page.fill("#login-password input[name=username]", username)
    page.fill("#login-password input[name=password]", password)
    page.click("#login-password button")
    page.wait_for_selector("#tree li")


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright; skipped (failed under CI) when it is not installed."""
    if not CHROMIUM.exists():
        msg = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("FACTORY_TWIN_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
