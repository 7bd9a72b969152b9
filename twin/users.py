"""People who log in: username, password (salted scrypt from the standard library), role and sites.

A login with a username and password yields a *session key*: an ordinary API key (twin/auth.py) with the
user's role, named ``session:<username>``. Every API route then accepts it unchanged, and logging out revokes
it. A user keeps at most MAX_SESSIONS live session keys; an older one is revoked when a new login needs room.
A session key expires after TWIN_SESSION_IDLE_S without use or TWIN_SESSION_MAX_S after the login.

Administration: roles change, users are disabled (their sessions end and their keys stop) or removed, and
passwords reset by an admin or changed by the user with the current one. Someone must always be able to
administer: the last enabled admin user (when no standing admin key remains) cannot be demoted, disabled or
removed (Conflict). Functions here flush and leave the commit to the caller, which adds the audit record.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections import Counter
from typing import Any

import structlog
from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin import scopes
from twin.auth import PERSON_ROLES, SESSION_PREFIX, Role, create_key
from twin.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated
from twin.tables import ApiKey, User

log = structlog.get_logger(__name__)

MAX_SESSIONS = 5
MIN_PASSWORD = 8
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# scrypt cost: 2^14 × 8 × 128 B = 16 MiB per check; slow for guessing, fine for a login (docs/security.md).
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_ADMIN_LOCK = 0x46545F41444D494E  # "FT_ADMIN": serialises the last-admin checks on PostgreSQL
_DUMMY_HASH: str | None = None  # checked against when the user is unknown, so timing does not tell


def hash_password(password: str) -> str:
    """The stored form of a password: ``scrypt$n$r$p$salt$hash`` with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(("scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the stored hash (constant-time compare); False for a malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def create_user(
    session: Session, username: str, password: str, role: Role | str, *, sites: list[str] | None = None,
    commit: bool = True,
) -> User:
    """Add a user (limited to ``sites``, if given); InvalidRequest for a bad name, short password or bad site id,
    Conflict for a taken name."""
    role = Role(role)
    if role not in PERSON_ROLES:
        raise InvalidRequest(f"a person's role is one of {', '.join(r.value for r in PERSON_ROLES)}, not {role.value}")
    if not USERNAME_RE.match(username):
        raise InvalidRequest("a username is 1-64 letters, digits or . _ @ -, starting with a letter or digit")
    _check_password(password)
    user = User(
        username=username, password_hash=hash_password(password), role=role.value, created_at=now_us(),
        sites=scopes.existing(session, sites),
    )
    session.add(user)
    try:
        session.commit() if commit else session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a user named {username!r} exists already") from None
    log.info("user_created", username=username, role=role.value)
    return user


def login(session: Session, username: str, password: str, *, commit: bool = True) -> tuple[str, User]:
    """Check the password and return a new session key with the user's role; Unauthenticated otherwise.

    With ``commit`` off the new session is only flushed, for the caller to commit with its audit record.
    """
    global _DUMMY_HASH
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None:
        _DUMMY_HASH = _DUMMY_HASH or hash_password(secrets.token_hex(8))
        verify_password(password, _DUMMY_HASH)
        raise Unauthenticated("unknown user or wrong password")
    if not verify_password(password, user.password_hash):
        raise Unauthenticated("unknown user or wrong password")
    if user.disabled:  # said only to someone who knows the password
        raise Unauthenticated(f"the account {user.username} is disabled: ask an administrator")
    _make_room(session, user.username)
    key = create_key(session, Role(user.role), SESSION_PREFIX + user.username, owner=user.username, commit=commit)
    log.info("user_logged_in", username=user.username, role=user.role)
    return key, user


def log_out(session: Session, key_id: int) -> bool:
    """Revoke the login session of key id ``key_id``; False when it is gone or was revoked already."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked:
        return False
    row.revoked = True
    return True


def _make_room(session: Session, username: str) -> None:
    """Revoke the oldest live session keys of ``username`` beyond MAX_SESSIONS - 1."""
    for old in live_sessions(session, username)[MAX_SESSIONS - 1 :]:
        old.revoked = True
    session.flush()


def live_sessions(session: Session, username: str) -> list[ApiKey]:
    """The user's unrevoked login sessions, newest first (some may have passed their lifetime unused)."""
    return list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.name == SESSION_PREFIX + username, ApiKey.revoked.is_(False))
            .order_by(ApiKey.id.desc())
        )
    )


def end_session(session: Session, username: str, prefix: str) -> None:
    """Revoke one login session of the user; NotFound if they have no live session of that prefix."""
    row = next((r for r in live_sessions(session, username) if r.prefix == prefix), None)
    if row is None:
        raise NotFound(f"{username} has no live session {prefix}")
    row.revoked = True


