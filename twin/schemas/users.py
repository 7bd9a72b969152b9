"""API schemas of ``/api/v1/users`` (the routes: twin/api/routes/users.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from twin import scopes, users
from twin.auth import PERSON_ROLES, Role
from twin.fields import Key
from twin.schemas.base import Schema

PersonRole = Annotated[Role, Field(description=f"one of {', '.join(r.value for r in PERSON_ROLES)}")]


SiteScope = Annotated[list[Key] | None, Field(max_length=scopes.MAX_SITES,
                                               description="the site ids they may see and change; null: every site")]


class UserPublic(Schema):
    """A user as an admin sees them: never the password or its hash."""

    username: str
    role: Role
    disabled: bool
    created_at: datetime
    password_changed_at: datetime | None
    sites: list[str] | None = Field(description="the sites they may see and change; null: every site")
    sessions: int = Field(description="live login sessions")
    keys: int = Field(description="standing API keys belonging to the user, not revoked")


class UsersPublic(Schema):
    """A counted list of users."""

    items: list[UserPublic]
    count: int


class UserCreate(Schema):
    """A new user: a name, a first password (they can change it) and a role."""

    username: str = Field(min_length=1, max_length=64, pattern=users.USERNAME_RE.pattern)
    password: str = Field(min_length=users.MIN_PASSWORD, max_length=1024)
    role: PersonRole
    sites: SiteScope = None


class UserUpdate(Schema):
    """What an admin changes about a user; fields left out stay as they are."""

    role: PersonRole | None = None
    disabled: bool | None = None
    sites: SiteScope = Field(None, description="the site ids they may see and change; null: every site; left out: "
                                               "unchanged")


class PasswordReset(Schema):
    """An admin sets a user's password; the user's sessions end."""

    password: str = Field(min_length=users.MIN_PASSWORD, max_length=1024)


class PasswordChange(Schema):
    """A user changes their own password, proving the current one."""

    current: str = Field(min_length=1, max_length=1024)
    new: str = Field(min_length=users.MIN_PASSWORD, max_length=1024)


class SessionInfo(Schema):
    """One login session: never its token."""

    prefix: str
    created_at: datetime
    last_used_at: datetime | None = Field(description="to the minute")
    current: bool = Field(False, description="the session making this request")
