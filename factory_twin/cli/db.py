"""`factory-twin db`: migrate the twin's database (Alembic, scripts shipped inside the package)."""

from __future__ import annotations

from typing import Literal

import click

from twin.config import get_settings
from twin.errors import SchemaOutdated, StoreError

_URL = click.option(
    "--url",
    envvar="TWIN_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL (default: TWIN_DATABASE_URL, else the SQLite file under the data dir)",
)


def _url(url: str | None) -> str:
    return url or get_settings().db_url


def _migrate(url: str | None, revision: str, direction: Literal["upgrade", "downgrade"]) -> None:
    """Move the schema up or down to ``revision`` and print where it is now."""
    from migrations import run

    target = _url(url)
    (run.upgrade if direction == "upgrade" else run.downgrade)(target, revision)
    click.echo(f"database at revision {run.current(target) or 'base'}")


@click.group()
def db() -> None:
    """Migrate the twin's database."""


@db.command()
@_URL
@click.argument("revision", default="head")
def upgrade(url: str | None, revision: str) -> None:
    """Upgrade the schema to REVISION (the newest by default)."""
    _migrate(url, revision, "upgrade")


@db.command()
@_URL
@click.argument("revision")
def downgrade(url: str | None, revision: str) -> None:
    """Downgrade the schema to REVISION ('base' removes every table)."""
    _migrate(url, revision, "downgrade")


@db.command()
@_URL
def current(url: str | None) -> None:
    """Print the database's revision and the newest one the code knows."""
    from migrations import run

    click.echo(f"current: {run.current(_url(url)) or 'none'}")
    click.echo(f"head:    {run.head()}")


@db.command()
@_URL
def check(url: str | None) -> None:
    """Exit non-zero if the schema is not the newest."""
    from migrations.check import check_schema

    try:
        rev = check_schema(_url(url))
    except (SchemaOutdated, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"schema up to date (revision {rev})")
