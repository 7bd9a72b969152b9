"""Dashboard users: username, password (salted scrypt from the standard library) and role.

A login with a username and password yields a *session key*: an ordinary API key (twin/auth.py) with the
user's role, named ``session:<username>``. Every API route then accepts it unchanged, and logging out revokes
it. A user keeps at most MAX_SESSIONS live session keys; an older one is revoked when a new login needs room.
A session key expires after TWIN_SESSION_IDLE_S without use or TWIN_SESSION_MAX_S after the login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.auth import PERSON_ROLES, SESSION_PREFIX, Role, create_key
from twin.errors import Conflict, InvalidRequest, Unauthenticated
from twin.tables import ApiKey, User

log = structlog.get_logger(__name__)

MAX_SESSIONS = 5
MIN_PASSWORD = 8
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# scrypt cost: 2^14 × 8 × 128 B = 16 MiB and ~50 ms per check; slow for guessing, fine for a login.
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
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


def create_user(session: Session, username: str, password: str, role: Role | str) -> User:
    """Add and commit a user; InvalidRequest for a bad name or short password, Conflict for a taken name."""
    role = Role(role)
    if role not in PERSON_ROLES:
        raise InvalidRequest(f"a person's role is one of {', '.join(r.value for r in PERSON_ROLES)}, not {role.value}")
    if not USERNAME_RE.match(username):
        raise InvalidRequest("a username is 1-64 letters, digits or . _ @ -, starting with a letter or digit")
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"a password needs at least {MIN_PASSWORD} characters")
    user = User(
        username=username, password_hash=hash_password(password), role=role.value, created_at=now_us()
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a user named {username!r} exists already") from None
    log.info("user created", username=username, role=role.value)
    return user


def login(session: Session, username: str, password: str) -> tuple[str, User]:
    """Check the password and return a new session key with the user's role; Unauthenticated otherwise."""
    global _DUMMY_HASH
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None:
        _DUMMY_HASH = _DUMMY_HASH or hash_password(secrets.token_hex(8))
        verify_password(password, _DUMMY_HASH)
        raise Unauthenticated("unknown user or wrong password")
    if not verify_password(password, user.password_hash) or user.disabled:
        raise Unauthenticated("unknown user or wrong password")
    _make_room(session, user.username)
    key = create_key(session, Role(user.role), SESSION_PREFIX + user.username)
    log.info("user logged in", username=user.username, role=user.role)
    return key, user


def _make_room(session: Session, username: str) -> None:
    """Revoke the oldest live session keys of ``username`` beyond MAX_SESSIONS - 1."""
    live = list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.name == SESSION_PREFIX + username, ApiKey.revoked.is_(False))
            .order_by(ApiKey.id.desc())
        )
    )
    for old in live[MAX_SESSIONS - 1 :]:
        old.revoked = True
    session.commit()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
