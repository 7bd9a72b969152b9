"""API keys and roles: who may call the platform's API, and what they may do.

A key looks like ``ftk_<12 hex>_<secret>``. The ``ftk_`` marks it as ours (secret scanners and people can
spot a leaked one), the 12 hex characters are its public prefix (stored in clear, shown in listings, used to
find and revoke it), and the secret is 256 random bits. Only the SHA-256 of the whole key is stored; the key
itself is shown once, when it is created.

Roles are ordered: viewer < technician < engineer < admin. A route asks for the lowest role it accepts.
The ``agent`` role, for edge gateways, sits below viewer: it passes no person's check, and only the routes
made for gateways (model downloads, the cascade, model failure reports) accept it, by name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.errors import BadCredentials, Conflict, Forbidden, NotFound, StoreError, Unauthenticated
from twin.scopes import existing, narrow
from twin.tables import ApiKey, User

log = structlog.get_logger(__name__)

KEY_MARK = "ftk_"
_PREFIX_HEX = 12  # 48 bits: collisions are caught by the unique constraint and retried
_SECRET_BYTES = 32
# Writing last_used_at on every request would turn each read into a write (and, on SQLite, take the one
# write lock); a key's last use to the minute is all anyone needs.
LAST_USED_RESOLUTION_US = 60_000_000
# A dashboard login is an API key named ``session:<username>``; unlike a standing key it expires.
SESSION_PREFIX = "session:"
_NO_HASH = "0" * 64  # compared against when no key has the prefix: no SHA-256 is all zeros in practice


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """How long a login session lives: ``idle_s`` since its last use, ``max_s`` since the login at most."""

    idle_s: float = 8 * 3600.0
    max_s: float = 7 * 86_400.0


class Role(StrEnum):
    """What a key may do; each role from viewer up includes the ones below it, none includes agent."""

    AGENT = "agent"  # an edge gateway: download models, ask the platform's teacher, report model failures
    VIEWER = "viewer"  # read the twin, alerts and advice
    TECHNICIAN = "technician"  # also acknowledge and work on alerts
    ENGINEER = "engineer"  # also change rules, knowledge base, models
    ADMIN = "admin"  # also manage keys and webhooks

    @property
    def rank(self) -> int:
        """Position in the order agent < viewer < technician < engineer < admin."""
        return _RANKS[self]

    def __lt__(self, other: str) -> bool:
        return self.rank < Role(other).rank

    def __le__(self, other: str) -> bool:
        return self.rank <= Role(other).rank

    def __gt__(self, other: str) -> bool:
        return self.rank > Role(other).rank

    def __ge__(self, other: str) -> bool:
        return self.rank >= Role(other).rank


_RANKS = {role: i for i, role in enumerate(Role)}
PERSON_ROLES = tuple(role for role in Role if role is not Role.AGENT)  # the roles a dashboard user may have


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a request, as established from its API key.

    Args:
        key_id: Database id of the key.
        prefix: The key's public prefix (``ftk_`` and 12 hex characters).
        name: What the key's creator called it.
        role: The key's role.
        owner: The user the key belongs to (a login session's user), if any.
        address: The client address of the request, for the audit trail.
        sites: The sites it may see and change (twin/scopes.py); None: every site.
    """

    key_id: int
    prefix: str
    name: str
    role: Role
    owner: str | None = None
    address: str = ""
    sites: frozenset[str] | None = None

    @property
    def is_session(self) -> bool:
        """Whether this is a dashboard login (revoked on logout) rather than a standing key."""
        return self.name.startswith(SESSION_PREFIX)

    @property
    def actor(self) -> str:
        """Who this is, as the audit trail names them: the person, else the key."""
        if self.owner:
            return self.owner if self.is_session else f"{self.owner} (key {self.prefix})"
        return f"key {self.prefix}" + (f" ({self.name})" if self.name else "")

    def require(self, role: Role, *, or_agent: bool = False) -> None:
        """Raise Forbidden unless this principal has at least ``role`` (or, with ``or_agent``, is an agent)."""
        if or_agent and self.role is Role.AGENT:
            return
        if self.role < role:
            raise Forbidden(
                f"this action needs the {role.value} role; the key {self.prefix} is {self.role.value}"
            )


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256.

    A fast hash is right here, unlike for passwords: the secret has 256 random bits, so no dictionary or
    brute-force attack is possible however fast the hash; a slow one (bcrypt, argon2) would only slow every
    request.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def _split(key: str) -> str | None:
    """The prefix of a well-formed key, or None."""
    if not key.startswith(KEY_MARK):
        return None
    head, sep, secret = key[len(KEY_MARK) :].partition("_")
    if not sep or len(head) != _PREFIX_HEX or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in head):
        return None
    return KEY_MARK + head


def normalise_prefix(text: str) -> str:
    """Accept a prefix as listed (``ftk_0123456789ab``), without its mark, or a whole key."""
    text = text.strip()
    whole = _split(text)
    if whole:
        return whole
    return text if text.startswith(KEY_MARK) else KEY_MARK + text