def credential_counts(session: Session, username: str) -> tuple[int, int]:
    """How many unrevoked login sessions and standing API keys the user owns."""
    names = session.scalars(select(ApiKey.name).where(ApiKey.owner == username, ApiKey.revoked.is_(False)))
    counts = Counter(name.startswith(SESSION_PREFIX) for name in names)
    return counts.get(True, 0), counts.get(False, 0)


def end_sessions(session: Session, username: str, *, keep: int | None = None) -> list[str]:
    """Revoke the user's login sessions (all but the key id ``keep``); returns their prefixes."""
    ended = []
    for row in live_sessions(session, username):
        if row.id != keep:
            row.revoked = True
            ended.append(row.prefix)
    return ended


def list_users(session: Session) -> list[User]:
    """Every user, oldest first."""
    return list(session.scalars(select(User).order_by(User.id)))


def get_user(session: Session, username: str) -> User:
    """The user named ``username``; NotFound if there is none."""
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def snapshot(user: User) -> dict[str, Any]:
    """The user as the audit trail records it (never the password hash)."""
    return {"username": user.username, "role": user.role, "disabled": user.disabled, "sites": user.sites}


def set_sites(session: Session, username: str, sites: list[str] | None) -> User:
    """Limit a user to ``sites`` (None: every site); their sessions and keys follow at once. Conflict if it would
    leave no admin for every site."""
    user = get_user(session, username)
    user.sites = scopes.existing(session, sites)
    if user.role == Role.ADMIN.value and user.sites is not None:
        keep_an_admin(session, f"{username} cannot be limited to some sites")
    return user


def set_role(session: Session, username: str, role: Role | str) -> User:
    """Change a user's role; their live sessions take it at once. Conflict if it would leave no admin."""
    role = Role(role)
    if role not in PERSON_ROLES:
        raise InvalidRequest(f"a person's role is one of {', '.join(r.value for r in PERSON_ROLES)}, not {role.value}")
    user = get_user(session, username)
    user.role = role.value
    for row in live_sessions(session, username):
        row.role = role.value
    keep_an_admin(session, f"{username} cannot stop being an admin")
    return user


def set_disabled(session: Session, username: str, disabled: bool) -> User:
    """Disable a user (their sessions end, their keys stop working) or enable them again."""
    user = get_user(session, username)
    user.disabled = disabled
    if disabled:
        end_sessions(session, username)
        keep_an_admin(session, f"{username} cannot be disabled")
    return user


def delete_user(session: Session, username: str) -> User:
    """Remove a user: their sessions and keys are revoked. Conflict if it would leave no admin."""
    user = get_user(session, username)
    for row in session.scalars(select(ApiKey).where(ApiKey.owner == username, ApiKey.revoked.is_(False))):
        row.revoked = True
    session.delete(user)
    keep_an_admin(session, f"{username} cannot be removed")
    return user


def reset_password(session: Session, username: str, password: str) -> User:
    """Set a user's password (an administrator's reset); every session of theirs ends."""
    _check_password(password)
    user = get_user(session, username)
    user.password_hash = hash_password(password)
    user.password_changed_at = now_us()
    end_sessions(session, username)
    return user


def change_password(session: Session, username: str, current: str, new: str, *, keep: int | None = None) -> User:
    """A user changes their own password, proving the current one; their other sessions end."""
    user = get_user(session, username)
    if not verify_password(current, user.password_hash):
        raise Forbidden("the current password is wrong")
    _check_password(new)
    if current == new:
        raise InvalidRequest("the new password is the same as the current one")
    user.password_hash = hash_password(new)
    user.password_changed_at = now_us()
    end_sessions(session, username, keep=keep)
    return user


def keep_an_admin(session: Session, refusal: str) -> None:
    """Conflict unless, with the pending changes, someone can still administer: an enabled admin user for every
    site or a live standing admin key for every site (one belonging to nobody, or to an enabled admin: a key does
    no more than its owner).

    On PostgreSQL the check holds a transaction lock first, so two admins demoting each other at once cannot both
    pass: the second counts after the first has committed. (SQLite serialises the writes themselves.)
    """
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADMIN_LOCK})
    # an admin limited to some sites cannot administer (twin/scopes.py): only unscoped ones count
    users = session.scalar(select(func.count()).select_from(User).where(User.role == Role.ADMIN.value,
                                                                         User.disabled.is_(False),
                                                                         User.sites.is_(None)))
    if users:
        return
    now = now_us()
    keys = session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .outerjoin(User, User.username == ApiKey.owner)
        .where(
            ApiKey.role == Role.ADMIN.value,
            ApiKey.revoked.is_(False),
            ~ApiKey.name.startswith(SESSION_PREFIX),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            ApiKey.sites.is_(None),
            or_(User.id.is_(None),
                (User.disabled.is_(False)) & (User.role == Role.ADMIN.value) & User.sites.is_(None)),
        )
    )
    if not keys:
        session.rollback()
        raise Conflict(f"{refusal}: it is the last active admin (make another admin first)")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"a password needs at least {MIN_PASSWORD} characters")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
