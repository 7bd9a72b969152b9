"""`factory-twin users`: the people who log in to the dashboard: create, list, disable, enable, change role,
reset a password, list and end sessions, remove.

The database is the demo's by default (``--data-dir var/demo``), or the one ``--data-dir`` or
``--database-url`` names (factory_twin/cli/database.py)::

    factory-twin users create alice --role technician        # asks for the password twice
    factory-twin users disable alice                           # her sessions end, her keys stop
    factory-twin users set-sites bob plant-a,plant-b           # bob sees and changes these sites only

The last active admin cannot be demoted, disabled or removed. Every change is in the audit trail, as made by
``cli (<login name>)`` from ``local``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import structlog

from factory_twin.cli.database import commit_change, database_options, open_session, read_password
from factory_twin.cli.listing import Listed, echo_rows
from factory_twin.logs import configure_logging
from plant.wire import from_us
from twin import scopes
from twin import users as accounts
from twin.auth import PERSON_ROLES, Role
from twin.errors import InvalidRequest
from twin.tables import User

_ROLE = click.Choice([r.value for r in PERSON_ROLES])


def _parse_sites(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    try:
        return scopes.parse(value)
    except InvalidRequest as exc:
        raise click.BadParameter(str(exc)) from None


sites_option = click.option(
    "--sites", callback=_parse_sites, default=None, metavar="A,B",
    help="the site ids (top-level nodes) it may see and change, comma-separated (default: every site)",
)


@click.group()
def users() -> None:
    """Manage dashboard users (who log in with a name and password)."""
    if not structlog.is_configured():
        configure_logging()


def _user_command(name: str | None = None) -> Callable[[Callable[..., None]], click.Command]:
    """A ``users`` subcommand whose first argument is USERNAME."""

    def apply(command: Callable[..., None]) -> click.Command:
        return users.command(name=name)(click.argument("username")(command))

    return apply


@_user_command()
@click.option("--role", "-r", type=_ROLE, required=True, help="viewer < technician < engineer < admin")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin instead of prompting")
@sites_option
@database_options
def create(username: str, role: str, password_stdin: bool, sites: list[str] | None, data_dir: Path,
           database_url: str | None) -> None:
    """Create USERNAME, who logs in with a password (asked for, never echoed)."""
    password = read_password(password_stdin)
    with open_session(data_dir, database_url) as session:
        user = accounts.create_user(session, username, password, Role(role), sites=sites, commit=False)
        commit_change(session, "user.create", f"user:{username}", after=accounts.snapshot(user))
    click.echo(f"created {role} user {username}: log in on the dashboard with this name and password", err=True)


@users.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per user")
@database_options
def list_(as_json: bool, data_dir: Path, database_url: str | None) -> None:
    """List users: name, role, state, created, sessions."""
    with open_session(data_dir, database_url) as session:
        rows = [(u, len(accounts.live_sessions(session, u.username))) for u in accounts.list_users(session)]
    listed = [_listed(user, sessions) for user, sessions in rows]
    echo_rows(listed, as_json, "no users yet: `factory-twin users create NAME --role admin`")


def _listed(user: User, sessions: int) -> Listed:
    fields = {**accounts.snapshot(user), "created_at": from_us(user.created_at).isoformat(), "sessions": sessions}
    state = "disabled" if user.disabled else "active"
    return fields, (f"{user.username:<20}  {user.role:<10}  {state:<8}  {fields['created_at']}  "
                    f"sessions {sessions}  sites {scopes.describe(user.sites)}")


def _change(data_dir: Path, database_url: str | None, username: str, action: str, apply: str,
            *args: object) -> None:
    """Apply ``accounts.<apply>(session, username, *args)`` and record ``action`` with before and after."""
    with open_session(data_dir, database_url) as session:
        before = accounts.snapshot(accounts.get_user(session, username))
        user = getattr(accounts, apply)(session, username, *args)
        after = None if action == "user.delete" else accounts.snapshot(user)
        commit_change(session, action, f"user:{username}", before=before, after=after)


@_user_command()
@database_options
def disable(username: str, data_dir: Path, database_url: str | None) -> None:
    """Disable USERNAME: their sessions end, their keys stop, they cannot log in."""
    _change(data_dir, database_url, username, "user.disable", "set_disabled", True)
    click.echo(f"disabled {username}", err=True)


@_user_command()
@database_options
def enable(username: str, data_dir: Path, database_url: str | None) -> None:
    """Let USERNAME log in again."""
    _change(data_dir, database_url, username, "user.enable", "set_disabled", False)
    click.echo(f"enabled {username}", err=True)


@_user_command(name="set-role")
@click.argument("role", type=_ROLE)
@database_options
def set_role(username: str, role: str, data_dir: Path, database_url: str | None) -> None:
    """Give USERNAME the ROLE (their open sessions take it at once)."""
    _change(data_dir, database_url, username, "user.set_role", "set_role", Role(role))
    click.echo(f"{username} is now {role}", err=True)


@_user_command(name="set-sites")
@click.argument("sites", callback=_parse_sites, metavar="A,B|all")
@database_options
def set_sites(username: str, sites: list[str] | None, data_dir: Path, database_url: str | None) -> None:
    """Limit USERNAME to SITES (comma-separated site ids), or ``all``; their sessions and keys follow at once."""
    _change(data_dir, database_url, username, "user.set_sites", "set_sites", sites)
    click.echo(f"{username} now sees {scopes.describe(sites)}", err=True)


@_user_command(name="reset-password")
@click.option("--password-stdin", is_flag=True, help="read the new password from stdin instead of prompting")
@database_options
def reset_password(username: str, password_stdin: bool, data_dir: Path, database_url: str | None) -> None:
    """Set a new password for USERNAME; their sessions end."""
    password = read_password(password_stdin, "new password")
    with open_session(data_dir, database_url) as session:
        accounts.reset_password(session, username, password)
        commit_change(session, "user.reset_password", f"user:{username}")
    click.echo(f"password of {username} reset; their sessions have ended", err=True)


@_user_command()
@database_options
def sessions(username: str, data_dir: Path, database_url: str | None) -> None:
    """List USERNAME's live login sessions."""
    with open_session(data_dir, database_url) as session:
        accounts.get_user(session, username)
        rows = accounts.live_sessions(session, username)
    for row in rows:
        used = "never" if row.last_used_at is None else from_us(row.last_used_at).isoformat()
        click.echo(f"{row.prefix}  started {from_us(row.created_at).isoformat()}  used {used}")
    if not rows:
        click.echo(f"{username} has no live session", err=True)


@_user_command(name="end-sessions")
@database_options
def end_sessions(username: str, data_dir: Path, database_url: str | None) -> None:
    """End every login session of USERNAME (they log in again)."""
    with open_session(data_dir, database_url) as session:
        accounts.get_user(session, username)
        ended = accounts.end_sessions(session, username)
        commit_change(session, "user.end_sessions", f"user:{username}", after={"ended": ended})
    click.echo(f"ended {len(ended)} session(s) of {username}", err=True)


@_user_command()
@database_options
def remove(username: str, data_dir: Path, database_url: str | None) -> None:
    """Remove USERNAME: their sessions and keys are revoked (the audit trail keeps their name)."""
    _change(data_dir, database_url, username, "user.delete", "delete_user")
    click.echo(f"removed {username}", err=True)
