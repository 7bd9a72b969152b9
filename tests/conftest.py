"""Shared fixtures: the machine's real PostgreSQL and Mosquitto, the data sets, fresh databases per test.

Services are used over real connections. Where one is missing the tests that need it are skipped with the
reason, except under ``FACTORY_TWIN_REQUIRE_SERVICES=1`` (set by .ci/run), where a missing service fails them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import settings
from sqlalchemy import Engine

from twin.config import TwinSettings

# Property tests judge what happens, not how fast: a loaded CI machine must not fail them on time (speed is
# measured by benchmarks/).
settings.register_profile("factory-twin", deadline=None)
settings.load_profile("factory-twin")


def pytest_configure(config: pytest.Config) -> None:
    """One OpenMP thread, in this process and the processes the tests start (a value already set is kept).

    The tests train on a few thousand rows: scikit-learn's threads (boosting, k-means) cost more than they give
    there, and on a loaded machine they spin against the suite's own services (a RUL training took five times as
    long). Set before any test module imports scikit-learn.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FACTORY_TWIN_DATASETS", ROOT.parent / "shared" / "datasets"))
PG_ADMIN_URL = os.environ.get("FACTORY_TWIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MQTT_HOST = os.environ.get("FACTORY_TWIN_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("FACTORY_TWIN_TEST_MQTT_PORT", "1883"))
REQUIRE_SERVICES = os.environ.get("FACTORY_TWIN_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _need(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    msg = f"{service} is not reachable at {host}:{port} (start it, or run .ci/run which installs it)"
    if REQUIRE_SERVICES:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The full public data sets (../shared/datasets); tests that need them skip where they are absent."""
    if not (DATASETS / "cmapss").is_dir():
        pytest.skip(f"data sets not found at {DATASETS} (set FACTORY_TWIN_DATASETS)")
    return DATASETS


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """Host and port of the machine's Mosquitto."""
    _need("Mosquitto", MQTT_HOST, MQTT_PORT)
    return MQTT_HOST, MQTT_PORT


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test (or concurrent run) uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def _create_pg_database() -> str:
    from sqlalchemy import create_engine, text

    name = f"ft_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class PgDatabases:
    """Fresh, empty PostgreSQL databases, made one ahead and dropped behind on a thread of their own.

    CREATE DATABASE and DROP DATABASE each take most of a second (a loaded server, more); a test waits for
    neither. Every database is still new to the test that takes it and dropped once it is done with it.
    """

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-databases")
        self._ahead: Future[str] | None = None
        self._drops: list[Future[None]] = []

    def take(self) -> str:
        """URL of a database no test has used; the next one is made while the caller uses it."""
        _need("PostgreSQL", "127.0.0.1", 5432)
        made = self._ahead or self._worker.submit(_create_pg_database)
        self._ahead = self._worker.submit(_create_pg_database)
        return made.result()

    def give_back(self, url: str) -> None:
        """Drop ``url``'s database (its connections are ended first), without waiting for it."""
        self._drops.append(self._worker.submit(_drop_pg_database, url))

    def close(self) -> None:
        """Drop the database made ahead, and wait for every drop (a failed one is raised here)."""
        if self._ahead is not None:
            with suppress(Exception):  # PostgreSQL went away: nothing was made
                self.give_back(self._ahead.result())
        self._worker.shutdown(wait=True)
        for drop in self._drops:
            drop.result()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    """The session's maker of fresh PostgreSQL databases."""
    databases = PgDatabases()
    yield databases
    databases.close()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped afterwards."""
    yield from _pg_url(request)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'twin.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine on a fresh SQLite file with the schema, disposed afterwards."""
    with schema_engine(sqlite_url) as engine:
        yield engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database, once on SQLite and once on PostgreSQL: the same suite runs on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'twin.db'}"
        return
    yield from _pg_url(request)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like ``db_url``, but one database for a whole test module: its tests empty it with ``clear_rows``."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('module-db') / 'twin.db'}"
        return
    yield from _pg_url(request)


def _pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    databases: PgDatabases = request.getfixturevalue("pg_databases")
    url = databases.take()
    yield url
    databases.give_back(url)


@contextmanager
def schema_engine(url: str) -> Iterator[Engine]:
    """An engine on ``url`` with the schema ``create_all`` makes, disposed when the block ends."""
    from twin.db import make_engine
    from twin.tables import Base

    engine = make_engine(url)
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on ``url`` brought to the newest revision by the migrations, disposed when the block ends."""
    from migrations import run
    from twin.db import make_engine

    run.upgrade(url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def module_engine(module_db_url: str) -> Iterator[Engine]:
    """An engine on ``module_db_url`` with the schema ``create_all`` makes, for ``empty_engine``."""
    with schema_engine(module_db_url) as engine:
        yield engine


@pytest.fixture
def empty_engine(module_engine: Engine) -> Engine:
    """The schema and not a row, once on SQLite and once on PostgreSQL: the module's database, emptied."""
    clear_rows(module_engine)
    return module_engine


def clear_rows(engine: Engine) -> None:
    """Empty every table of ``engine``'s schema (ids start again at 1), as fresh as ``create_all`` left it.

    The tables' triggers (the audit trail refuses DELETE; foreign keys) are set aside while it runs: on PostgreSQL
    by the replica role of this transaction, on SQLite by dropping and re-creating them with their own text.
    """
    from sqlalchemy import inspect, text

    tables = inspect(engine).get_table_names()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # DELETE of a few rows is much quicker than TRUNCATE (which makes new files for every table)
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for name in tables:
                conn.execute(text(f'DELETE FROM "{name}"'))
            sequences = conn.execute(
                text("SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = 'public'")
            ).scalars()
            for sequence in list(sequences):
                conn.execute(text(f'ALTER SEQUENCE "{sequence}" RESTART'))
            return
        triggers = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all()
        for name, _sql in triggers:
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        conn.execute(text("PRAGMA defer_foreign_keys = ON"))
        for name in tables:
            conn.execute(text(f'DELETE FROM "{name}"'))
        for _name, sql in triggers:
            conn.execute(text(sql))


@contextmanager
def module_app(db_url: str, settings: TwinSettings) -> Iterator[tuple[TestClient, Engine]]:
    """The API app on a database made by ``create_all``, for a module's tests to share (building an app's routes
    takes most of a second); each test starts with ``reset_app``."""
    from twin.api import create_app

    with schema_engine(db_url) as engine, TestClient(create_app(settings, engine)) as client:
        yield client, engine


def reset_app(client: TestClient) -> None:
    """Empty the app's database and forget its failed credential checks: as a new app on a fresh database."""
    from twin.throttle import Throttle, policy_of

    state = client.app.state
    clear_rows(state.engine)
    state.throttle = Throttle(policy_of(state.settings))
