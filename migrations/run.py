"""Run the migrations from code, no alembic.ini needed: works from an installed package as from the source tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from twin.db import make_engine

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for our scripts; the URL is passed as an attribute so '%' in passwords is safe."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        cfg.attributes["url"] = url
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (the newest by default)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision`` (``base`` removes every table)."""
    command.downgrade(alembic_config(url), revision)


def head() -> str:
    """The newest revision the code knows."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None, "no migration scripts found"
    return rev


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at; None for a database never migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def differences(url: str) -> list[Any]:
    """What autogenerate would change to make the database match the models (empty when they agree)."""
    from twin.tables import Base

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()