def create_key(
    session: Session,
    role: Role | str,
    name: str = "",
    *,
    owner: str | None = None,
    expires_at: int | None = None,
    sites: list[str] | None = None,
    commit: bool = True,
) -> str:
    """Create a key with ``role``; returns the key itself, which is never stored or shown again.

    With ``commit`` off the key is only flushed, so the caller commits it together with its audit record.
    """
    role = Role(role)
    for _attempt in range(3):
        prefix = KEY_MARK + secrets.token_hex(_PREFIX_HEX // 2)
        key = f"{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
        session.add(
            ApiKey(prefix=prefix, hash=hash_key(key), role=role.value, name=name, created_at=now_us(),
                   owner=owner, expires_at=expires_at, sites=existing(session, sites))
        )
        if not commit:
            session.flush()
            return key
        try:
            session.commit()
        except IntegrityError:  # prefix collision, about one in 10^14 per pair
            session.rollback()
            continue
        log.info("api_key_created", prefix=prefix, role=role.value, name=name)
        return key
    raise StoreError("could not find a free key prefix")  # pragma: no cover


def authenticate(session: Session, key: str | None, limits: SessionLimits | None = None) -> Principal:
    """The principal behind ``key``; Unauthenticated if it is missing, revoked, expired or belongs to a disabled
    user, BadCredentials (a guess, counted by twin/throttle.py) if it is malformed or unknown."""
    if not key:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    prefix = _split(key)
    found = (
        session.execute(
            select(ApiKey, User.disabled, User.role, User.sites)
            .outerjoin(User, User.username == ApiKey.owner)
            .where(ApiKey.prefix == prefix)
        ).one_or_none()
        if prefix
        else None
    )
    # The prefix is public, so finding the row by it leaks nothing; the hash is compared in constant time.
    # A malformed or unknown key is hashed all the same, so the answer takes as long as for a wrong secret.
    if not hmac.compare_digest(found[0].hash if found is not None else _NO_HASH, hash_key(key)) or found is None:
        raise BadCredentials("invalid API key")
    row, owner_disabled, owner_role, owner_sites = found
    if row.revoked:
        raise Unauthenticated(f"API key {row.prefix} has been revoked")
    if row.expires_at is not None and row.expires_at <= now_us():
        rotated = f"; it was replaced by {row.rotated_to}" if row.rotated_to else ""
        raise Unauthenticated(f"API key {row.prefix} has expired{rotated}")
    if owner_disabled:
        raise Unauthenticated(f"API key {row.prefix} belongs to the disabled user {row.owner}")
    if row.name.startswith(SESSION_PREFIX) and _expired(row, limits or SessionLimits()):
        raise Unauthenticated("your session has expired: log in again")
    role = Role(row.role)
    if owner_role is not None and Role(owner_role) < role:  # a key does no more than the person it belongs to
        role = Role(owner_role)
    principal = Principal(key_id=row.id, prefix=row.prefix, name=row.name, role=role, owner=row.owner,
                          sites=narrow(row.sites, owner_sites))  # nor does it see more sites
    _touch(session, row)
    return principal


def _expired(row: ApiKey, limits: SessionLimits) -> bool:
    """Whether a session key is past its idle or absolute lifetime (last use is known to the minute)."""
    now = now_us()
    last = max(row.created_at, row.last_used_at or 0)
    return now - last > limits.idle_s * 1e6 + LAST_USED_RESOLUTION_US or now - row.created_at > limits.max_s * 1e6


def _touch(session: Session, row: ApiKey) -> None:
    """Record the key's use, at most once per LAST_USED_RESOLUTION_US.

    Most requests write nothing: an UPDATE, even one that matches no row, would take SQLite's write lock and
    hold it for the rest of the request, making ingest wait for API readers.
    """
    now = now_us()
    if row.last_used_at is not None and row.last_used_at >= now - LAST_USED_RESOLUTION_US:
        return
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == row.id)
        # the condition again, so concurrent requests with the same key write once
        .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION_US))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def list_keys(session: Session) -> list[ApiKey]:
    """All keys, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def get_key(session: Session, prefix: str) -> ApiKey:
    """The key with ``prefix`` (or the key whose whole text is given); NotFound if there is none."""
    prefix = normalise_prefix(prefix)
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
    if row is None:
        raise NotFound(f"no API key with prefix {prefix}")
    return row


def revoke_key(session: Session, prefix: str, *, commit: bool = True) -> ApiKey:
    """Revoke the key with ``prefix`` (idempotent); NotFound if there is none."""
    row = get_key(session, prefix)
    if not row.revoked:
        row.revoked = True
        if commit:
            session.commit()
        log.info("api_key_revoked", prefix=row.prefix)
    return row


def rotate_key(session: Session, prefix: str, grace_s: float) -> tuple[str, ApiKey, ApiKey]:
    """Replace a key by a new one with the same role, name, owner and expiry; the old one keeps working for
    ``grace_s`` seconds (0: stops now). Returns the new key, its row and the old row; the caller commits."""
    old = get_key(session, prefix)
    if old.revoked:
        raise Conflict(f"API key {old.prefix} is revoked: create a new one instead")
    now = now_us()
    if old.expires_at is not None and old.expires_at <= now:
        raise Conflict(f"API key {old.prefix} has expired: create a new one instead")
    if old.name.startswith(SESSION_PREFIX):
        raise Conflict(f"{old.prefix} is a login session: log in again instead")
    key = create_key(session, Role(old.role), old.name, owner=old.owner, expires_at=old.expires_at,
                     sites=old.sites, commit=False)
    new = get_key(session, key)
    grace_end = now + int(grace_s * 1e6)
    old.expires_at = grace_end if old.expires_at is None else min(old.expires_at, grace_end)
    old.rotated_to = new.prefix
    log.info("api_key_rotated", old=old.prefix, new=new.prefix, grace_s=grace_s)
    return key, new, old


def key_state(row: ApiKey, now: int | None = None) -> Literal["active", "revoked", "expired"]:
    """``active``, ``revoked`` or ``expired``."""
    if row.revoked:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= (now or now_us()):
        return "expired"
    return "active"
