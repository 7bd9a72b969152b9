"""`factory-twin keys`: create, list and revoke the platform's API keys, on the database of the twin settings.

``keys create`` prints the new key, and only the key, on stdout, so a script can capture it::

    KEY=$(factory-twin keys create --role viewer --name wallboard)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import structlog
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from factory_twin.logs import configure_logging
from plant.wire import from_us
from twin import auth
from twin.auth import PERSON_ROLES, Role
from twin.config import get_settings
from twin.db import make_engine, make_sessionmaker
from twin.errors import NotFound
from twin.tables import ApiKey

_URL = click.option(
    "--url",
    envvar="TWIN_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL (default: TWIN_DATABASE_URL, else the SQLite file under the data dir)",
)


@contextmanager
def _session(url: str | None) -> Iterator[Session]:
    """A session on the configured database; a clear error if it is unreachable or has no schema."""
    engine = make_engine(url or get_settings().db_url)
    try:
        try:
            if not inspect(engine).has_table(ApiKey.__tablename__):
                raise click.ClickException(
                    f"the database {engine.url.render_as_string(hide_password=True)} has no twin schema: "
                    "run `factory-twin db upgrade` first"
                )
        except SQLAlchemyError as exc:
            raise click.ClickException(f"cannot open the database: {str(exc).splitlines()[0]}") from None
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


@click.group()
def keys() -> None:
    """Manage API keys: every API call but /healthz needs one."""
    if not structlog.is_configured():
        configure_logging()  # to stderr: stdout carries the key alone


@keys.command()
@click.option(
    "--role",
    "-r",
    type=click.Choice([r.value for r in Role]),
    required=True,
    help="viewer < technician < engineer < admin; agent for an edge gateway (models and cascade only)",
)
@click.option("--name", "-n", default="", help="what the key is for (shown in listings)")
@_URL
def create(role: str, name: str, url: str | None) -> None:
    """Create a key and print it: it is shown this once, only its hash is stored."""
    with _session(url) as session:
        key = auth.create_key(session, Role(role), name)
    click.echo(key)
    click.echo(f"created {role} key {key[:16]}; store it now, it cannot be shown again", err=True)


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per key")
@_URL
def list_(as_json: bool, url: str | None) -> None:
    """List keys (prefix, role, name, created, last used, revoked); never the keys themselves."""
    with _session(url) as session:
        rows = auth.list_keys(session)
    for row in rows:
        f = _fields(row)
        if as_json:
            click.echo(json.dumps(f))
        else:
            state = "revoked" if row.revoked else "active"
            used = f["last_used_at"] or "never"
            click.echo(
                f"{row.prefix}  {row.role:<10}  {state:<7}  {f['created_at']}  used {used}  {row.name}"
            )
    if not rows and not as_json:
        click.echo("no keys yet: `factory-twin keys create --role admin`", err=True)


@keys.command()
@click.argument("prefix")
@_URL
def revoke(prefix: str, url: str | None) -> None:
    """Revoke the key with PREFIX (as listed, e.g. ftk_0123456789ab): requests with it get 401 from now on."""
    with _session(url) as session:
        try:
            row = auth.revoke_key(session, prefix)
        except NotFound as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {row.prefix} ({row.role}{', ' + row.name if row.name else ''})")


@keys.command(name="create-user")
@click.argument("username")
@click.option(
    "--role",
    "-r",
    type=click.Choice([r.value for r in PERSON_ROLES]),
    required=True,
    help="viewer < technician < engineer < admin",
)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin instead of prompting")
@_URL
def create_user(username: str, role: str, password_stdin: bool, url: str | None) -> None:
    """Create a dashboard user who logs in with USERNAME and a password (asked for, never echoed)."""
    from twin.dashboard.users import create_user as create
    from twin.errors import Conflict, InvalidRequest

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    with _session(url) as session:
        try:
            create(session, username, password, Role(role))
        except (Conflict, InvalidRequest) as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:  # most likely the users table is missing: an older schema
            raise click.ClickException(
                f"cannot store the user ({str(exc).splitlines()[0]}): run `factory-twin db upgrade` first"
            ) from None
    click.echo(f"created {role} user {username}", err=True)


def _fields(row: ApiKey) -> dict[str, str | bool | None]:
    return {
        "prefix": row.prefix,
        "role": row.role,
        "name": row.name,
        "created_at": from_us(row.created_at).isoformat(),
        "last_used_at": None if row.last_used_at is None else from_us(row.last_used_at).isoformat(),
        "revoked": row.revoked,
    }
