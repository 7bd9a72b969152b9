"""Refuse to run on a database whose schema is behind the code, and say which command fixes it."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from twin.errors import SchemaOutdated, StoreError

FIX = "run `factory-twin db upgrade`"


def check_schema(url: str) -> str:
    """The database's revision if it is the newest; SchemaOutdated if not, StoreError if unreadable."""
    from migrations import run

    try:
        current = run.current(url)
    except SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0]
        raise StoreError(f"cannot read the schema version of the database: {reason}") from exc
    head = run.head()
    if current is None:
        raise SchemaOutdated(f"the database has no schema yet (code expects revision {head}): {FIX}")
    if current != head:
        raise SchemaOutdated(f"the database schema is at revision {current}, the code expects {head}: {FIX}")
    return current
