"""`factory-twin keys`: create, list, rotate and revoke the platform's API keys.

The database is the demo's by default (``--data-dir var/demo``), or the one ``--data-dir`` or
``--database-url`` names (factory_twin/cli/database.py). ``keys create`` and ``keys rotate`` print the new key,
and only the key, on stdout, so a script can capture it::

    KEY=$(factory-twin keys create --role viewer --name wallboard --expires-in-days 90)

Every change is in the audit trail, as made by ``cli (<login name>)`` from ``local``.
"""

from __future__ import annotations

from pathlib import Path

import click
import structlog

from factory_twin.cli.database import commit_change, database_options, open_session
from factory_twin.cli.listing import Listed, echo_rows
from factory_twin.cli.users import sites_option
from factory_twin.logs import configure_logging
from plant.wire import from_us, now_us
from twin import auth, scopes
from twin.auth import PERSON_ROLES, Role
from twin.tables import ApiKey


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
@click.option("--expires-in-days", type=click.FloatRange(min=0, min_open=True, max=3650), default=None,
              help="refuse the key after this many days (default: never expires)")
@click.option("--user", "owner", default=None, help="the user the key belongs to: it stops while they are disabled")
@sites_option
@database_options
def create(role: str, name: str, expires_in_days: float | None, owner: str | None, sites: list[str] | None,
           data_dir: Path, database_url: str | None) -> None:
    """Create a key and print it: it is shown this once, only its hash is stored."""
    from twin import users

    expires = None if expires_in_days is None else now_us() + int(expires_in_days * 86_400e6)
    with open_session(data_dir, database_url) as session:
        if owner is not None:
            users.get_user(session, owner)
        key = auth.create_key(session, Role(role), name, owner=owner, expires_at=expires, sites=sites, commit=False)
        row = auth.get_key(session, key)
        commit_change(session, "key.create", f"key:{row.prefix}", after=_fields(row))
    click.echo(key)
    until = "" if expires is None else f", valid until {from_us(expires).isoformat(timespec='minutes')}"
    click.echo(f"created {role} key {key[:16]}{until}; store it now, it cannot be shown again", err=True)


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per key")
@database_options
def list_(as_json: bool, data_dir: Path, database_url: str | None) -> None:
    """List keys (prefix, role, state, created, last used, expiry, owner, name); never the keys themselves."""
    with open_session(data_dir, database_url) as session:
        rows = auth.list_keys(session)
    echo_rows([_listed(row) for row in rows], as_json, "no keys yet: `factory-twin keys create --role admin`")


def _listed(row: ApiKey) -> Listed:
    f = _fields(row)
    used = f["last_used_at"] or "never"
    expires = f" expires {f['expires_at']}" if f["expires_at"] else ""
    owner = f" user {row.owner}" if row.owner else ""
    sites = f" sites {f['sites']}" if row.sites is not None else ""
    return f, (f"{row.prefix}  {row.role:<10}  {f['state']:<7}  {f['created_at']}  used {used}"
               f"{expires}{owner}{sites}  {row.name}")


@keys.command()
@click.argument("prefix")
@database_options
def revoke(prefix: str, data_dir: Path, database_url: str | None) -> None:
    """Revoke the key with PREFIX (as listed, e.g. ftk_0123456789ab): requests with it get 401 from now on."""
    from twin import users

    with open_session(data_dir, database_url) as session:
        row = auth.get_key(session, prefix)
        before = _fields(row)
        auth.revoke_key(session, prefix, commit=False)
        if row.role == Role.ADMIN.value:
            users.keep_an_admin(session, f"the key {row.prefix} cannot be revoked")
        commit_change(session, "key.revoke", f"key:{row.prefix}", before=before, after=_fields(row))
    click.echo(f"revoked {row.prefix} ({row.role}{', ' + row.name if row.name else ''})")


@keys.command()
@click.argument("prefix")
@click.option("--grace-hours", type=click.FloatRange(min=0, max=90 * 24), default=24.0, show_default=True,
              help="how long the old key keeps working, so clients can switch (0: stops now)")
@database_options
def rotate(prefix: str, grace_hours: float, data_dir: Path, database_url: str | None) -> None:
    """Replace the key with PREFIX by a new one (printed once); the old one works for the grace period."""
    with open_session(data_dir, database_url) as session:
        before = _fields(auth.get_key(session, prefix))
        key, new, old = auth.rotate_key(session, prefix, grace_hours * 3600)
        commit_change(session, "key.rotate", f"key:{old.prefix}", before=before,
                      after={**_fields(old), "new_key": _fields(new)})
    click.echo(key)
    assert old.expires_at is not None
    click.echo(f"{new.prefix} replaces {old.prefix}, which works until "
               f"{from_us(old.expires_at).isoformat(timespec='minutes')}; store the new key now", err=True)


@keys.command(name="create-user", hidden=True)
@click.argument("username")
@click.option("--role", "-r", type=click.Choice([r.value for r in PERSON_ROLES]), required=True)
@click.option("--password-stdin", is_flag=True)
@database_options
@click.pass_context
def create_user(ctx: click.Context, username: str, role: str, password_stdin: bool, data_dir: Path,
                database_url: str | None) -> None:
    """Kept for scripts written before `factory-twin users create`, which it runs."""
    from factory_twin.cli.users import create as users_create

    ctx.invoke(users_create, username=username, role=role, password_stdin=password_stdin, sites=None,
               data_dir=data_dir, database_url=database_url)


def _fields(row: ApiKey) -> dict[str, str | bool | None]:
    return {
        "prefix": row.prefix,
        "role": row.role,
        "name": row.name,
        "state": auth.key_state(row),
        "owner": row.owner,
        "created_at": from_us(row.created_at).isoformat(),
        "last_used_at": None if row.last_used_at is None else from_us(row.last_used_at).isoformat(),
        "expires_at": None if row.expires_at is None else from_us(row.expires_at).isoformat(),
        "rotated_to": row.rotated_to,
        "revoked": row.revoked,
        "sites": None if row.sites is None else scopes.describe(row.sites),
    }
