"""``/api/v1/users``: people who log in to the dashboard, run by an admin; ``/api/v1/account``: one's own
password and sessions. Every change is in the audit trail, in the transaction that makes it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from sqlalchemy.orm import Session

from plant.wire import from_us
from twin import audit, scopes, users
from twin.api.deps import AdminDep, SessionDep, ViewerDep
from twin.auth import Role
from twin.errors import Forbidden
from twin.schemas.users import (
    PasswordChange,
    PasswordReset,
    SessionInfo,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserUpdate,
)
from twin.tables import User

router = APIRouter(prefix="/users", tags=["users"])
account_router = APIRouter(prefix="/account", tags=["account"])

Username = Annotated[str, Path(min_length=1, max_length=64, pattern=users.USERNAME_RE.pattern)]
SessionPrefix = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^ftk_[0-9a-f]{12}$")]


def _public(session: Session, user: User) -> UserPublic:
    sessions, keys = users.credential_counts(session, user.username)
    return UserPublic(
        username=user.username, role=Role(user.role), disabled=user.disabled, created_at=from_us(user.created_at),
        password_changed_at=None if user.password_changed_at is None else from_us(user.password_changed_at),
        sites=user.sites, sessions=sessions, keys=keys,
    )


def _sessions(session: Session, username: str, current: int | None = None) -> list[SessionInfo]:
    return [
        SessionInfo(prefix=row.prefix, created_at=from_us(row.created_at),
                    last_used_at=None if row.last_used_at is None else from_us(row.last_used_at),
                    current=row.id == current)
        for row in users.live_sessions(session, username)
    ]


@router.get("", response_model=UsersPublic)
def list_users(session: SessionDep, _who: AdminDep) -> UsersPublic:
    """Every user, oldest first."""
    items = [_public(session, u) for u in users.list_users(session)]
    return UsersPublic(items=items, count=len(items))


@router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(session: SessionDep, who: AdminDep, body: UserCreate) -> UserPublic:
    """Create a user; 409 if the name is taken."""
    user = users.create_user(session, body.username, body.password, body.role, sites=body.sites, commit=False)
    audit.record(session, who, "user.create", f"user:{user.username}", after=users.snapshot(user))
    session.commit()
    return _public(session, user)


@router.get("/{username}", response_model=UserPublic)
def get_user(session: SessionDep, _who: AdminDep, username: Username) -> UserPublic:
    """One user."""
    return _public(session, users.get_user(session, username))


@router.patch("/{username}", response_model=UserPublic)
def update_user(session: SessionDep, who: AdminDep, username: Username, body: UserUpdate) -> UserPublic:
    """Change a user's role or sites, or disable (sessions end, keys stop) or enable them. 409 for the last
    admin."""
    user = users.get_user(session, username)
    before = users.snapshot(user)
    if body.role is not None and body.role.value != user.role:
        users.set_role(session, username, body.role)
        audit.record(session, who, "user.set_role", f"user:{username}", before=before, after=users.snapshot(user))
    if body.disabled is not None and body.disabled != user.disabled:
        step = users.snapshot(user)
        users.set_disabled(session, username, body.disabled)
        action = "user.disable" if body.disabled else "user.enable"
        audit.record(session, who, action, f"user:{username}", before=step, after=users.snapshot(user))
    if "sites" in body.model_fields_set and scopes.normalise(body.sites) != user.sites:
        step = users.snapshot(user)
        users.set_sites(session, username, body.sites)
        audit.record(session, who, "user.set_sites", f"user:{username}", before=step, after=users.snapshot(user))
    session.commit()
    return _public(session, user)


@router.delete("/{username}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(session: SessionDep, who: AdminDep, username: Username) -> Response:
    """Remove a user: their sessions and keys are revoked. 409 for the last admin."""
    user = users.get_user(session, username)
    before = users.snapshot(user)
    users.delete_user(session, username)
    audit.record(session, who, "user.delete", f"user:{username}", before=before)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{username}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password(session: SessionDep, who: AdminDep, username: Username, body: PasswordReset) -> Response:
    """Set a user's password (they should change it); their sessions end."""
    users.reset_password(session, username, body.password)
    audit.record(session, who, "user.reset_password", f"user:{username}")
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{username}/sessions", response_model=list[SessionInfo])
def list_sessions(session: SessionDep, who: AdminDep, username: Username) -> list[SessionInfo]:
    """A user's live login sessions, newest first."""
    users.get_user(session, username)
    return _sessions(session, username, who.key_id)


@router.delete("/{username}/sessions", status_code=status.HTTP_204_NO_CONTENT)
def end_sessions(session: SessionDep, who: AdminDep, username: Username) -> Response:
    """End every login session of a user (they log in again)."""
    users.get_user(session, username)
    ended = users.end_sessions(session, username)
    audit.record(session, who, "user.end_sessions", f"user:{username}", after={"ended": ended})
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/{username}/sessions/{prefix}", status_code=status.HTTP_204_NO_CONTENT)
def end_session(session: SessionDep, who: AdminDep, username: Username, prefix: SessionPrefix) -> Response:
    """End one login session of a user."""
    users.end_session(session, username, prefix)
    audit.record(session, who, "user.end_session", f"user:{username}", after={"ended": [prefix]})
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _me(who: ViewerDep) -> str:
    if not who.is_session or not who.owner:
        raise Forbidden("this is for a person logged in with a password, not an API key")
    return who.owner


@account_router.get("/sessions", response_model=list[SessionInfo])
def my_sessions(session: SessionDep, who: ViewerDep) -> list[SessionInfo]:
    """Your live login sessions, newest first; ``current`` marks this one."""
    return _sessions(session, _me(who), who.key_id)


@account_router.delete("/sessions/{prefix}", status_code=status.HTTP_204_NO_CONTENT)
def end_my_session(session: SessionDep, who: ViewerDep, prefix: SessionPrefix) -> Response:
    """End one of your sessions (say, on a shared terminal you left logged in)."""
    username = _me(who)
    users.end_session(session, username, prefix)
    audit.record(session, who, "account.end_session", f"user:{username}", after={"ended": [prefix]})
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@account_router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(session: SessionDep, who: ViewerDep, body: PasswordChange) -> Response:
    """Change your password with the current one (403 if wrong); your other sessions end, this one stays."""
    username = _me(who)
    users.change_password(session, username, body.current, body.new, keep=who.key_id)
    audit.record(session, who, "account.change_password", f"user:{username}")
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
