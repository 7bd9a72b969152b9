"""Every API operation under schemathesis, on SQLite and PostgreSQL: no 5xx, every answer as documented.

The real app (ASGI, in process) with an admin key and a small seeded plant, driven by schemathesis's own
engine as its command line runs it: examples, boundary values of every documented limit (coverage), valid and
invalid random requests (fuzzing), then chains of calls through the links it infers (stateful: what one call
creates, the next reads, changes or deletes). Checks: no answer is a server error, and each answer matches the
schema declared for its status code. An exception escaping the app counts as a server error.

Requests that break the schema are refused by the request models that declare it, before any query and alike on
either database, so they run on SQLite only; PostgreSQL gets the valid ones, boundary values included, which is
where the two databases differ (integer ranges, NUL in strings).

``/api/v1/live`` is left out: it is an event stream that stays open for minutes by design (tests/dashboard
covers it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.engine import Status, events, from_schema
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from plant.site import load_site
from tests.twin.alerts.test_api import raise_process_temperature
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_engine
from twin.knowledge import load_dir, sync_files
from twin.site_sync import sync_site
from twin.tables import Base

ROOT = Path(__file__).resolve().parents[2]

EXAMPLES = 5  # random cases per operation in the fuzzing phase (the coverage phase sends every boundary case anyway)
CHECKS = ["not_a_server_error", "response_schema_conformance"]
MODES = {  # by dialect
    "sqlite": [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    "postgresql": [GenerationMode.POSITIVE],
}


@schemathesis.serializer("application/gzip")
def _gzip(_ctx: Any, value: Any) -> dict[str, Any]:
    """Model archives: whatever bytes were generated (the registry refuses what is not a valid archive)."""
    return {"data": value if isinstance(value, bytes) else str(value).encode()}


@dataclass
class Run:
    """What schemathesis did: requests sent, and each failing (operation, check) with its first message."""

    cases: int = 0
    server_errors: int = 0
    failures: dict[tuple[str, str], str] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"{self.cases} cases, {self.server_errors} answers 5xx, {len(self.failures)} failures"]
        lines += [f"  {op} [{check}]: {msg}" for (op, check), msg in sorted(self.failures.items())]
        return "\n".join(lines)


def fuzz(app: Any, key: str, examples: int, modes: list[GenerationMode]) -> Run:
    """Run schemathesis's engine against ``app`` with an admin key, generating ``modes`` (positive: requests the
    schema allows, negative: requests it forbids); what it sent and what failed."""
    api = schemathesis.openapi.from_asgi(
        "/openapi.json", app, headers={"Authorization": f"Bearer {key}"}  # the docs need a key by default
    ).exclude(path="/api/v1/live")
    api.config.update(headers={"Authorization": f"Bearer {key}"})
    api.config.checks.update(included_check_names=CHECKS)
    api.config.generation.update(max_examples=examples, deterministic=True, modes=modes)
    run = Run()
    for event in from_schema(api).execute():
        if isinstance(event, events.ScenarioFinished):
            _tally(run, event.recorder)
        elif isinstance(event, events.NonFatalError):
            run.failures.setdefault((event.label, "exception"), str(event.value).splitlines()[0][:300])
        elif isinstance(event, events.FatalError):
            raise event.exception
    return run


def _tally(run: Run, recorder: Any) -> None:
    for interaction in recorder.interactions.values():
        run.cases += 1
        run.server_errors += interaction.response is not None and interaction.response.status_code >= 500
    for checks in recorder.checks.values():
        for check in checks:
            if check.status == Status.FAILURE:
                info = check.failure_info
                message = f"{info.failure.title}: {info.failure.message}" if info else ""
                run.failures.setdefault((recorder.label, check.name), message.replace("\n", " ")[:300])


@pytest.fixture
def seeded(db_url: str) -> Iterator[Engine]:
    """The example plant with its knowledge base and one open alert (id 1, which boundary cases reach)."""
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    site = load_site(ROOT / "examples" / "plant.yaml")
    sync_site(engine, site)
    with Session(engine) as s, s.begin():
        sync_files(s, load_dir(ROOT / "examples" / "knowledge"))
    raise_process_temperature(site, engine)
    yield engine
    engine.dispose()


def test_every_operation_holds_under_schemathesis(seeded: Engine, tmp_path: Path) -> None:
    with Session(seeded) as s:
        key = create_key(s, Role.ADMIN, "fuzz-admin")
    app = create_app(TwinSettings(data_dir=tmp_path, api_metrics=False), seeded)
    run = fuzz(app, key, EXAMPLES, MODES[seeded.dialect.name])
    print(f"\nschemathesis on {seeded.dialect.name}: {run.report()}", file=sys.stderr)
    assert run.cases > 1000, run.report()
    assert run.server_errors == 0, run.report()
    assert not run.failures, run.report()
