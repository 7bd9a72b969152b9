"""Which database the ``keys`` and ``users`` commands work on: ``--data-dir`` and ``--database-url``, as
``factory-twin demo`` takes them, so a user or key made with the defaults works in the demo::

    factory-twin users create alice --role technician              # the demo's var/demo
    factory-twin users create alice --role technician --data-dir var/demo-2
    factory-twin keys create --role viewer --database-url postgresql+psycopg://…/twin

The URL wins over the directory; TWIN_DATABASE_URL and TWIN_DATA_DIR stand in for the options. The database
used is named on stderr, so a key never lands somewhere unexpected unnoticed.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from twin import audit
from twin.db import make_engine, make_sessionmaker
from twin.errors import TwinError
from twin.tables import AuditRecord

DEMO_DATA_DIR = Path("var/demo")  # factory-twin demo's default
F = TypeVar("F", bound=Callable[..., Any])


def database_options(command: F) -> F:
    """Add ``--data-dir`` and ``--database-url`` (alias ``--url``) to a command."""
    command = click.option(
        "--database-url", "--url", "database_url", envvar="TWIN_DATABASE_URL", default=None,
        help="SQLAlchemy URL; wins over --data-dir (default: TWIN_DATABASE_URL)",
    )(command)
    command = click.option(
        "--data-dir", type=click.Path(path_type=Path), envvar="TWIN_DATA_DIR", default=DEMO_DATA_DIR,
        show_default=True, help="the SQLite database <data-dir>/twin.db, as `factory-twin demo --data-dir` uses it",
    )(command)
    return command


def database_url(data_dir: Path, url: str | None) -> str:
    """The URL the options name."""
    return url or f"sqlite:///{data_dir / 'twin.db'}"


@contextmanager
def open_session(data_dir: Path, url: str | None) -> Iterator[Session]:
    """A session on the chosen database; a clear error if it is unreachable, has no schema or an old one."""
    target = database_url(data_dir, url)
    engine = make_engine(target)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        try:
            tables = inspect(engine)
            if not tables.has_table(AuditRecord.__tablename__):
                where = f" --url '{shown}'" if url else f" --url sqlite:///{data_dir / 'twin.db'}"
                state = "an older twin schema" if tables.has_table("api_keys") else "no twin schema"
                raise click.ClickException(
                    f"the database {shown} has {state}: run `factory-twin db upgrade{where}` "
                    "(or start `factory-twin demo` on it once)"
                )
        except SQLAlchemyError as exc:
            raise click.ClickException(f"cannot open the database {shown}: {str(exc).splitlines()[0]}") from None
        click.echo(f"database: {shown}", err=True)
        with make_sessionmaker(engine)() as session:
            try:
                yield session
            except TwinError as exc:  # NotFound, Conflict, InvalidRequest...: the message says what to do
                session.rollback()
                raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()


def cli_actor() -> str:
    """Who the audit trail names for a change made on the command line."""
    try:
        return f"cli ({getpass.getuser()})"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli"


def commit_change(
    session: Session,
    action: str,
    target: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Commit a change made on the command line with its audit record (by ``cli_actor()``, from "local")."""
    audit.record(session, cli_actor(), action, target, before=before, after=after, address="local")
    session.commit()


def read_password(from_stdin: bool, prompt: str = "password") -> str:
    """A password from stdin (one line) or asked for twice, never echoed."""
    import sys

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))
