"""API keys and roles (twin/auth.py), and the `factory-twin keys` command, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from factory_twin.cli.keys import keys
from twin import auth
from twin.api import create_app
from twin.auth import KEY_MARK, LAST_USED_RESOLUTION_US, PERSON_ROLES, Principal, Role
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.errors import Forbidden, NotFound, Unauthenticated
from twin.tables import ApiKey, Base


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    return empty_engine


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_sessionmaker(engine)() as s:
        yield s


def test_roles_are_ordered() -> None:
    assert Role.AGENT < Role.VIEWER < Role.TECHNICIAN < Role.ENGINEER < Role.ADMIN
    assert sorted([Role.ADMIN, Role.VIEWER, Role.ENGINEER, Role.AGENT, Role.TECHNICIAN]) == list(Role)
    assert Role("engineer") >= Role.TECHNICIAN
    assert not Role.TECHNICIAN >= Role.ENGINEER
    assert Role.ADMIN <= Role.ADMIN
    assert Role.ADMIN > Role.ENGINEER


def test_principal_require() -> None:
    tech = Principal(key_id=1, prefix="ftk_0123456789ab", name="t", role=Role.TECHNICIAN)
    tech.require(Role.VIEWER)
    tech.require(Role.TECHNICIAN)
    with pytest.raises(Forbidden, match="engineer"):
        tech.require(Role.ENGINEER)
    tech.require(Role.VIEWER, or_agent=True)
    with pytest.raises(Forbidden, match="engineer"):
        tech.require(Role.ENGINEER, or_agent=True)


def test_an_agent_key_passes_only_the_checks_made_for_gateways() -> None:
    agent = Principal(key_id=2, prefix="ftk_0123456789ac", name="gw", role=Role.AGENT)
    for role in PERSON_ROLES:
        with pytest.raises(Forbidden, match=f"needs the {role.value} role; the key ftk_0123456789ac is agent"):
            agent.require(role)
        agent.require(role, or_agent=True)
    assert Role.AGENT not in PERSON_ROLES


def test_only_the_hash_is_stored(session: Session) -> None:
    key = auth.create_key(session, Role.ENGINEER, "ci")
    assert key.startswith(KEY_MARK)
    assert len(key) > 50
    row = session.scalars(select(ApiKey)).one()
    assert key.startswith(row.prefix + "_")
    assert len(row.prefix) == 16
    assert row.hash == hashlib.sha256(key.encode()).hexdigest()
    secret = key[len(row.prefix) + 1 :]
    stored = " ".join(str(getattr(row, c.key)) for c in ApiKey.__table__.columns)
    assert secret not in stored
    assert (row.role, row.name, row.revoked, row.last_used_at) == ("engineer", "ci", False, None)


def test_keys_are_unique(session: Session) -> None:
    made = {auth.create_key(session, Role.VIEWER) for _ in range(20)}
    assert len(made) == 20
    assert len({k[:16] for k in made}) == 20


def test_authenticate(session: Session) -> None:
    key = auth.create_key(session, Role.TECHNICIAN, "tablet")
    who = auth.authenticate(session, key)
    assert (who.role, who.name, who.prefix) == (Role.TECHNICIAN, "tablet", key[:16])


MALFORMED = [
    None,
    "",
    "ftk_",
    "ftk_0123456789ab",
    "ftk_0123456789ab_",
    "ftk_0123456789AB_secret",
    "ftk_zzzzzzzzzzzz_secret",
    "xyz_0123456789ab_secret",
    "Bearer ftk_0123456789ab_secret",
    "ftk_0123456789ab_secret\x00",
    "é" * 100,
]


def test_malformed_or_unknown_keys_are_refused(session: Session) -> None:
    auth.create_key(session, Role.ADMIN)
    for bad in MALFORMED:
        with pytest.raises(Unauthenticated):
            auth.authenticate(session, bad)


def test_wrong_secret_with_a_real_prefix(session: Session) -> None:
    key = auth.create_key(session, Role.ADMIN)
    with pytest.raises(Unauthenticated, match="invalid"):
        auth.authenticate(session, key[:-2] + ("aa" if not key.endswith("aa") else "bb"))


def test_revoke(session: Session) -> None:
    key = auth.create_key(session, Role.VIEWER)
    row = auth.revoke_key(session, key[4:16])  # the prefix without its mark works too
    assert row.revoked
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.authenticate(session, key)
    assert auth.revoke_key(session, key[:16]).revoked  # again: no error
    with pytest.raises(NotFound):
        auth.revoke_key(session, "ftk_ffffffffffff")
    assert [k.prefix for k in auth.list_keys(session)] == [key[:16]]


def test_last_used_is_throttled(session: Session) -> None:
    key = auth.create_key(session, Role.VIEWER)

    def last_used() -> int | None:
        session.rollback()
        return session.scalars(select(ApiKey.last_used_at)).one()

    auth.authenticate(session, key)
    first = last_used()
    assert first is not None
    auth.authenticate(session, key)
    assert last_used() == first
    old = first - LAST_USED_RESOLUTION_US - 1
    session.execute(update(ApiKey).values(last_used_at=old))
    session.commit()
    auth.authenticate(session, key)
    assert last_used() not in (None, old)


# ---- the command line ----------------------------------------------------------------------------------


@pytest.fixture
def cli() -> Iterator[Callable[..., Result]]:
    """Run `factory-twin keys ...` in-process; its logs go to the real stderr, structlog is restored after."""
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    runner = CliRunner()

    def run(url: str, *args: str) -> Result:
        return runner.invoke(keys, list(args), env={"TWIN_DATABASE_URL": url}, catch_exceptions=False)

    yield run
    structlog.reset_defaults()
    if was_configured:
        structlog.configure(**saved)


def test_cli_create_list_revoke(engine: Engine, tmp_path: Path, cli: Callable[..., Result]) -> None:
    url = engine.url.render_as_string(hide_password=False)
    made = cli(url, "create", "--role", "viewer", "--name", "wallboard")
    assert made.exit_code == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n"  # the key, and nothing else, on stdout
    assert key.startswith(KEY_MARK)

    app = create_app(TwinSettings(data_dir=tmp_path), engine)
    with TestClient(app) as client:
        assert client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {key}"}).status_code == 200

        listed = cli(url, "list")
        assert listed.exit_code == 0, listed.stderr
        assert key[:16] in listed.stdout
        assert "wallboard" in listed.stdout
        assert key not in listed.stdout
        as_json = cli(url, "list", "--json")
        assert json.loads(as_json.stdout)["prefix"] == key[:16]

        revoked = cli(url, "revoke", key[:16])
        assert revoked.exit_code == 0, revoked.stderr
        assert client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {key}"}).status_code == 401

    unknown = cli(url, "revoke", "ftk_ffffffffffff")
    assert unknown.exit_code == 1
    assert "no API key" in unknown.stderr


def test_cli_refuses_a_database_without_schema(tmp_path: Path, cli: Callable[..., Result]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for args in (["create", "--role", "admin"], ["list"], ["revoke", "ftk_0123456789ab"]):
        r = cli(url, *args)
        assert r.exit_code == 1
        assert r.stdout == ""
        assert "factory-twin db upgrade" in r.stderr


def test_cli_rejects_an_unknown_role(tmp_path: Path, cli: Callable[..., Result]) -> None:
    r = cli(f"sqlite:///{tmp_path / 'x.db'}", "create", "--role", "root")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert "root" in r.stderr


def test_cli_prints_only_the_key_as_a_program(sqlite_url: str, tmp_path: Path) -> None:
    """The real entry point, logging set up as in production: stdout is the key, the note goes to stderr."""
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    r = subprocess.run(
        [sys.executable, "-m", "factory_twin", "keys", "create", "--role", "admin"],
        capture_output=True,
        text=True,
        env=env | {"TWIN_DATABASE_URL": sqlite_url},
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1
    key = r.stdout.strip()
    assert key.startswith(KEY_MARK)
    assert key[:16] in r.stderr
    with make_sessionmaker(make_engine(sqlite_url))() as s:
        assert auth.authenticate(s, key).role == Role.ADMIN
